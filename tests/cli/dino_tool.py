"""Helpers for the dino-step and ema-update bats tests, independent of
geodino's C code (msgpack + numpy only).

  split IN N OUT1 OUT2          first N messages of IN to OUT1, the rest to OUT2
  count IN                      number of messages
  meta FILE KEY/PATH            a meta value as JSON
  tensor FILE NAME              a tensor as JSON (flattened list)
  diff A B [PREFIX]             names of tensors (with PREFIX) whose bytes differ, one a line
  init-check FILE               student == teacher, center and moments zero
  badbatch IN OUT what          first batch of IN altered: nan | huge | bsize
  collapse IN OUT               last layer of student and teacher made rank one (uniform output)
  graft DST SRC OUT PREFIX...   DST with the tensors of SRC whose names start with a PREFIX
  ckpt OUT JSON                 a checkpoint from {"teacher/x": [[...]], "student/x": ...} (<f4)
  ema T S M                     numpy float32 m t + (1 - m) s for each teacher/ tensor, as JSON
  send SOCK FILE...             sends the files' bytes to a Unix socket, prints replies as JSON
  control SOCK CMD              one control message, prints the reply as JSON
  raw SOCK HEXBYTES             sends raw bytes, prints the replies as JSON
  vit CKPT ROLE TILE...         CLS features of a float64 numpy ViT (timm's, DINO's eval:
                                the final norm's CLS token) of GDAL-read tiles, normalized
                                and centre-cropped as dino-step embed documents; JSON
  vit-avgpool CKPT ROLE TILE... the same ViT, DINO eval_linear's avgpool features: the CLS
                                token and the mean of the normed patch tokens, interleaved
"""
import math
import json
import socket
import sys

import msgpack
import numpy as np


def load(path):
    return list(msgpack.Unpacker(open(path, "rb"), raw=False, max_buffer_size=2**31))


def one(path):
    msgs = load(path)
    assert len(msgs) == 1, path
    return msgs[0]


def arr(t):
    dt = "<u2" if t["dtype"] == "bf16" else t["dtype"]
    return np.frombuffer(t["data"], dtype=dt).reshape(t["shape"])


def put(a):
    a = np.ascontiguousarray(a, dtype="<f4")
    return {"dtype": "<f4", "shape": list(a.shape), "data": a.tobytes()}


def replies(sock):
    up = msgpack.Unpacker(raw=False)
    out = []
    while True:
        try:
            data = sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            break
        if not data:
            break
        up.feed(data)
        for m in up:
            out.append(m)
    for m in out:
        print(json.dumps({"kind": m["kind"], **m["meta"]}, sort_keys=True))


def connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    return s


def sendall(s, data):
    try:
        s.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass
    try:
        s.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def layernorm(x, w, b, eps):
    m = x.mean(-1, keepdims=True)
    v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / np.sqrt(v + eps) * w + b


def vit_features(ck, role, tiles, avgpool=False):
    from osgeo import gdal
    meta, t = ck["meta"], ck["tensors"]
    cfg, st = meta["config"], meta["stats"]
    P = lambda k: arr(t[role + "/" + k]).astype(np.float64)
    p, D, H = cfg["patch_size"], cfg["embed_dim"], cfg["num_heads"]
    erf = np.vectorize(math.erf)
    out = []
    for path in tiles:
        x = gdal.Open(path).ReadAsArray().astype(np.float64) / st.get("scale", 1.0)
        x = (x - np.array(st["mean"])[:, None, None]) / np.array(st["std"])[:, None, None]
        C, h, w = x.shape
        s = min(h, w) // p * p
        y0, x0 = (h - s) // 2, (w - s) // 2
        x = x[:, y0:y0 + s, x0:x0 + s]
        g = s // p
        patches = x.reshape(C, g, p, g, p).transpose(1, 3, 0, 2, 4).reshape(g * g, C * p * p)
        W = P("backbone/patch_embed/proj/weight").reshape(D, -1)
        z = patches @ W.T + P("backbone/patch_embed/proj/bias")
        z = np.concatenate([P("backbone/cls_token").reshape(1, D), z]) + P("backbone/pos_embed")[0]
        T, hd = z.shape[0], D // H
        for i in range(cfg["depth"]):
            B = lambda k: P("backbone/blocks/%d/%s" % (i, k))
            y = layernorm(z, B("norm1/weight"), B("norm1/bias"), cfg["ln_eps"])
            qkv = (y @ B("attn/qkv/weight").T + B("attn/qkv/bias")).reshape(T, 3, H, hd)
            q, k, v = (qkv[:, j].transpose(1, 0, 2) for j in range(3))
            a = q @ k.transpose(0, 2, 1) * hd ** -0.5
            a = np.exp(a - a.max(-1, keepdims=True))
            a /= a.sum(-1, keepdims=True)
            o = (a @ v).transpose(1, 0, 2).reshape(T, D)
            z = z + o @ B("attn/proj/weight").T + B("attn/proj/bias")
            y = layernorm(z, B("norm2/weight"), B("norm2/bias"), cfg["ln_eps"])
            y = y @ B("mlp/fc1/weight").T + B("mlp/fc1/bias")
            y = y * 0.5 * (1 + erf(y / math.sqrt(2)))
            z = z + y @ B("mlp/fc2/weight").T + B("mlp/fc2/bias")
        z = layernorm(z, P("backbone/norm/weight"), P("backbone/norm/bias"), cfg["ln_eps"])
        if avgpool:
            # DINO: cat((cls.unsqueeze(-1), mean.unsqueeze(-1)), -1).reshape(B, -1)
            out.append(np.stack([z[0], z[1:].mean(0)], -1).reshape(-1).tolist())
        else:
            out.append(z[0].tolist())
    return out


