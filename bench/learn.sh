#!/usr/bin/env bash
# bench/learn.sh [SEED] [EXTRA MAKE VARIABLES...]
#
# Does DINO pretraining learn?  On the synthetic texture set
# (pipelines/synthetic-textures.py --seed SEED) and on the real Landsat
# land-cover tiles (pipelines/l7-landcover.py), one pipelines/dino.mk run
# each, and the 20-NN top-1 of the teacher after pretraining against the same
# network at initialisation (epoch 0 of the same run) and against the
# band-statistics baseline.  Prints one markdown row per set with the steps,
# the wall time and the make command that reproduces it.  Runs go to
# bench/out/learn/ (kept, with their commands.sh, summary.json, curves.png).
set -euo pipefail
cd "$(dirname "$0")/.."
seed=${1:-0}; shift || true
out=bench/out/learn
mkdir -p "$out"
py=/usr/bin/python3
# the synthetic set with textures of distinct scales (bench/results-learn.md)
[ -f "$out/syn-$seed/train.txt" ] ||
    $py pipelines/synthetic-textures.py "$out/syn-$seed" --seed "$seed" --scales 16 4 2 > /dev/null
# one writer for the shared Landsat set when seeds run in parallel
( flock 9; [ -f "$out/l7/train.txt" ] || $py pipelines/l7-landcover.py "$out/l7" > /dev/null ) 9> "$out/.l7.lock"

# The configurations (see bench/results-learn.md for why these).
# Synthetic: mild crops, no rotation or blur, and a strong all-band brightness
# jitter, so that the tiles' gain is not shared by the views of a tile.
SYN=(PATCH=8 GLOBAL_SIZE=32 LOCAL_SIZE=16 "GLOBAL_SCALE=0.8 1" "LOCAL_SCALE=0.4 0.7"
     "AUG=--collapse-prob 0 0 0 --blur-prob 0 0 0 --solarize-prob 0 0 0 --ssr-prob 0 --jitter-prob 1 --jitter-bands all --brightness 0.8 --contrast 0"
     EPOCHS=${SYN_EPOCHS:-6} KNN_EVERY=2 SEED="$seed")
# Landsat: pipelines/dino.mk's defaults (all-band jitter)
L7=(PATCH=4 GLOBAL_SIZE=24 LOCAL_SIZE=12 EPOCHS=${L7_EPOCHS:-6} KNN_EVERY=2 SEED="$seed")

echo "| set | seed | steps | time (s) | init top-1 | DINO top-1 | band-stats top-1 | DINO - init | command |"
echo "|---|---|---|---|---|---|---|---|---|"
for set in syn l7; do
    if [ $set = syn ]; then data=$out/syn-$seed; vars=("${SYN[@]}"); else data=$out/l7; vars=("${L7[@]}"); fi
    run=$out/$set-s$seed
    rm -rf "$run"
    cmd=(make -s -f pipelines/dino.mk DATA="$data" RUN="$run" "${vars[@]}" "$@")
    t0=$(date +%s.%N)
    "${cmd[@]}" > "$run.log" 2>&1 || { echo "bench/learn: $set failed, see $run.log" >&2; exit 1; }
    t1=$(date +%s.%N)
    $py - "$run/summary.json" "$set" "$seed" "$t0" "$t1" "$(printf '%q ' "${cmd[@]}")" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
name, seed, t0, t1, cmd = sys.argv[2:7]
steps = s["epochs"][-1]["steps"]
i, f, b = s["knn_init_top1"], s["knn_final_top1"], s.get("band_stats_top1")
print(f"| {name} | {seed} | {steps} | {float(t1) - float(t0):.0f} | {i:.1f} | {f:.1f} | {b:.1f} | {f - i:+.1f} | `{cmd.strip()}` |")
PY
done
