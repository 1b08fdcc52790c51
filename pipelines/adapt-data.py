#!/usr/bin/python3
"""A domain-shift segmentation benchmark from the bundled Landsat 7 scene.

    adapt-data.py OUT [--scene tests/data/L7_ETMs.tif] [--tile 24] [--stride 12] [--seed 0]
                      [--strength 1]

Labels: every pixel gets the land-cover class of pipelines/l7-landcover.py
(its pixel_classes rule on the scene's own spectral indices):
0 water (NDWI > 0.4), 1 vegetation (NDVI > 0.2), 2 built-up/bare.

Source: the scene as it is (uint8, 6 bands), tiles from the blocks of a
4 x 4 grid where row + column is even (l7-landcover's chessboard).

Target: the same sensor-independent ground seen by a different sensor,
tiles from the other blocks: target-train (unlabelled for the methods)
where (column - row) mod 4 == 1, target-test where it is 3, so that both
hold some of the sea in the east.  The shift, applied to the whole scene
in reflectance-like units (value / 255) before tiling:
  1. band mixing (spectral response crosstalk): x' = M x, M = 0.75 I plus
     0.25 of each band's neighbours, split evenly (rows sum to 1);
  2. per-band gain and offset: gains 1.35 0.8 1.25 0.7 1.3 0.9, offsets
     +0.06 -0.03 +0.05 -0.02 +0.04 0.0;
  3. a resolution change: 2 x 2 block mean, then nearest back up (a
     coarser ground sampling distance on the same grid);
  4. a Gaussian blur (sigma 0.8 px, the point spread function);
  5. Gaussian noise, sigma 0.02, seeded;
  --strength S scales steps 1, 2 and 5 away from the identity (mixing
  0.25 S, gains 1 + S (g - 1), offsets S o, noise 0.02 S); blur and the
  resolution change stay;
  then back to uint8 (x 255, rounded, clipped).
The labels of target tiles are the labels of the same pixels in the
source scene (the ground does not change, the sensor does).

Writes OUT/{src-train,tgt-train,tgt-test}/<name>.tif (images) and
<name>_label.tif (uint8, one band), lists OUT/{src-train,tgt-train,
tgt-test}.txt ("image label" lines), OUT/tgt-train-images.txt (images
only), and OUT/summary.json (tile and class pixel counts).
"""
import argparse
import importlib.util
import json
import os

import numpy as np
from osgeo import gdal

# the land-cover rule, from its one place
_spec = importlib.util.spec_from_file_location(
    "l7_landcover", os.path.join(os.path.dirname(os.path.abspath(__file__)), "l7-landcover.py"))
_l7 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_l7)
pixel_classes = _l7.pixel_classes

gdal.UseExceptions()

GAINS = np.array([1.35, 0.8, 1.25, 0.7, 1.3, 0.9])
OFFSETS = np.array([0.06, -0.03, 0.05, -0.02, 0.04, 0.0])


def blur(x, sigma):
    r = int(np.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    pad = np.pad(x, ((0, 0), (r, r), (r, r)), mode="edge")
    y = sum(k[i] * pad[:, i:i + x.shape[1], r:r + x.shape[2]] for i in range(2 * r + 1))
    pad = np.pad(y, ((0, 0), (0, 0), (r, r)), mode="edge")
    return sum(k[i] * pad[:, :, i:i + x.shape[2]] for i in range(2 * r + 1))


def sensor_shift(data, seed, strength):
    x = data.astype(np.float64) / 255.0
    C = x.shape[0]
    mix = 0.25 * strength
    M = (1 - mix) * np.eye(C)
    for c in range(C):
        nb = [n for n in (c - 1, c + 1) if 0 <= n < C]
        for n in nb:
            M[c, n] = mix / len(nb)
    x = np.einsum("ij,jhw->ihw", M, x)
    gains = 1 + strength * (GAINS[:C] - 1)
    x = x * gains[:, None, None] + strength * OFFSETS[:C, None, None]
    H, W = x.shape[1] // 2 * 2, x.shape[2] // 2 * 2
    coarse = x[:, :H, :W].reshape(C, H // 2, 2, W // 2, 2).mean(axis=(2, 4))
    x[:, :H, :W] = coarse.repeat(2, axis=1).repeat(2, axis=2)
    x = blur(x, 0.8)
    x = x + np.random.default_rng(seed).normal(0, 0.02 * strength, x.shape)
    return np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)


def write(path, a):
    a = a if a.ndim == 3 else a[None]
    t = gdal.GetDriverByName("GTiff").Create(path, a.shape[2], a.shape[1], a.shape[0], gdal.GDT_Byte,
                                             options=["COMPRESS=DEFLATE", "INTERLEAVE=BAND"])
    for b in range(a.shape[0]):
        t.GetRasterBand(b + 1).WriteArray(a[b])
    t = None


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out")
    p.add_argument("--scene", default="tests/data/L7_ETMs.tif")
    p.add_argument("--tile", type=int, default=24)
    p.add_argument("--stride", type=int, default=12)
    p.add_argument("--blocks", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strength", type=float, default=1.0,
                   help="scales the mixing, gains, offsets and noise away from identity")
    p.add_argument("--max-tiles", type=int, default=0, help="per set (0: all), for tests")
    a = p.parse_args()

    data = gdal.Open(a.scene).ReadAsArray()
    cls = pixel_classes(data.astype(np.float64)).astype(np.uint8)
    shifted = sensor_shift(data, a.seed, a.strength)
    _, H, W = data.shape
    bh, bw = H // a.blocks, W // a.blocks
    sets = {"src-train": [], "tgt-train": [], "tgt-test": []}
    counts = {s: [0, 0, 0] for s in sets}
    for by in range(a.blocks):
        for bx in range(a.blocks):
            if (by + bx) % 2 == 0:
                split, img = "src-train", data
            else:
                split, img = ("tgt-train" if (bx - by) % 4 == 1 else "tgt-test"), shifted
            for y in range(by * bh, (by + 1) * bh - a.tile + 1, a.stride):
                for x in range(bx * bw, (bx + 1) * bw - a.tile + 1, a.stride):
                    if a.max_tiles and len(sets[split]) >= a.max_tiles:
                        continue
                    d = os.path.join(a.out, split)
                    os.makedirs(d, exist_ok=True)
                    name = os.path.join(d, f"r{y:03d}_c{x:03d}")
                    lab = cls[y:y + a.tile, x:x + a.tile]
                    write(name + ".tif", img[:, y:y + a.tile, x:x + a.tile])
                    write(name + "_label.tif", lab)
                    sets[split].append(f"{name}.tif {name}_label.tif")
                    for c in range(3):
                        counts[split][c] += int((lab == c).sum())
    for split, lines in sets.items():
        with open(os.path.join(a.out, f"{split}.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
    with open(os.path.join(a.out, "tgt-train-images.txt"), "w") as f:
        f.write("\n".join(l.split()[0] for l in sets["tgt-train"]) + "\n")
    summary = {"classes": ["water", "vegetation", "built"], "tile": a.tile, "stride": a.stride,
               "seed": a.seed, "strength": a.strength, "tiles": {s: len(v) for s, v in sets.items()},
               "class_pixels": counts}
    with open(os.path.join(a.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(json.dumps(summary))


main()
