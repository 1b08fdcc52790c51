#!/usr/bin/env python3
"""The PyTorch peer of bench/gpu-step.c on the GPU: the same DINO step
(timm's VisionTransformer vit_small with DINO's multi-crop wrapper, head,
loss, per-tensor clipping, AdamW with DINO's parameter groups, teacher EMA;
the pieces of tests/reference/make_fixture.py) with bf16 autocast, eager or
torch.compile.  Views already on the GPU, as in gpu-step.c.

usage: gpu_step_torch.py step PATCH CHANS GLOBAL LOCAL NLOCAL BATCH STEPS eager|compile
       gpu_step_torch.py gemm [N]     the card's bf16 GEMM rate (N x N x N, default 8192)"""
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "reference"))
import make_fixture as F  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402

WARMUP = 3  # torch.compile compiles during the first steps


def gemm_rate(n):
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    reps = 20
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / reps
    print("bf16 GEMM %dx%dx%d: %.1f TFLOP/s (torch %s, %s)" %
          (n, n, n, 2 * n ** 3 / dt / 1e12, torch.__version__, torch.cuda.get_device_name()))


def step_rate(patch, chans, gres, lres, nlocal, B, steps, mode):
    F.CFG["patch"] = patch  # interpolate_pos_encoding reads it
    out_dim = 65536

    def model():
        vit = timm.models.vision_transformer.VisionTransformer(
            img_size=gres, patch_size=patch, in_chans=chans, num_classes=0, embed_dim=384,
            depth=12, num_heads=6, mlp_ratio=4, qkv_bias=True, drop_path_rate=0.1)
        return F.MultiCropWrapper(vit, F.DINOHead(384, out_dim, True, 2048, 256)).cuda()

    student, teacher = model(), model()
    teacher.load_state_dict(student.state_dict())
    for p in teacher.parameters():
        p.requires_grad = False
    if mode == "compile":
        student_f, teacher_f = torch.compile(student), torch.compile(teacher)
    else:
        student_f, teacher_f = student, teacher
    nv = 2 + nlocal
    crops = [torch.randn(B, chans, s, s, device="cuda") for s in [gres] * 2 + [lres] * nlocal]
    loss_fn = F.DINOLoss(out_dim, nv, 0.04, 0.04, 0, 100).cuda()
    opt = torch.optim.AdamW(F.get_params_groups(student))
    times = []
    for it in range(WARMUP + steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            t_out = teacher_f(crops[:2])
            s_out = student_f(crops)
            loss = loss_fn(s_out.float(), t_out.float(), 0)
        opt.zero_grad()
        loss.backward()
        F.clip_gradients(student, 3.0)
        F.cancel_gradients_last_layer(1, student, 1)
        opt.step()
        with torch.no_grad():
            torch._foreach_mul_(list(teacher.parameters()), 0.996)
            torch._foreach_add_(list(teacher.parameters()), list(student.parameters()),
                                alpha=0.004)
        torch.cuda.synchronize()
        if it >= WARMUP:
            times.append(time.perf_counter() - t0)
    times.sort()
    med = times[len(times) // 2]
    print("torch %s %s bf16-autocast vit_small/%d %d bands 2x%d+%dx%d B=%d: %.1f images/s "
          "(median step %.4f s, min %.4f s, %d steps, loss %.4f)" %
          (torch.__version__, mode, patch, chans, gres, nlocal, lres, B, B / med, med, times[0],
           steps, loss.item()))


def main():
    if len(sys.argv) >= 2 and sys.argv[1] == "gemm":
        gemm_rate(int(sys.argv[2]) if len(sys.argv) > 2 else 8192)
    elif len(sys.argv) == 10 and sys.argv[1] == "step" and sys.argv[9] in ("eager", "compile"):
        step_rate(*(int(a) for a in sys.argv[2:9]), sys.argv[9])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
