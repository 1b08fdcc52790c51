#!/usr/bin/env bash
# make demo: the main job on the bundled data.  Per-band statistics of the
# bundled Landsat 7 ETM+ scene, then a whole DINO run on its land-cover
# tiles (pipelines/l7-landcover.py) through pipelines/dino.mk: tif-stats,
# multicrop | dino-step train (one checkpoint per epoch), dino-step embed,
# knn-eval; and the teacher's k-NN accuracy next to the same network at
# initialisation and the per-band mean/std baseline.  DEMO_EPOCHS (6) sets
# the length; a second `make demo` reuses the finished run.
set -euo pipefail
cd "$(dirname "$0")/.."
out=demo-out
mkdir -p "$out"
scene=tests/data/L7_ETMs.tif
py=/usr/bin/python3

echo "== tif-stats on $scene"
bin/tif-stats -q -p 2,98 --hist 32 -o "$out/l7-stats.mpt" "$scene" > "$out/l7-stats.json"
$py - "$out/l7-stats.json" <<'PY'
import json, sys
stats = json.load(open(sys.argv[1]))
print(f"{'band':6} {'count':>8} {'mean':>9} {'std':>9} {'min':>6} {'max':>6} {'p2':>6} {'p98':>6}")
for name, b in stats["bands"].items():
    p = b["percentiles"]
    print(f"{name:6} {b['count']:8d} {b['mean']:9.3f} {b['std']:9.3f} {b['min']:6g} {b['max']:6g} {p['2']:6g} {p['98']:6g}")
PY

echo "== land-cover tiles (pipelines/l7-landcover.py)"
[ -f "$out/l7-tiles/train.txt" ] || $py pipelines/l7-landcover.py "$out/l7-tiles"
echo "$(wc -l < "$out/l7-tiles/train.txt") train and $(wc -l < "$out/l7-tiles/test.txt") test tiles, 24x24, 6 bands"

run=$out/l7-dino
echo "== DINO: make -f pipelines/dino.mk DATA=$out/l7-tiles RUN=$run EPOCHS=${DEMO_EPOCHS:-6}"
t0=$(date +%s)
make -s -f pipelines/dino.mk DATA="$out/l7-tiles" RUN="$run" EPOCHS="${DEMO_EPOCHS:-6}" KNN_EVERY=1 \
    > "$out/l7-dino.log" 2>&1 || { tail -20 "$out/l7-dino.log"; exit 1; }
echo "done in $(( $(date +%s) - t0 )) s; every command is in $run/commands.sh, e.g. epoch 1:"
grep -m1 "multicrop" "$run/commands.sh" | sed 's/^/    /' | cut -c1-200 || true
$py - "$run/summary.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
print(f"{'epoch':>5} {'steps':>5} {'loss':>7} {'teacher H':>9} {'20-NN top-1':>11}")
for e in s["epochs"]:
    k = f"{e['knn_top1']:.2f}" if "knn_top1" in e else ""
    print(f"{e['epoch']:5d} {e['steps']:5d} {e['loss']:7.3f} {e['teacher_entropy']:9.3f} {k:>11}")
print()
print("20-NN top-1 on the test tiles (chessboard split, 3 classes):")
print(f"  DINO teacher after {s['epochs'][-1]['steps']} steps  {s['knn_final_top1']:6.2f}%")
print(f"  same network at initialisation   {s['knn_init_top1']:6.2f}%")
print(f"  per-band mean/std features       {s['band_stats_top1']:6.2f}%")
PY
echo "report: $run/summary.json$( [ -f "$run/curves.png" ] && echo ", $run/curves.png")"
