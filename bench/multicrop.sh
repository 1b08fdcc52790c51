#!/usr/bin/env bash
# bench/multicrop.sh: samples/s per core of `multicrop --recipe s2` with
# --threads 1 and 2, against the same recipe written with albumentations +
# numpy (bench/multicrop_albu.py), on the same machine in the same run.
#
#   bench/multicrop.sh [SAMPLES]      (default 192 samples per run, REPS=3 runs)
#
# Needs a Python with albumentations and tifffile: VENV (default bench/.venv,
# git-ignored), made here from PyPI when it is missing.
# Data: 120x120 tiles with 12 bands of uint16 (reflectance x 10000, band
# interleaved, deflate), cut from the bundled Landsat scene (its 6 bands
# twice), the shape of the Sentinel-2 tiles the s2 recipe is for.
# Rates are medians; per core = samples / CPU seconds (user + sys) of the
# process, which shared machines distort less than wall time; wall-clock
# rates are printed too.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-192}
REPS=${REPS:-3}
VENV=${VENV:-bench/.venv}
PYB=$VENV/bin/python
PY=/usr/bin/python3
if [ ! -x "$PYB" ] || ! "$PYB" -c "import albumentations, tifffile" 2>/dev/null; then
    echo "bench/multicrop.sh: installing albumentations and tifffile into $VENV" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q albumentations tifffile
fi
make -s bin/multicrop >/dev/null

W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
bands=$(for b in 1 2 3 4 5 6 1 2 3 4 5 6; do printf -- '-b %d ' $b; done)
for i in 0 1 2 3 4 5 6 7; do
    # shellcheck disable=SC2086
    gdal_translate -q -ot UInt16 -scale 0 255 0 10200 -srcwin $((i % 4 * 76)) $((i / 4 * 116)) 120 120 \
        $bands -co COMPRESS=DEFLATE -co INTERLEAVE=BAND tests/data/L7_ETMs.tif "$W/t$i.tif"
done
gdal_translate -q -of ENVI "$W/t0.tif" "$W/t0.raw"
"$PY" tests/cli/multicrop_tool.py stats "$W/t0.raw" "$W/stats.mpt" 10000
"$PY" -c "
import msgpack, numpy as np
m = msgpack.unpackb(open('$W/stats.mpt', 'rb').read())
g = lambda k: np.frombuffer(m['tensors'][k]['data'], '<f8')
np.savez('$W/stats.npz', mean=g('mean'), std=g('std'))"
for k in $(seq "$N"); do echo "$W/t$((k % 8)).tif"; done >"$W/list.txt"

# prints "wall_rate cpu_rate" of one multicrop run
run_c() {
    local t
    t=$( { /usr/bin/time -f '%e %U %S' bin/multicrop --stats "$W/stats.mpt" --recipe s2 \
        --batch-size 32 --threads "$1" --list "$W/list.txt" >/dev/null; } 2>&1 | tail -n 1)
    awk -v n="$N" -v t="$t" 'BEGIN { split(t, a, " "); printf "%.2f %.2f\n", n / a[1], n / (a[2] + a[3]) }'
}

for r in $(seq "$REPS"); do
    echo "c1 $(run_c 1)"
    echo "c2 $(run_c 2)"
    echo "py $("$PYB" -W ignore bench/multicrop_albu.py "$W/list.txt" "$W/stats.npz" 32)"
done >"$W/runs.txt"

"$PY" - "$W/runs.txt" "$N" "$REPS" <<'PYEOF'
import sys, statistics as st
rows = [l.split() for l in open(sys.argv[1])]
med = lambda who, k: st.median(float(r[k]) for r in rows if r[0] == who)
c1w, c1c, c2w, c2c, pyw, pyc = (med("c1", 1), med("c1", 2), med("c2", 1), med("c2", 2),
                                med("py", 1), med("py", 2))
print("samples per run: %s, runs: %s (medians)" % (sys.argv[2], sys.argv[3]))
print("%-38s %12s %14s" % ("", "wall samples/s", "per core (CPU)"))
print("%-38s %12.1f %14.1f" % ("multicrop --threads 1", c1w, c1c))
print("%-38s %12.1f %14.1f" % ("multicrop --threads 2", c2w, c2c))
print("%-38s %12.1f %14.1f" % ("albumentations + numpy (1 process)", pyw, pyc))
print("ratio per core, multicrop / albumentations: %.2fx (CPU time), %.2fx (wall, 1 thread)"
      % (c1c / pyc, c1w / pyw))
print("scaling 1 -> 2 threads (wall): %.2fx" % (c2w / c1w))
# What a GPU trainer needs: ViT-S/8 on the s2 views (12 bands, 2 x 120 + 6 x 56).
d, L, mlp = 384, 12, 1536
def vit_flops(side):           # forward FLOPs of one view
    n = (side // 8) ** 2 + 1
    per_layer = n * (2 * (4 * d * d + 2 * d * mlp)) + 2 * (2 * n * n * d)
    embed = (side // 8) ** 2 * 2 * 12 * 64 * d
    return L * per_layer + embed
head = 2 * (d * 2048 + 2048 * 2048 + 2048 * 256 + 256 * 65536)
student = 2 * (vit_flops(120) + head) + 6 * (vit_flops(56) + head)
teacher = 2 * (vit_flops(120) + head)
step = 3 * student + teacher    # forward + backward (2x) of the student, teacher forward
peak, mfu = 989e12, 0.4         # H100 SXM dense bf16, a good training MFU
need = peak * mfu / step
print("vit_small/8 step: %.0f GFLOP per sample; at %.0f%% MFU of an H100 (%.0f TFLOP/s bf16) "
      "it consumes %.0f samples/s = %.0f cores of multicrop (%.0f cores of albumentations)"
      % (step / 1e9, mfu * 100, peak / 1e12, need, need / c1c, need / pyc))
PYEOF
