#!/usr/bin/env python3
"""PyTorch parity fixture for geodino's DINO core (issue 4).

Builds the tiny configuration (depth 2, width 64, 4 heads, patch 8, 4 bands,
out_dim 256, global crops 32 px, local crops 16 px, batch 4) from timm's
VisionTransformer plus a DINO head, loss and training step written after
the DINO reference code (facebookresearch/dino: vision_transformer.py,
main_dino.py, utils.py), runs 3 training steps and writes, in geodino's
tensor-message format (FORMAT.md), everything the C replay needs:

  init/student/<path>    initial weights (the teacher starts as a copy)
  crops/<v>              the views, [B, C, H, W], views 0 and 1 global
  loss, lr, weight_decay, momentum, teacher_temp   [steps] float64
  nclipped               [steps] int32: tensors scaled down by clip_gradients
  center                 the teacher center after the last step
  final/student/<path>, final/teacher/<path>
  illcond/<path>         flat indices of ill-conditioned elements (below)

Ill-conditioned elements.  Adam divides a gradient by its own running
magnitude, so an element whose gradient is zero in exact arithmetic (the
key bias of every attention layer: softmax ignores a per-row constant) or
merely tiny moves by about +-lr on float32 rounding noise alone, in any
float32 implementation, PyTorch's included, and the next steps carry that
difference into neighbouring weights.  Such elements have no float32
answer to compare against, so the fixture lists them, per tensor, by two
criteria, both measured on PyTorch itself:
  - gradient: at every step, the float32 gradient at the float64 run's
    weights misses the float64 gradient g by more than ILL_TOL (|g| + eps)
    (Adam's first update is g / (|g| + eps), eps = 1e-8);
  - spread: across ENSEMBLE float32 runs from starts perturbed by one ulp,
    the final value differs from float64 by more than SPREAD_TOL times the
    tensor's RMS.
The replay holds these (about 5% of the elements) to the bound 2 sum(lr)
and every other element to the 1e-4 relative norm.  The script prints how
far a plain float32 PyTorch run lands from float64 under both measures.

The steps cover both teacher-temperature regimes (warmup 0.04 -> 0.07 over
3 epochs, one iteration per epoch), a frozen last layer (epoch 0), gradient
clipping that hits some tensors and not others, and the EMA.  Drop path is
off: its random masks cannot match PyTorch's generator (the C side tests it
on its own).

The initial state is drawn in float32 and stored as float32; PyTorch then
runs in float64, so the fixture is the exact answer for that float32 start
and the C replay (float32) is measured against it.

Usage: make_fixture.py OUT.mpt   (needs torch, timm, msgpack, numpy)
"""
import math
import sys

import msgpack
import numpy as np
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

ILL_TOL = 1e-4     # gradient criterion, relative to |g| + eps
SPREAD_TOL = 1e-4  # ensemble criterion, relative to the tensor's RMS
ENSEMBLE = 4

CFG = dict(img_size=32, patch=8, in_chans=4, embed_dim=64, depth=2, num_heads=4,
           mlp_ratio=4, out_dim=256, hidden_dim=64, bottleneck_dim=32,
           norm_last_layer=True, batch=4, global_size=32, local_size=16,
           local_crops_number=2, steps=3,
           # training (main_dino.py names)
           lr=0.5, min_lr=1e-3, epochs=4, niter_per_epoch=1, warmup_epochs=0,
           weight_decay=0.04, weight_decay_end=0.4, momentum_teacher=0.9,
           warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=3,
           student_temp=0.1, center_momentum=0.9, clip_grad=0.3, freeze_last_layer=1,
           seed=0)


# ---- DINO's pieces, after the reference code -----------------------------

def interpolate_pos_encoding(vit, x, w, h):
    npatch = x.shape[1] - 1
    N = vit.pos_embed.shape[1] - 1
    if npatch == N and w == h:
        return vit.pos_embed
    class_pos_embed = vit.pos_embed[:, 0]
    patch_pos_embed = vit.pos_embed[:, 1:]
    dim = x.shape[-1]
    w0 = w // CFG["patch"]
    h0 = h // CFG["patch"]
    w0, h0 = w0 + 0.1, h0 + 0.1
    patch_pos_embed = F.interpolate(
        patch_pos_embed.reshape(1, int(math.sqrt(N)), int(math.sqrt(N)), dim).permute(0, 3, 1, 2),
        scale_factor=(w0 / math.sqrt(N), h0 / math.sqrt(N)),
        mode="bicubic",
    )
    assert int(w0) == patch_pos_embed.shape[-2] and int(h0) == patch_pos_embed.shape[-1]
    patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).view(1, -1, dim)
    return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1)


