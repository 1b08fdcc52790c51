#!/usr/bin/python3
"""The band-statistics baseline: per-band mean and std of each tile as its
feature vector, written as a `features` message for knn-eval.

    band-stats-features.py LIST OUT.mpt [--classes classes.txt]

LIST has "path label" lines (as pipelines/l7-landcover.py and
synthetic-textures.py write them).
"""
import argparse

import msgpack
import numpy as np
from osgeo import gdal

gdal.UseExceptions()
ap = argparse.ArgumentParser()
ap.add_argument("list")
ap.add_argument("out")
ap.add_argument("--classes")
a = ap.parse_args()
feats, labels, files = [], [], []
for line in open(a.list):
    if not line.strip():
        continue
    path, label = line.rsplit(None, 1)
    x = gdal.Open(path).ReadAsArray().astype(np.float64)
    x = x.reshape(x.shape[0], -1)
    feats.append(np.concatenate([x.mean(1), x.std(1)]))
    labels.append(int(label))
    files.append(path)
f = np.array(feats, dtype="<f4")
y = np.array(labels, dtype="<i4")
meta = {"tool": "band-stats-features.py", "files": files}
if a.classes:
    meta["classes"] = [c.strip() for c in open(a.classes) if c.strip()]
msg = {"v": 1, "kind": "features", "meta": meta, "tensors": {
    "features": {"dtype": "<f4", "shape": list(f.shape), "data": f.tobytes()},
    "labels": {"dtype": "<i4", "shape": [len(y)], "data": y.tobytes()}}}
with open(a.out, "wb") as fh:
    fh.write(msgpack.packb(msg, use_bin_type=True))