def main():
    cmd, a = sys.argv[1], sys.argv[2:]
    if cmd == "split":
        msgs = load(a[0])
        n = int(a[1])
        open(a[2], "wb").write(b"".join(msgpack.packb(m) for m in msgs[:n]))
        open(a[3], "wb").write(b"".join(msgpack.packb(m) for m in msgs[n:]))
    elif cmd == "count":
        print(len(load(a[0])))
    elif cmd == "meta":
        v = one(a[0])["meta"]
        for k in a[1].split("/"):
            v = v[k]
        print(json.dumps(v))
    elif cmd == "tensor":
        print(json.dumps(arr(one(a[0])["tensors"][a[1]]).astype(float).ravel().tolist()))
    elif cmd == "diff":
        x, y = one(a[0])["tensors"], one(a[1])["tensors"]
        pre = a[2] if len(a) > 2 else ""
        names = sorted(k for k in set(x) | set(y) if k.startswith(pre))
        for k in names:
            if k not in x or k not in y or x[k]["data"] != y[k]["data"] or x[k]["shape"] != y[k]["shape"]:
                print(k)
    elif cmd == "init-check":
        t = one(a[0])["tensors"]
        paths = [k[len("student/"):] for k in t if k.startswith("student/")]
        assert paths and all(t["student/" + p]["data"] == t["teacher/" + p]["data"] for p in paths)
        assert all(not arr(t[r + p]).any() for r in ("adam_m/", "adam_v/") for p in paths)
        assert not arr(t["center"]).any()
        assert all(arr(t["student/" + p]).any() for p in paths if p.endswith("weight"))
        print(len(paths))
    elif cmd == "badbatch":
        m = load(a[0])[0]
        g = arr(m["tensors"]["global"]).astype("<f4").copy()
        if a[2] == "nan":
            g[0, 0, 0, 0, 0] = np.nan
        elif a[2] == "huge":
            g[:] = 3e38
            lo = arr(m["tensors"]["local"]).astype("<f4").copy()
            lo[:] = 3e38
            m["tensors"]["local"] = put(lo)
        elif a[2] == "bsize":
            g = np.concatenate([g, g[:1]])
            lo = arr(m["tensors"]["local"]).astype("<f4")
            m["tensors"]["local"] = put(np.concatenate([lo, lo[:1]]))
        m["tensors"]["global"] = put(g)
        open(a[1], "wb").write(msgpack.packb(m))
    elif cmd == "collapse":
        m = one(a[0])
        for r in ("student/", "teacher/"):
            k = r + "head/last_layer/weight_v"
            v = arr(m["tensors"][k])
            m["tensors"][k] = put(np.ones_like(v) * v[0])
        open(a[1], "wb").write(msgpack.packb(m))
    elif cmd == "graft":
        m, src = one(a[0]), one(a[1])["tensors"]
        for k in src:
            if any(k.startswith(p) for p in a[3:]):
                m["tensors"][k] = src[k]
        open(a[2], "wb").write(msgpack.packb(m))
    elif cmd == "ckpt":
        spec = json.loads(a[1])
        m = {"v": 1, "kind": "checkpoint", "meta": {"step": 0},
             "tensors": {k: put(np.array(v, dtype="<f4")) for k, v in spec.items()}}
        open(a[0], "wb").write(msgpack.packb(m))
    elif cmd == "ema":
        t, s = one(a[0])["tensors"], one(a[1])["tensors"]
        m = np.float32(float(a[2]))
        out = {}
        for k in sorted(t):
            if k.startswith("teacher/"):
                x = arr(t[k]).astype("<f4")
                y = arr(s["student/" + k[len("teacher/"):]]).astype("<f4")
                out[k] = (x * m + (np.float32(1) - m) * y).ravel().tolist()
        print(json.dumps(out, sort_keys=True))
    elif cmd == "send":
        s = connect(a[0])
        sendall(s, b"".join(open(p, "rb").read() for p in a[1:]))
        replies(s)
    elif cmd == "control":
        s = connect(a[0])
        sendall(s, msgpack.packb({"v": 1, "kind": "control", "meta": {"command": a[1]},
                                  "tensors": {}}))
        replies(s)
    elif cmd == "raw":
        s = connect(a[0])
        sendall(s, bytes.fromhex(a[1]))
        replies(s)
    elif cmd == "vit":
        print(json.dumps(vit_features(one(a[0]), a[1], a[2:])))
    elif cmd == "vit-avgpool":
        print(json.dumps(vit_features(one(a[0]), a[1], a[2:], avgpool=True)))
    else:
        sys.exit("unknown command " + cmd)


if __name__ == "__main__":
    main()