def vit_forward(vit, x):
    """DINO's VisionTransformer.forward on timm's modules: the final-norm CLS."""
    B, nc, w, h = x.shape
    t = vit.patch_embed.proj(x).flatten(2).transpose(1, 2)
    t = torch.cat((vit.cls_token.expand(B, -1, -1), t), dim=1)
    t = t + interpolate_pos_encoding(vit, t, w, h)
    for blk in vit.blocks:
        t = blk(t)
    t = vit.norm(t)
    return t[:, 0]


class DINOHead(nn.Module):
    def __init__(self, in_dim, out_dim, norm_last_layer=True, hidden_dim=2048, bottleneck_dim=256):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(),
                                 nn.Linear(hidden_dim, hidden_dim), nn.GELU(),
                                 nn.Linear(hidden_dim, bottleneck_dim))
        self.apply(self._init_weights)
        self.last_layer = nn.utils.weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        self.last_layer.weight_g.data.fill_(1)
        if norm_last_layer:
            self.last_layer.weight_g.requires_grad = False

    def _init_weights(self, m):
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)

    def forward(self, x):
        x = self.mlp(x)
        x = F.normalize(x, dim=-1, p=2)
        return self.last_layer(x)


class MultiCropWrapper(nn.Module):
    def __init__(self, backbone, head):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x):
        idx_crops = torch.cumsum(torch.unique_consecutive(
            torch.tensor([inp.shape[-1] for inp in x]), return_counts=True)[1], 0)
        start_idx, output = 0, torch.empty(0).to(x[0].device, x[0].dtype)
        for end_idx in idx_crops:
            _out = vit_forward(self.backbone, torch.cat(x[start_idx:end_idx]))
            output = torch.cat((output, _out))
            start_idx = end_idx
        return self.head(output)


class DINOLoss(nn.Module):
    def __init__(self, out_dim, ncrops, warmup_teacher_temp, teacher_temp,
                 warmup_teacher_temp_epochs, nepochs, student_temp=0.1, center_momentum=0.9):
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.ncrops = ncrops
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.teacher_temp_schedule = np.concatenate((
            np.linspace(warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs),
            np.ones(nepochs - warmup_teacher_temp_epochs) * teacher_temp))

    def forward(self, student_output, teacher_output, epoch):
        student_out = (student_output / self.student_temp).chunk(self.ncrops)
        temp = self.teacher_temp_schedule[epoch]
        teacher_out = F.softmax((teacher_output - self.center) / temp, dim=-1).detach().chunk(2)
        total_loss, n_loss_terms = 0, 0
        for iq, q in enumerate(teacher_out):
            for v in range(len(student_out)):
                if v == iq:
                    continue
                loss = torch.sum(-q * F.log_softmax(student_out[v], dim=-1), dim=-1)
                total_loss += loss.mean()
                n_loss_terms += 1
        total_loss /= n_loss_terms
        self.update_center(teacher_output)
        return total_loss

    @torch.no_grad()
    def update_center(self, teacher_output):
        batch_center = torch.sum(teacher_output, dim=0, keepdim=True) / len(teacher_output)
        self.center = self.center * self.center_momentum + batch_center * (1 - self.center_momentum)


def cosine_scheduler(base_value, final_value, epochs, niter_per_ep, warmup_epochs=0,
                     start_warmup_value=0):
    warmup_schedule = np.array([])
    warmup_iters = warmup_epochs * niter_per_ep
    if warmup_epochs > 0:
        warmup_schedule = np.linspace(start_warmup_value, base_value, warmup_iters)
    iters = np.arange(epochs * niter_per_ep - warmup_iters)
    schedule = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * iters / len(iters)))
    schedule = np.concatenate((warmup_schedule, schedule))
    assert len(schedule) == epochs * niter_per_ep
    return schedule


def get_params_groups(model):
    regularized, not_regularized = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.endswith(".bias") or len(param.shape) == 1:
            not_regularized.append(param)
        else:
            regularized.append(param)
    return [{"params": regularized}, {"params": not_regularized, "weight_decay": 0.}]


def clip_gradients(model, clip):
    clipped = 0
    for name, p in model.named_parameters():
        if p.grad is not None:
            param_norm = p.grad.data.norm(2)
            clip_coef = clip / (param_norm + 1e-6)
            if clip_coef < 1:
                p.grad.data.mul_(clip_coef)
                clipped += 1
    return clipped


def cancel_gradients_last_layer(epoch, model, freeze_last_layer):
    if epoch >= freeze_last_layer:
        return
    for n, p in model.named_parameters():
        if "last_layer" in n:
            p.grad = None


# ---- the fixture ------------------------------------------------------------

