"""Helpers for the multicrop bats tests, independent of geodino's C code.

  stats RAW OUT.mpt [SCALE]        per-band population mean/std/min/max of an
                                  ENVI raster (gdal_translate -of ENVI), as a
                                  `stats` message (FORMAT.md), computed by numpy
  check OUT.mpt G L C GS LS [B]   shapes and dtypes of every `batch` message
  normcheck OUT.mpt               per-band mean and std of the globals
  dump OUT.mpt                    one line per message: kind epoch index files
  jitter STATS.mpt PLAIN.mpt JIT.mpt   per view, the spread across bands of the
                                  brightness factor (contrast 0) or contrast
                                  factor (brightness 0) that turned the plain
                                  views into the jittered ones (in reflectance:
                                  the views un-normalized with the stats)
"""
import os
import sys

import msgpack
import numpy as np


def read_envi(raw):
    hdr = os.path.splitext(raw)[0] + ".hdr"
    meta = {}
    for line in open(hdr):
        if "=" in line:
            k, v = line.split("=", 1)
            meta[k.strip().lower()] = v.strip()
    w, h, b = int(meta["samples"]), int(meta["lines"]), int(meta["bands"])
    types = {"1": np.uint8, "2": np.int16, "12": np.uint16, "4": np.float32}
    x = np.fromfile(raw, dtype=types[meta["data type"]])
    order = meta.get("interleave", "bsq").lower()
    if order == "bip":
        x = x.reshape(h, w, b).transpose(2, 0, 1)
    elif order == "bil":
        x = x.reshape(h, b, w).transpose(1, 0, 2)
    else:
        x = x.reshape(b, h, w)
    return x.astype(np.float64)


def tensor(a):
    a = np.ascontiguousarray(a, dtype="<f8")
    return {"dtype": "<f8", "shape": list(a.shape), "data": a.tobytes()}


def stats(raw, out, scale=1.0):
    x = read_envi(raw) / scale
    C = x.shape[0]
    flat = x.reshape(C, -1)
    msg = {"v": 1, "kind": "stats",
           "meta": {"bands": ["B%d" % (k + 1) for k in range(C)], "scale": scale, "nodata": None},
           "tensors": {"mean": tensor(flat.mean(1)), "std": tensor(flat.std(1)),
                       "min": tensor(flat.min(1)), "max": tensor(flat.max(1)),
                       "count": tensor(np.full(C, flat.shape[1]))}}
    with open(out, "wb") as f:
        f.write(msgpack.packb(msg, use_bin_type=True))


def arrays(path):
    with open(path, "rb") as f:
        for msg in msgpack.Unpacker(f, raw=False, max_buffer_size=2**31):
            out = {}
            for name, t in msg["tensors"].items():
                if t["dtype"] == "bf16":
                    u = np.frombuffer(t["data"], dtype="<u2").astype(np.uint32) << 16
                    a = u.view(np.float32)
                else:
                    a = np.frombuffer(t["data"], dtype=t["dtype"])
                out[name] = (t["dtype"], a.reshape(t["shape"]).astype(np.float32))
            yield msg, out


def check(path, G, L, C, GS, LS, B=None):
    n = 0
    for msg, t in arrays(path):
        assert msg["kind"] == "batch", msg["kind"]
        g, l = t["global"][1], t["local"][1]
        b = g.shape[0]
        assert g.shape == (b, G, C, GS, GS), g.shape
        assert l.shape == (b, L, C, LS, LS), l.shape
        assert len(msg["meta"]["files"]) == b
        assert B is None or b <= B
        assert np.isfinite(g).all() and np.isfinite(l).all()
        n += b
    print(n)


def normcheck(path):
    gs = [t["global"][1] for _, t in arrays(path)]
    g = np.concatenate(gs).transpose(2, 0, 1, 3, 4).reshape(gs[0].shape[2], -1)
    for m, s in zip(g.mean(1), g.std(1)):
        print("%.4f %.4f" % (m, s))


def dump(path):
    for msg, t in arrays(path):
        m = msg["meta"]
        print(msg["kind"], m["epoch"], m["index"], t["global"][0], " ".join(m["files"]))


def read_stats(path):
    with open(path, "rb") as f:
        msg = next(msgpack.Unpacker(f, raw=False))
    get = lambda n: np.frombuffer(msg["tensors"][n]["data"], dtype="<f8")
    return get("mean"), get("std")


def jitter(stats_path, plain, jit):
    """Max over views of (max - min over bands of the per-band factor)
    divided by its mean, and the largest factor's distance from 1; for
    each band the factor is fitted by least squares over its pixels, as
    brightness (y = b x) or contrast about the band's mean (y - m = c (x - m))
    whichever fits better; contrast on the pixels the clamp at 0 left."""
    mean, std = read_stats(stats_path)
    spread, moved = 0.0, 0.0
    for (_, a), (_, b) in zip(arrays(plain), arrays(jit)):
        x = a["global"][1] * std[None, None, :, None, None] + mean[None, None, :, None, None]
        y = b["global"][1] * std[None, None, :, None, None] + mean[None, None, :, None, None]
        x = x.reshape(x.shape[0] * x.shape[1], x.shape[2], -1).astype(np.float64)
        y = y.reshape(x.shape).astype(np.float64)
        for xv, yv in zip(x, y):
            f = []
            for xb, yb in zip(xv, yv):
                bright = (xb @ yb) / (xb @ xb)
                ok = yb > 1e-5          # the jitter clamps at 0 (normalizing blurs 0)
                xc, yc = (xb - xb.mean())[ok], (yb - xb.mean())[ok]
                contrast = (xc @ yc) / (xc @ xc)
                rb = np.abs(yb - bright * xb).max()
                rc = np.abs(yc - contrast * xc).max()
                f.append(bright if rb <= rc else contrast)
            f = np.array(f)
            spread = max(spread, (f.max() - f.min()) / f.mean())
            moved = max(moved, np.abs(f - 1).max())
    print("%.6f %.6f" % (spread, moved))


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "stats":
        stats(args[0], args[1], float(args[2]) if len(args) > 2 else 1.0)
    elif cmd == "check":
        check(args[0], *[int(a) for a in args[1:]])
    elif cmd == "normcheck":
        normcheck(args[0])
    elif cmd == "dump":
        dump(args[0])
    elif cmd == "jitter":
        jitter(*args)
