#!/usr/bin/env bash
# bench/tif-stats.sh [COPIES] [REPEATS]
#
# tif-stats against GDAL on the same files in the same run:
#   - `gdalinfo -stats` once per file (what users run), one process per file;
#   - GDAL in one Python process (band.ComputeStatistics), no start-up cost:
#     the fairer peer for the statistics code itself.
# Two data sets: COPIES copies of the bundled Landsat scene (uint8, deflate,
# strips) and the same scene as Sentinel-2-like uint16 tiles (deflate,
# predictor 2).  Prints the median wall time of REPEATS runs of each and the
# ratios, as a Markdown table for BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
copies=${1:-40}
repeats=${2:-5}
bin=$PWD/bin/tif-stats
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export GDAL_PAM_ENABLED=NO   # no .aux.xml: GDAL must compute, not read cached stats

mkdir "$tmp/l7" "$tmp/s2"
gdal_translate -q -ot UInt16 -scale 0 255 0 10000 -co TILED=YES -co COMPRESS=DEFLATE \
    -co PREDICTOR=2 tests/data/L7_ETMs.tif "$tmp/s2.tif"
for i in $(seq -w 1 "$copies"); do
    cp tests/data/L7_ETMs.tif "$tmp/l7/scene$i.tif"
    cp "$tmp/s2.tif" "$tmp/s2/scene$i.tif"
done

median() { sort -n | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

# time_cmd CMD...: median seconds over $repeats runs
time_cmd() {
    for _ in $(seq "$repeats"); do
        local t0 t1
        t0=$(date +%s.%N)
        "$@" > /dev/null
        t1=$(date +%s.%N)
        echo "$t1 - $t0" | bc -l
    done | median
}

gdalinfo_each() { for f in "$1"/*.tif; do gdalinfo -stats "$f" > /dev/null; done; }
gdalinfo_par() { ls "$1"/*.tif | xargs -P "$2" -n 1 gdalinfo -stats > /dev/null; }
gdal_python() {
    /usr/bin/python3 - "$1" <<'PY'
import glob, sys
from osgeo import gdal
gdal.UseExceptions()
for f in sorted(glob.glob(sys.argv[1] + "/*.tif")):
    ds = gdal.Open(f)
    for b in range(1, ds.RasterCount + 1):
        ds.GetRasterBand(b).ComputeStatistics(False)
PY
}

cores=$(nproc)
echo "| data | files | tif-stats -j 1 | gdalinfo -stats (1 process/file) | ratio | GDAL in-process | ratio | tif-stats -j $cores | gdalinfo x$cores (xargs -P) | ratio |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for set in l7 s2; do
    ours1=$(time_cmd "$bin" -q -j 1 "$tmp/$set"/*.tif)
    gdal1=$(time_cmd gdalinfo_each "$tmp/$set")
    gpy=$(time_cmd gdal_python "$tmp/$set")
    oursN=$(time_cmd "$bin" -q -j "$cores" "$tmp/$set"/*.tif)
    gdalN=$(time_cmd gdalinfo_par "$tmp/$set" "$cores")
    printf '| %s | %d | %.3f s | %.3f s | %.2fx | %.3f s | %.2fx | %.3f s | %.3f s | %.2fx |\n' \
        "$set" "$copies" "$ours1" "$gdal1" "$(echo "$gdal1 / $ours1" | bc -l)" \
        "$gpy" "$(echo "$gpy / $ours1" | bc -l)" \
        "$oursN" "$gdalN" "$(echo "$gdalN / $oursN" | bc -l)"
done