def build_model():
    c = CFG
    vit = timm.models.vision_transformer.VisionTransformer(
        img_size=c["img_size"], patch_size=c["patch"], in_chans=c["in_chans"], num_classes=0,
        embed_dim=c["embed_dim"], depth=c["depth"], num_heads=c["num_heads"],
        mlp_ratio=c["mlp_ratio"], qkv_bias=True, drop_path_rate=0.0)
    # DINO's initialisation where timm's differs (the cls token)
    nn.init.trunc_normal_(vit.pos_embed, std=.02)
    nn.init.trunc_normal_(vit.cls_token, std=.02)
    head = DINOHead(c["embed_dim"], c["out_dim"], c["norm_last_layer"], c["hidden_dim"],
                    c["bottleneck_dim"])
    return MultiCropWrapper(vit, head)


def our_name(torch_name):
    return torch_name.replace(".", "/")


def tensor(a, dtype):
    a = np.ascontiguousarray(a, dtype=dtype)
    return {"dtype": np.dtype(dtype).str if dtype != "|u1" else "|u1", "shape": list(a.shape),
            "data": a.tobytes()}


def state(model, prefix, out):
    for name, p in model.state_dict().items():
        out[prefix + our_name(name)] = tensor(p.detach().cpu().numpy(), "<f4")


def grads_float32(student, teacher, center, crops, epoch):
    """The float32 gradient at the float64 run's current state (same center,
    same temperature): which elements float32 can pin down."""
    c = CFG
    s, t = build_model(), build_model()
    s.load_state_dict({k: v.float() for k, v in student.state_dict().items()})
    t.load_state_dict({k: v.float() for k, v in teacher.state_dict().items()})
    lf = DINOLoss(c["out_dim"], len(crops), c["warmup_teacher_temp"], c["teacher_temp"],
                  c["warmup_teacher_temp_epochs"], c["epochs"], c["student_temp"],
                  c["center_momentum"])
    lf.center = center.float().clone()
    x = [v.float() for v in crops]
    lf(s(x), t(x[:2]), epoch).backward()
    return {n: p.grad for n, p in s.named_parameters() if p.grad is not None}


def run(dtype, tensors=None, perturb=None):
    """The 3 DINO steps in dtype from the float32 start; returns the
    record, the final student and teacher state dicts, the center and the
    ill-conditioned masks."""
    c = CFG
    torch.manual_seed(c["seed"])
    student = build_model().to(dtype)
    if perturb is not None:
        # one float32 ulp up or down on a random half of the elements
        pg = torch.Generator().manual_seed(1000 + perturb)
        with torch.no_grad():
            for p in student.parameters():
                r = torch.randint(-1, 2, p.shape, generator=pg).to(dtype)
                p.mul_(1 + r * 2.0 ** -23)
    teacher = build_model().to(dtype)
    teacher.load_state_dict(student.state_dict())
    for p in teacher.parameters():
        p.requires_grad = False
    if tensors is not None:
        state(student, "init/student/", tensors)

    g = torch.Generator().manual_seed(c["seed"] + 1)
    B, C = c["batch"], c["in_chans"]
    sizes = [c["global_size"]] * 2 + [c["local_size"]] * c["local_crops_number"]
    crops = [torch.randn(B, C, s, s, generator=g).to(dtype) for s in sizes]
    if tensors is not None:
        for v, x in enumerate(crops):
            tensors["crops/%d" % v] = tensor(x.numpy(), "<f4")
    illcond = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in student.named_parameters()}

    ncrops = len(crops)
    loss_fn = DINOLoss(c["out_dim"], ncrops, c["warmup_teacher_temp"], c["teacher_temp"],
                       c["warmup_teacher_temp_epochs"], c["epochs"], c["student_temp"],
                       c["center_momentum"]).to(dtype)
    optimizer = torch.optim.AdamW(get_params_groups(student))
    lr_schedule = cosine_scheduler(c["lr"] * B / 256., c["min_lr"], c["epochs"],
                                   c["niter_per_epoch"], warmup_epochs=c["warmup_epochs"])
    wd_schedule = cosine_scheduler(c["weight_decay"], c["weight_decay_end"], c["epochs"],
                                   c["niter_per_epoch"])
    momentum_schedule = cosine_scheduler(c["momentum_teacher"], 1, c["epochs"],
                                         c["niter_per_epoch"])
    rec = {k: [] for k in ("loss", "lr", "weight_decay", "momentum", "teacher_temp", "nclipped")}
    for it in range(c["steps"]):
        epoch = it // c["niter_per_epoch"]
        for i, pg in enumerate(optimizer.param_groups):
            pg["lr"] = lr_schedule[it]
            if i == 0:
                pg["weight_decay"] = wd_schedule[it]
        center_before = loss_fn.center.clone()
        teacher_output = teacher(crops[:2])
        student_output = student(crops)
        loss = loss_fn(student_output, teacher_output, epoch)
        assert math.isfinite(loss.item())
        optimizer.zero_grad()
        loss.backward()
        if dtype == torch.float64:
            g32 = grads_float32(student, teacher, center_before, crops, epoch)
            for n, p in student.named_parameters():
                if p.grad is not None:
                    # Adam's first update is g / (|g| + eps): an error
                    # in g matters against |g| + eps
                    err = (g32[n].double() - p.grad).abs()
                    illcond[n] |= err > ILL_TOL * (p.grad.abs() + 1e-8)
        clipped = clip_gradients(student, c["clip_grad"])
        cancel_gradients_last_layer(epoch, student, c["freeze_last_layer"])
        optimizer.step()
        with torch.no_grad():
            m = momentum_schedule[it]
            for param_q, param_k in zip(student.parameters(), teacher.parameters()):
                param_k.data.mul_(m).add_((1 - m) * param_q.detach().data)
        rec["loss"].append(loss.item())
        rec["lr"].append(lr_schedule[it])
        rec["weight_decay"].append(wd_schedule[it])
        rec["momentum"].append(m)
        rec["teacher_temp"].append(loss_fn.teacher_temp_schedule[epoch])
        rec["nclipped"].append(clipped)
        print("step %d: loss %.10f  lr %g  wd %g  m %g  temp %g  clipped %d of %d tensors" %
              (it, loss.item(), lr_schedule[it], wd_schedule[it], m,
               loss_fn.teacher_temp_schedule[epoch], clipped,
               sum(1 for p in student.parameters() if p.requires_grad)))
    # the fixture must exercise clipping both ways
    assert any(0 < n < sum(1 for p in student.parameters() if p.requires_grad)
               for n in rec["nclipped"]), rec["nclipped"]
    return rec, student.state_dict(), teacher.state_dict(), loss_fn.center, illcond


