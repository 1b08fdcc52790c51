#!/usr/bin/env python3
"""The PyTorch peer of bench/cpu-step.c: the same DINO step (timm's
vit_tiny/16 with DINO's multi-crop wrapper, head, loss, clipping, AdamW,
EMA, from tests/reference/make_fixture.py) on the CPU, float32.

usage: cpu-step.py STEPS IN_CHANS OUT_DIM THREADS"""
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "reference"))
import make_fixture as F  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402


def main():
    steps, chans, out_dim, threads = (int(a) for a in sys.argv[1:5])
    torch.set_num_threads(threads)
    F.CFG["patch"] = 16
    def model():
        vit = timm.models.vision_transformer.VisionTransformer(
            img_size=224, patch_size=16, in_chans=chans, num_classes=0, embed_dim=192, depth=12,
            num_heads=3, mlp_ratio=4, qkv_bias=True, drop_path_rate=0.1)
        return F.MultiCropWrapper(vit, F.DINOHead(192, out_dim, True, 2048, 256))
    student, teacher = model(), model()
    teacher.load_state_dict(student.state_dict())
    for p in teacher.parameters():
        p.requires_grad = False
    B = 8
    crops = [torch.randn(B, chans, s, s) for s in (96, 96, 48, 48, 48, 48)]
    loss_fn = F.DINOLoss(out_dim, 6, 0.04, 0.04, 0, 100)
    opt = torch.optim.AdamW(F.get_params_groups(student))
    times = []
    for it in range(steps + 1):
        t0 = time.perf_counter()
        t_out = teacher(crops[:2])
        s_out = student(crops)
        loss = loss_fn(s_out, t_out, 0)
        opt.zero_grad()
        loss.backward()
        F.clip_gradients(student, 3.0)
        F.cancel_gradients_last_layer(0, student, 1)
        opt.step()
        with torch.no_grad():
            for q, k in zip(student.parameters(), teacher.parameters()):
                k.data.mul_(0.996).add_(0.004 * q.detach().data)
        if it:  # the first step warms up, as in cpu-step.c
            times.append(time.perf_counter() - t0)
    times.sort()
    print("torch %s, %d threads: step median %.3f s, min %.3f s, over %d steps (loss %.4f)" %
          (torch.__version__, torch.get_num_threads(), times[len(times) // 2], times[0], steps,
           loss.item()))


if __name__ == "__main__":
    main()
