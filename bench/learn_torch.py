#!/work/venv-torch/bin/python
"""A PyTorch DINO run next to dino-step train, on the same batches.

    learn_torch.py INIT.mpt STREAM.mpt STEPS OUT.mpt LOG.jsonl

INIT.mpt is a checkpoint of `dino-step init` (the model and every schedule
are read from its meta "config", the weights from its student/teacher
tensors); STREAM.mpt is a file of multicrop `batch` messages, the ones
dino-step train reads.  The script trains STEPS steps with the DINO
reference recipe (main_dino.py: DINOLoss with centering and sharpening,
AdamW with DINO's two parameter groups, cosine lr / weight decay / teacher
momentum schedules, teacher temperature warmup, gradient clipping, last
layer frozen for freeze_last_layer epochs, teacher EMA), on timm's
VisionTransformer with DINO's forward (position embedding interpolation),
in float32.  It writes one JSON line per step (loss, lr, momentum, teacher
entropy of the rows and of the batch mean, as dino-step's log names them)
and OUT.mpt: INIT.mpt with the student and teacher replaced by PyTorch's, so
that `dino-step embed` and `knn-eval` evaluate both runs the same way.

Used by bench/learn-parity.sh (results in bench/results-learn.md).  Needs
torch, timm, numpy, msgpack (/work/venv-torch/bin/python).
"""
import json
import math
import sys

import msgpack
import numpy as np
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

MAX_MSG = 2 ** 31


def read_messages(path):
    with open(path, "rb") as f:
        yield from msgpack.Unpacker(f, raw=False, max_buffer_size=MAX_MSG)


def to_np(t):
    return np.frombuffer(t["data"], dtype=t["dtype"]).reshape(t["shape"])


def interpolate_pos_encoding(vit, patch, x, w, h):
    """DINO's vision_transformer.py: bicubic resize of the patch grid."""
    npatch = x.shape[1] - 1
    N = vit.pos_embed.shape[1] - 1
    if npatch == N and w == h:
        return vit.pos_embed
    cls_pos, patch_pos = vit.pos_embed[:, 0], vit.pos_embed[:, 1:]
    dim, n = x.shape[-1], int(math.sqrt(N))
    w0, h0 = w // patch + 0.1, h // patch + 0.1
    patch_pos = F.interpolate(patch_pos.reshape(1, n, n, dim).permute(0, 3, 1, 2),
                              scale_factor=(w0 / n, h0 / n), mode="bicubic")
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat((cls_pos.unsqueeze(0), patch_pos), dim=1)


class Net(nn.Module):
    """backbone (timm ViT, DINO's forward: final-norm CLS) + DINO head."""

    def __init__(self, c):
        super().__init__()
        self.patch = c["patch_size"]
        self.backbone = timm.models.vision_transformer.VisionTransformer(
            img_size=c["img_size"], patch_size=c["patch_size"], in_chans=c["in_chans"],
            num_classes=0, embed_dim=c["embed_dim"], depth=c["depth"], num_heads=c["num_heads"],
            mlp_ratio=c["mlp_ratio"], qkv_bias=True, drop_path_rate=0.0)
        hd, bd = c["hidden_dim"], c["bottleneck_dim"]
        self.head = nn.Module()
        self.head.mlp = nn.Sequential(nn.Linear(c["embed_dim"], hd), nn.GELU(), nn.Linear(hd, hd),
                                      nn.GELU(), nn.Linear(hd, bd))
        self.head.last_layer = nn.utils.weight_norm(nn.Linear(bd, c["out_dim"], bias=False))
        if c["norm_last_layer"]:
            self.head.last_layer.weight_g.requires_grad = False

    def features(self, x):
        vit = self.backbone
        B, _, w, h = x.shape
        t = vit.patch_embed.proj(x).flatten(2).transpose(1, 2)
        t = torch.cat((vit.cls_token.expand(B, -1, -1), t), dim=1)
        t = t + interpolate_pos_encoding(vit, self.patch, t, w, h)
        for blk in vit.blocks:
            t = blk(t)
        return vit.norm(t)[:, 0]

    def forward(self, views):
        """views grouped by resolution, as DINO's MultiCropWrapper."""
        out, i = [], 0
        while i < len(views):
            j = i
            while j < len(views) and views[j].shape[-1] == views[i].shape[-1]:
                j += 1
            out.append(self.features(torch.cat(views[i:j])))
            i = j
        x = F.normalize(self.head.mlp(torch.cat(out)), dim=-1, p=2)
        return self.head.last_layer(x)


def load_state(net, tensors, prefix):
    sd = net.state_dict()
    for name in sd:
        key = prefix + name.replace(".", "/")
        sd[name] = torch.from_numpy(to_np(tensors[key]).astype(np.float32).copy()).reshape(sd[name].shape)
    net.load_state_dict(sd)


def store_state(net, tensors, prefix):
    for name, p in net.state_dict().items():
        a = np.ascontiguousarray(p.detach().numpy(), dtype="<f4")
        tensors[prefix + name.replace(".", "/")] = {"dtype": "<f4", "shape": list(a.shape),
                                                     "data": a.tobytes()}


def cosine_scheduler(base, final, epochs, niter, warmup_epochs=0, start_warmup=0.0):
    """main_dino.py's utils.cosine_scheduler."""
    warm = np.linspace(start_warmup, base, warmup_epochs * niter) if warmup_epochs > 0 else np.array([])
    iters = np.arange(epochs * niter - warmup_epochs * niter)
    sched = final + 0.5 * (base - final) * (1 + np.cos(np.pi * iters / len(iters)))
    return np.concatenate((warm, sched))


