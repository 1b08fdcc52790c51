#!/usr/bin/python3
"""Features for knn-eval tests and benchmarks, and a numpy reference.

  features.py make OUT_TRAIN OUT_TEST [--n-train N] [--n-test N] [--dim D]
                   [--classes C] [--seed S] [--noise X] [--dtype <f4|<f8|<f2]
      clustered features (one random centre per class, Gaussian noise),
      written as `features` messages.
  features.py knn TRAIN TEST K [K ...] [--temperature T]
      DINO's weighted k-NN in numpy, printed as knn-eval prints it.
"""
import argparse
import sys

import msgpack
import numpy as np


def write(path, x, y, classes, dtype):
    x = x.astype(dtype)
    msg = {"v": 1, "kind": "features",
           "meta": {"classes": [f"class{c}" for c in range(classes)], "tool": "features.py"},
           "tensors": {
               "features": {"dtype": dtype, "shape": list(x.shape), "data": x.tobytes()},
               "labels": {"dtype": "<i4", "shape": [len(y)], "data": y.astype("<i4").tobytes()}}}
    with open(path, "wb") as f:
        f.write(msgpack.packb(msg, use_bin_type=True))


def read(path):
    msg = next(iter(msgpack.Unpacker(open(path, "rb"), raw=False, max_buffer_size=2**31)))
    t = {n: np.frombuffer(v["data"], dtype=v["dtype"]).reshape(v["shape"])
         for n, v in msg["tensors"].items()}
    return t["features"].astype(np.float32), t["labels"]


def make(a):
    rng = np.random.default_rng(a.seed)
    centres = rng.normal(size=(a.classes, a.dim))
    for path, n in ((a.train, a.n_train), (a.test, a.n_test)):
        y = rng.integers(0, a.classes, size=n)
        x = centres[y] + a.noise * rng.normal(size=(n, a.dim))
        write(path, x, y, a.classes, a.dtype)


def knn(a):
    xtr, ytr = read(a.train)
    xte, yte = read(a.test)
    norm = lambda x: x / np.maximum(np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True),
                                    1e-12).astype(np.float32)
    xtr, xte = norm(xtr), norm(xte)
    classes = int(max(ytr.max(), yte.max())) + 1
    kmax = min(max(a.k), len(ytr))
    top1 = {k: 0 for k in a.k}
    top5 = {k: 0 for k in a.k}
    for s in range(0, len(yte), 512):
        sim = xte[s:s + 512] @ xtr.T                     # float32, as DINO
        part = np.argpartition(-sim, kmax - 1, axis=1)[:, :kmax]
        psim = np.take_along_axis(sim, part, 1)
        # best first: higher similarity, then lower training index
        order = np.lexsort((part, -psim), axis=1)
        idx = np.take_along_axis(part, order, 1)
        ssim = np.take_along_axis(psim, order, 1)
        for k in a.k:
            kk = min(k, kmax)
            w = np.exp(ssim[:, :kk].astype(np.float64) / a.temperature)
            scores = np.zeros((len(idx), classes))
            np.add.at(scores, (np.arange(len(idx))[:, None], ytr[idx[:, :kk]]), w)
            ranked = np.argsort(-scores, axis=1, kind="stable")   # ties: lower class id
            truth = yte[s:s + 512, None]
            top1[k] += int((ranked[:, :1] == truth).sum())
            top5[k] += int((ranked[:, :min(5, kk, classes)] == truth).sum())
    for k in sorted(a.k, key=lambda k: k != 20):
        line = f"{k}-NN classifier result: Top1: {100.0 * top1[k] / len(yte):.2f}"
        if classes >= 5:
            line += f", Top5: {100.0 * top5[k] / len(yte):.2f}"
        print(line)


p = argparse.ArgumentParser()
sub = p.add_subparsers(dest="cmd", required=True)
m = sub.add_parser("make")
m.add_argument("train"); m.add_argument("test")
m.add_argument("--n-train", type=int, default=2000); m.add_argument("--n-test", type=int, default=500)
m.add_argument("--dim", type=int, default=64); m.add_argument("--classes", type=int, default=10)
m.add_argument("--seed", type=int, default=0); m.add_argument("--noise", type=float, default=1.5)
m.add_argument("--dtype", default="<f4")
k = sub.add_parser("knn")
k.add_argument("train"); k.add_argument("test"); k.add_argument("k", type=int, nargs="+")
k.add_argument("--temperature", type=float, default=0.07)
a = p.parse_args()
make(a) if a.cmd == "make" else knn(a)
