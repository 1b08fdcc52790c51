#!/usr/bin/python3
"""A seeded synthetic tile set whose classes raw band statistics cannot tell apart.

    synthetic-textures.py OUT [--seed 0] [--train 150] [--test 50] [--size 32] [--bands 6]
                          [--contrast 0.05 0.10] [--gain 0.7 1.3] [--noise 0.005]
                          [--scales 8 6 2]

Six classes = 3 spatial textures x 2 spectral mixtures.  Every tile mixes
two spectra, M - d and M + d, with a per-pixel fraction alpha(x, y) = 0.5 +
0.25 * pattern(x, y), where the pattern has zero mean and unit variance:

  textures:  stripes (period 8 px), rings (period 6 px around a random
             centre), smoothed noise blobs (Gaussian-filtered white noise)
  mixtures:  d = D, or d = D * S with S a fixed +-1 sign per band: both have
             the same |d| per band, so every band has the same mean and the
             same standard deviation in both mixtures; only the correlation
             between bands differs.

Nuisances per tile: random rotation (0-360 degrees) and shift of the
texture, illumination gain U[0.7, 1.3] on all bands, Gaussian noise of
0.005 reflectance.  So per-band mean/std features sit near chance (1/6),
while a network that sees texture and band correlations can do better.

Writes OUT/{train,test}/<class>/NNNN.tif (uint16 reflectance x 10000,
ImageFolder style), OUT/train.txt and OUT/test.txt ("path label"),
OUT/classes.txt and OUT/summary.json.  The same seed gives the same files.
"""
import argparse
import json
import os

import numpy as np
from osgeo import gdal

TEXTURES = ["stripes", "rings", "blobs"]
MIXTURES = ["plain", "flipped"]
gdal.UseExceptions()


def texture(kind, n, rng, scales=(8.0, 6.0, 2.0)):
    """A zero-mean, unit-variance pattern of one texture, randomly posed;
    scales: the stripes' period, the rings' period, the blobs' sigma (px)."""
    y, x = np.mgrid[0:n, 0:n].astype(np.float64)
    theta = rng.uniform(0, 2 * np.pi)
    u = np.cos(theta) * x + np.sin(theta) * y + rng.uniform(0, 64)
    if kind == "stripes":
        p = np.sin(2 * np.pi * u / scales[0])
    elif kind == "rings":
        cy, cx = rng.uniform(0, n, size=2)
        p = np.sin(2 * np.pi * np.hypot(y - cy, x - cx) / scales[1] + rng.uniform(0, 2 * np.pi))
    else:  # blobs: white noise smoothed by a Gaussian of sigma scales[2] px (FFT, periodic)
        w = rng.normal(size=(n, n))
        f = np.fft.fftfreq(n)
        g = np.exp(-2 * (np.pi * scales[2]) ** 2 * (f[:, None] ** 2 + f[None, :] ** 2))
        p = np.real(np.fft.ifft2(np.fft.fft2(w) * g))
    p = p - p.mean()
    return p / (p.std() + 1e-12)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train", type=int, default=150, help="tiles per class")
    ap.add_argument("--test", type=int, default=50, help="tiles per class")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--bands", type=int, default=6)
    ap.add_argument("--contrast", type=float, nargs=2, default=[0.05, 0.10],
                    help="range of the spectral contrast D per band (reflectance)")
    ap.add_argument("--gain", type=float, nargs=2, default=[0.7, 1.3],
                    help="range of the per-tile illumination gain")
    ap.add_argument("--noise", type=float, default=0.005, help="Gaussian noise (reflectance)")
    ap.add_argument("--scales", type=float, nargs=3, default=[8.0, 6.0, 2.0],
                    help="stripes' period, rings' period, blobs' sigma (pixels)")
    a = ap.parse_args()

    rng = np.random.default_rng(a.seed)
    M = rng.uniform(0.15, 0.35, size=a.bands)          # mean spectrum
    D = rng.uniform(*a.contrast, size=a.bands)         # spectral contrast
    S = np.where(np.arange(a.bands) % 2 == 0, 1.0, -1.0)
    mixtures = [D, D * S]
    classes = [f"{t}-{m}" for t in TEXTURES for m in MIXTURES]
    driver = gdal.GetDriverByName("GTiff")
    lists = {"train": [], "test": []}
    for split, per_class in (("train", a.train), ("test", a.test)):
        for k, name in enumerate(classes):
            d = os.path.join(a.out, split, name)
            os.makedirs(d, exist_ok=True)
            tex, mix = TEXTURES[k // 2], mixtures[k % 2]
            for i in range(per_class):
                alpha = 0.5 + 0.25 * texture(tex, a.size, rng, a.scales)
                img = M[:, None, None] + (2 * alpha[None] - 1) * mix[:, None, None]
                img = img * rng.uniform(*a.gain) + rng.normal(0, a.noise, size=img.shape)
                dn = np.clip(np.rint(img * 10000), 0, 65535).astype(np.uint16)
                path = os.path.join(d, f"{i:04d}.tif")
                t = driver.Create(path, a.size, a.size, a.bands, gdal.GDT_UInt16,
                                  options=["COMPRESS=DEFLATE", "INTERLEAVE=BAND"])
                for b in range(a.bands):
                    t.GetRasterBand(b + 1).WriteArray(dn[b])
                t = None
                lists[split].append(f"{path} {k}")
    for split, lines in lists.items():
        with open(os.path.join(a.out, f"{split}.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
    with open(os.path.join(a.out, "classes.txt"), "w") as f:
        f.write("\n".join(classes) + "\n")
    summary = {"classes": classes, "seed": a.seed, "size": a.size, "bands": a.bands,
               "contrast": a.contrast, "gain": a.gain, "noise": a.noise, "scales": a.scales,
               "per_class": {"train": a.train, "test": a.test}}
    with open(os.path.join(a.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(json.dumps(summary))


main()
