#!/usr/bin/python3
"""Compares tif-stats JSON (stdin) with gdalinfo -stats of one file.

usage: compare_gdal.py FILE [SCALE]
Every band's mean, std, min and max must equal GDAL's to 1e-6 relative.
"""
import json
import os
import subprocess
import sys

path = sys.argv[1]
scale = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
ours = json.load(sys.stdin)
env = dict(os.environ, GDAL_PAM_ENABLED="NO")  # no .aux.xml, no cached stats
gdal = json.loads(subprocess.check_output(["gdalinfo", "-stats", "-json", path], env=env))
bands = list(ours["bands"].values())
assert len(bands) == len(gdal["bands"]), (len(bands), len(gdal["bands"]))
worst = 0.0
for ob, gb in zip(bands, gdal["bands"]):
    # the metadata carries full precision; the JSON fields are rounded
    md = gb["metadata"][""]
    for key, gkey in (("mean", "MEAN"), ("std", "STDDEV"), ("min", "MINIMUM"), ("max", "MAXIMUM")):
        want = float(md["STATISTICS_" + gkey]) / scale
        got = ob[key]
        rel = abs(got - want) / max(abs(want), 1e-300) if want != 0 else abs(got)
        worst = max(worst, rel)
        if rel > 1e-6:
            sys.exit(f"band {gb['band']} {key}: tif-stats {got!r}, gdalinfo {want!r} (rel {rel:.3g})")
print(f"{path}: {len(bands)} bands agree with gdalinfo, worst relative difference {worst:.3g}")
