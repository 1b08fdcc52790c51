#!/usr/bin/python3
"""A real labelled tile set from the bundled Landsat 7 ETM+ scene.

    l7-landcover.py OUT [--scene tests/data/L7_ETMs.tif] [--tile 24] [--stride 8]

Every pixel gets a land-cover class from the scene's own spectral indices
(bands of L7_ETMs.tif: 1 blue, 2 green, 3 red, 4 NIR, 5 SWIR1, 6 SWIR2):

    NDWI = (green - NIR) / (green + NIR)   > 0.4             -> water
    NDVI = (NIR - red) / (NIR + red)       > 0.2             -> vegetation
    otherwise                                                -> built-up/bare
                                                             (NDBI = (SWIR1 - NIR) / (SWIR1 + NIR)
                                                             is > 0.1 for 88% of these pixels)

The thresholds sit in the gaps of the scene's index histograms (NDWI is
bimodal: sea near 0.72, land below 0.3).  A tile is labelled by the
majority class of its pixels.

Train and test come from different parts of the scene: it is cut into a
4 x 4 grid of blocks, tiles lie wholly inside one block, and blocks
alternate like a chessboard (train where row + column is even).  So no
pixel is in both sets, and both sets see the sea (east), the city and the
vegetated west.

Writes OUT/{train,test}/<class>/r<row>_c<col>.tif (6-band uint8 GeoTIFFs,
ImageFolder style), OUT/train.txt and OUT/test.txt ("path label" lines),
OUT/classes.txt, and OUT/summary.json (class counts per set).
"""
import argparse
import json
import os

import numpy as np
from osgeo import gdal

CLASSES = ["water", "vegetation", "built"]
gdal.UseExceptions()


def pixel_classes(a):
    """Class id per pixel from a [6, H, W] float array."""
    b2, b3, b4 = a[1], a[2], a[3]
    eps = 1e-9
    ndwi = (b2 - b4) / (b2 + b4 + eps)
    ndvi = (b4 - b3) / (b4 + b3 + eps)
    return np.select([ndwi > 0.4, ndvi > 0.2], [0, 1], 2)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out")
    p.add_argument("--scene", default="tests/data/L7_ETMs.tif")
    p.add_argument("--tile", type=int, default=24)
    p.add_argument("--stride", type=int, default=8)
    p.add_argument("--blocks", type=int, default=4)
    a = p.parse_args()

    ds = gdal.Open(a.scene)
    data = ds.ReadAsArray()                       # [6, H, W] uint8
    cls = pixel_classes(data.astype(np.float64))
    _, H, W = data.shape
    bh, bw = H // a.blocks, W // a.blocks
    lists = {"train": [], "test": []}
    counts = {s: [0] * len(CLASSES) for s in lists}
    driver = gdal.GetDriverByName("GTiff")
    for by in range(a.blocks):
        for bx in range(a.blocks):
            split = "train" if (by + bx) % 2 == 0 else "test"
            for y in range(by * bh, (by + 1) * bh - a.tile + 1, a.stride):
                for x in range(bx * bw, (bx + 1) * bw - a.tile + 1, a.stride):
                    votes = np.bincount(cls[y:y + a.tile, x:x + a.tile].ravel(), minlength=len(CLASSES))
                    label = int(np.argmax(votes))    # ties: the lower class id
                    d = os.path.join(a.out, split, CLASSES[label])
                    os.makedirs(d, exist_ok=True)
                    path = os.path.join(d, f"r{y:03d}_c{x:03d}.tif")
                    t = driver.Create(path, a.tile, a.tile, data.shape[0], gdal.GDT_Byte,
                                      options=["COMPRESS=DEFLATE", "INTERLEAVE=BAND"])
                    for b in range(data.shape[0]):
                        t.GetRasterBand(b + 1).WriteArray(data[b, y:y + a.tile, x:x + a.tile])
                    t = None
                    lists[split].append(f"{path} {label}")
                    counts[split][label] += 1
    for split, lines in lists.items():
        with open(os.path.join(a.out, f"{split}.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
    with open(os.path.join(a.out, "classes.txt"), "w") as f:
        f.write("\n".join(CLASSES) + "\n")
    summary = {"classes": CLASSES, "tile": a.tile, "stride": a.stride, "blocks": a.blocks,
               "counts": counts}
    with open(os.path.join(a.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(json.dumps(summary))


if __name__ == "__main__":  # importable: adapt-data.py reuses pixel_classes
    main()