def param_groups(net):
    reg, noreg = [], []
    for name, p in net.named_parameters():
        if not p.requires_grad:
            continue
        (noreg if name.endswith(".bias") or p.ndim == 1 else reg).append(p)
    return [{"params": reg}, {"params": noreg, "weight_decay": 0.0}]


def clip_gradients(net, clip):
    for p in net.parameters():
        if p.grad is not None:
            coef = clip / (p.grad.norm(2) + 1e-6)
            if coef < 1:
                p.grad.mul_(coef)


def entropies(t_out, center, temp):
    """mean row entropy of the teacher's targets and entropy of their batch mean"""
    q = F.softmax((t_out - center) / temp, dim=-1)
    h = -(q * torch.log(q.clamp_min(1e-30))).sum(-1).mean().item()
    qm = q.mean(0)
    hm = -(qm * torch.log(qm.clamp_min(1e-30))).sum().item()
    return h, hm


def main():
    if len(sys.argv) != 6:
        sys.exit("usage: learn_torch.py INIT.mpt STREAM.mpt STEPS OUT.mpt LOG.jsonl")
    init_path, stream_path, steps, out_path, log_path = sys.argv[1:]
    steps = int(steps)
    torch.set_num_threads(1)
    ck = next(read_messages(init_path))
    c = ck["meta"]["config"]
    student, teacher = Net(c), Net(c)
    load_state(student, ck["tensors"], "student/")
    load_state(teacher, ck["tensors"], "teacher/")
    for p in teacher.parameters():
        p.requires_grad = False
    center = torch.from_numpy(to_np(ck["tensors"]["center"]).astype(np.float32).copy()).reshape(1, -1)

    E, niter = c["epochs"], c["iters_per_epoch"]
    bs_total = c["batch_size_per_gpu"] * c["world_size"]
    lr_s = cosine_scheduler(c["lr"] * bs_total / 256.0, c["min_lr"], E, niter, c["warmup_epochs"])
    wd_s = cosine_scheduler(c["weight_decay"], c["weight_decay_end"], E, niter)
    m_s = cosine_scheduler(c["momentum_teacher"], 1.0, E, niter)
    wte = c["warmup_teacher_temp_epochs"]
    temp_s = np.concatenate((np.linspace(c["warmup_teacher_temp"], c["teacher_temp"], wte),
                             np.ones(E - wte) * c["teacher_temp"]))
    opt = torch.optim.AdamW(param_groups(student), betas=(c["beta1"], c["beta2"]), eps=c["adam_eps"])
    st, cm = c["student_temp"], c["center_momentum"]

    log = open(log_path, "w")
    it = 0
    for msg in read_messages(stream_path):
        if it >= steps:
            break
        if msg.get("kind") != "batch":
            continue
        g = torch.from_numpy(to_np(msg["tensors"]["global"]).astype(np.float32))
        lo = torch.from_numpy(to_np(msg["tensors"]["local"]).astype(np.float32))
        views = [g[:, v] for v in range(g.shape[1])] + [lo[:, v] for v in range(lo.shape[1])]
        epoch = it // niter
        for i, pg in enumerate(opt.param_groups):
            pg["lr"] = lr_s[it]
            if i == 0:
                pg["weight_decay"] = wd_s[it]
        with torch.no_grad():
            t_out = teacher(views[:2])
        s_out = student(views)
        temp = temp_s[epoch]
        # DINOLoss: sharpened, centered teacher targets against every other view
        q = F.softmax((t_out - center) / temp, dim=-1).chunk(2)
        s_chunks = (s_out / st).chunk(len(views))
        loss, n = 0.0, 0
        for iq, qi in enumerate(q):
            for v, sv in enumerate(s_chunks):
                if v != iq:
                    loss = loss + torch.sum(-qi * F.log_softmax(sv, dim=-1), dim=-1).mean()
                    n += 1
        loss = loss / n
        h, hm = entropies(t_out, center, temp)
        center = center * cm + t_out.mean(0, keepdim=True) * (1 - cm)
        opt.zero_grad()
        loss.backward()
        if c["clip_grad"] > 0:
            clip_gradients(student, c["clip_grad"])
        if epoch < c["freeze_last_layer"]:
            for name, p in student.named_parameters():
                if "last_layer" in name:
                    p.grad = None
        opt.step()
        with torch.no_grad():
            m = m_s[it]
            for ps, pt in zip(student.parameters(), teacher.parameters()):
                pt.mul_(m).add_((1 - m) * ps.detach())
        it += 1
        log.write(json.dumps({"step": it, "epoch": epoch, "loss": loss.item(), "lr": lr_s[it - 1],
                              "momentum": m, "teacher_temp": temp, "teacher_entropy": h,
                              "teacher_mean_entropy": hm}) + "\n")
        log.flush()
    if it < steps:
        sys.exit(f"learn_torch: {stream_path}: {it} batches, {steps} steps asked")
    store_state(student, ck["tensors"], "student/")
    store_state(teacher, ck["tensors"], "teacher/")
    a = center.numpy().reshape(-1).astype("<f4")
    ck["tensors"]["center"] = {"dtype": "<f4", "shape": [a.size], "data": a.tobytes()}
    ck["meta"]["step"] = it
    ck["meta"]["tool"] = "bench/learn_torch.py"
    with open(out_path, "wb") as f:
        f.write(msgpack.packb(ck, use_bin_type=True))


if __name__ == "__main__":
    main()
