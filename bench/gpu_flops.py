#!/usr/bin/env python3
"""FLOPs per image of one DINO training step (a multiply-add is 2 FLOPs),
counted from the shapes of geodino's ViT + DINO head, for the two recipes
of issue 6.  Prints a Markdown table; bench/results-cuda.md explains the
formula.  No dependencies.

usage: gpu_flops.py"""

RECIPES = [
    # name, patch, bands, global size, local size, local crops
    ("DINO ImageNet: vit_small/16, 2x224 + 10x96, 3 bands", 16, 3, 224, 96, 10),
    ("Sentinel-2: vit_small/8, 2x120 + 6x56, 10 bands", 8, 10, 120, 56, 6),
]
D, DEPTH, MLP = 384, 12, 4          # vit_small
HIDDEN, BOTTLENECK, OUT = 2048, 256, 65536


def backbone(T, patch, bands):
    """Forward FLOPs of the backbone on one view of T tokens (T - 1 patches)."""
    per_block = T * (2 * D * 3 * D        # qkv
                     + 2 * T * D          # q k^T over all heads
                     + 2 * T * D          # att v
                     + 2 * D * D          # proj
                     + 2 * 2 * D * MLP * D)  # fc1 + fc2
    patch_embed = (T - 1) * 2 * bands * patch * patch * D
    return DEPTH * per_block + patch_embed


def head():
    """Forward FLOPs of DINO's head on one CLS token."""
    return 2 * (D * HIDDEN + HIDDEN * HIDDEN + HIDDEN * BOTTLENECK + BOTTLENECK * OUT)


def view(size, patch, bands):
    T = (size // patch) ** 2 + 1
    return T, backbone(T, patch, bands) + head()


def main():
    print("| recipe | tokens global / local | forward GFLOP global / local view "
          "| student fwd+bwd (3x) | teacher fwd (2 global) | step GFLOP / image |")
    print("|---|---|---|---|---|---|")
    for name, patch, bands, g, l, nl in RECIPES:
        tg, fg = view(g, patch, bands)
        tl, fl = view(l, patch, bands)
        student = 3 * (2 * fg + nl * fl)
        teacher = 2 * fg
        print("| %s | %d / %d | %.3f / %.3f | %.2f | %.2f | **%.2f** |" %
              (name, tg, tl, fg / 1e9, fl / 1e9, student / 1e9, teacher / 1e9,
               (student + teacher) / 1e9))


if __name__ == "__main__":
    main()