def compare(ref, other, illcond, label):
    """worst per-tensor relative L2 error, over all elements and over the
    well-conditioned ones"""
    worst_all, worst_ok = (0, ""), (0, "")
    for n, r in ref.items():
        d = (other[n].double() - r.double())
        nr = r.double().norm().item() or 1.0
        e_all = d.norm().item() / nr
        m = illcond.get(n)
        e_ok = (d[~m].norm().item() / nr) if m is not None else e_all
        worst_all = max(worst_all, (e_all, n))
        worst_ok = max(worst_ok, (e_ok, n))
    print("%s: worst relative L2 %.3g (%s); without ill-conditioned elements %.3g (%s)" %
          (label, worst_all[0], worst_all[1], worst_ok[0], worst_ok[1]))


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: make_fixture.py OUT.mpt")
    tensors = {}
    rec, student, teacher, center, illcond = run(torch.float64, tensors)
    print("float32 PyTorch against float64 PyTorch, same start:")
    rec32, student32, teacher32, _, _ = run(torch.float32)
    compare(student, student32, illcond, "  student")
    print("  losses: max relative %.3g" % max(abs(a - b) / abs(b) for a, b in
                                              zip(rec32["loss"], rec["loss"])))
    # chaotic sensitivity: elements whose final value float32 PyTorch does
    # not reproduce across 1-ulp perturbations of the start
    for k in range(ENSEMBLE):
        _, s32, t32, _, _ = run(torch.float32, perturb=k)
        for final, other in ((student, s32), (teacher, t32)):
            for n in illcond:
                ref = final[n].double()
                rms = ref.pow(2).mean().sqrt()
                illcond[n] |= (other[n].double() - ref).abs() > SPREAD_TOL * rms
    compare(student, student32, illcond, "  student (both criteria)")
    nill = 0
    for n, m in illcond.items():
        idx = torch.nonzero(m.reshape(-1)).reshape(-1).numpy().astype(np.int32)
        tensors["illcond/" + our_name(n)] = tensor(idx, "<i4")
        nill += len(idx)
    print("ill-conditioned elements: %d of %d" % (nill, sum(m.numel() for m in illcond.values())))
    for k in ("loss", "lr", "weight_decay", "momentum", "teacher_temp"):
        tensors[k] = tensor(np.array(rec[k]), "<f8")
    tensors["nclipped"] = tensor(np.array(rec["nclipped"]), "<i4")
    tensors["center"] = tensor(center.numpy().reshape(-1), "<f4")
    for name, p in student.items():
        tensors["final/student/" + our_name(name)] = tensor(p.numpy(), "<f4")
    for name, p in teacher.items():
        tensors["final/teacher/" + our_name(name)] = tensor(p.numpy(), "<f4")
    meta = {"tool": "tests/reference/make_fixture.py", "torch": torch.__version__,
            "timm": timm.__version__, "precision": "float64 from a float32 start",
            "config": CFG}
    msg = {"v": 1, "kind": "fixture", "meta": meta, "tensors": tensors}
    with open(sys.argv[1], "wb") as f:
        f.write(msgpack.packb(msg, use_bin_type=True))


if __name__ == "__main__":
    main()
