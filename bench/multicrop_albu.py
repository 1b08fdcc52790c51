"""The Sentinel-2 multi-crop recipe (multicrop --recipe s2) written the usual
way, with albumentations + numpy, for bench/multicrop.sh.  It does the same
work per sample as the C program: read the tile, scale, 2 global views of
120 and 6 local views of 56 (RandomResizedCrop, flip, ShiftScaleRotate with
reflect-101, per-band brightness/contrast jitter, channel collapse,
Gaussian blur, solarization, normalization) and collate them into float32
batch arrays.  Usage: multicrop_albu.py LIST STATS.npz BATCH"""
import sys
import time

import albumentations as A
import cv2
import numpy as np
import tifffile

cv2.setNumThreads(1)


def geometry(size, scale):
    return A.Compose([
        A.RandomResizedCrop(size=(size, size), scale=scale, ratio=(3 / 4, 4 / 3),
                            interpolation=cv2.INTER_LINEAR),
        A.HorizontalFlip(p=0.5),
        A.ShiftScaleRotate(shift_limit=0.0625, scale_limit=0.1, rotate_limit=45,
                           border_mode=cv2.BORDER_REFLECT_101, p=0.5),
    ])


GEOM = {"global": geometry(120, (0.4, 1.0)), "local": geometry(56, (0.05, 0.4))}
# blur, collapse and solarization probabilities of global 1, global 2, local
BLUR = {0: A.GaussianBlur(blur_limit=0, sigma_limit=(0.1, 2.0), p=1.0),
        1: A.GaussianBlur(blur_limit=0, sigma_limit=(0.1, 2.0), p=0.1),
        2: A.GaussianBlur(blur_limit=0, sigma_limit=(0.1, 2.0), p=0.5)}
COLLAPSE = {0: 1.0, 1: 0.2, 2: 0.2}
SOLARIZE = {0: 0.0, 1: 0.2, 2: 0.0}


def photometric(x, kind, rng, mean, std):
    C = x.shape[2]
    if rng.random() < 0.8:   # per-band brightness, then contrast about the band mean
        b = rng.uniform(0.6, 1.4, C).astype(np.float32)
        c = rng.uniform(0.6, 1.4, C).astype(np.float32)
        x = x * b
        m = x.mean(axis=(0, 1))
        x = np.maximum((x - m) * c + m, 0)
    if rng.random() < COLLAPSE[kind]:
        x = np.repeat(x[:, :, rng.integers(C)][:, :, None], C, axis=2)
    x = BLUR[kind](image=np.ascontiguousarray(x, dtype=np.float32))["image"]
    if rng.random() < SOLARIZE[kind]:
        x = np.where(x >= 0.5, 1.0 - x, x)
    return ((x - mean) / std).transpose(2, 0, 1)


def sample(path, rng, mean, std):
    x = tifffile.imread(path).astype(np.float32) / 10000.0   # [C, H, W]
    x = np.ascontiguousarray(x.transpose(1, 2, 0))           # HWC for cv2
    g = [photometric(GEOM["global"](image=x)["image"], k, rng, mean, std) for k in (0, 1)]
    l = [photometric(GEOM["local"](image=x)["image"], 2, rng, mean, std) for _ in range(6)]
    return np.stack(g), np.stack(l)


def main():
    files = [l.strip() for l in open(sys.argv[1]) if l.strip()]
    st = np.load(sys.argv[2])
    mean, std = st["mean"].astype(np.float32), st["std"].astype(np.float32)
    B = int(sys.argv[3])
    rng = np.random.default_rng(0)
    t0, c0 = time.perf_counter(), time.process_time()
    for k in range(0, len(files), B):
        views = [sample(f, rng, mean, std) for f in files[k:k + B]]
        g = np.stack([v[0] for v in views]).astype(np.float32)
        l = np.stack([v[1] for v in views]).astype(np.float32)
        assert g.shape[1:] == (2, mean.size, 120, 120) and l.shape[1:] == (6, mean.size, 56, 56)
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    print("%.3f %.3f" % (len(files) / dt, len(files) / dc))   # wall rate, rate per CPU second


if __name__ == "__main__":
    main()
