#!/usr/bin/env bash
# bench/dino-step.sh [STEPS] [BATCH] [ARCH] [PATCH] [OUT_DIM] [ROUNDS]
#
# dino-step on the CPU backend: samples/s of a ViT with multicrop's s2
# recipe (2 x 120 px global + 6 x 56 px local crops of the bundled Landsat
# scene) at a small batch, and the overhead of serve (one producer on the
# Unix socket) over train (the same batches from a file), alternating
# train and serve rounds.  Samples/s are taken from the --log lines of
# steps 2..STEPS (the first step pays for allocation) and the medians over
# ROUNDS are printed as a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-6}
batch=${2:-8}
arch=${3:-vit_tiny}
patch=${4:-8}
outdim=${5:-65536}
rounds=${6:-3}
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$tmp"' EXIT
py=/usr/bin/python3

bin/tif-stats tests/data/L7_ETMs.tif -o "$tmp/stats.mpt" > /dev/null
for i in $(seq $((steps * batch))); do echo tests/data/L7_ETMs.tif; done > "$tmp/list.txt"
bin/multicrop --recipe s2 --stats "$tmp/stats.mpt" --list "$tmp/list.txt" --batch-size "$batch" \
    --drop-last -o "$tmp/b.mpt"
bin/dino-step init --arch "$arch" --patch-size "$patch" --out-dim "$outdim" --img-size 120 \
    --batch-size-per-gpu "$batch" --local-crops-number 6 --stats "$tmp/stats.mpt" \
    --iters-per-epoch 100 -o "$tmp/c0.mpt"

# mean samples/s of log lines 2..
rate() { $py -c "
import json, sys
r = [json.loads(l)['samples_per_s'] for l in open(sys.argv[1])][1:]
print('%.3f' % (sum(r) / len(r)))" "$1"; }
median() { sort -n | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
now() { date +%s.%N; }

for r in $(seq "$rounds"); do
    # train: batches from a file
    cp "$tmp/c0.mpt" "$tmp/t.mpt"; rm -f "$tmp/t.log"
    t0=$(now)
    bin/dino-step train --ckpt "$tmp/t.mpt" --save-every 0 --log "$tmp/t.log" --log-every 1 "$tmp/b.mpt"
    t1=$(now)
    echo "$(rate "$tmp/t.log") $(echo "$t1 - $t0" | bc -l)" >> "$tmp/train.txt"
    # serve: the same batches from one producer on the socket
    cp "$tmp/c0.mpt" "$tmp/s.mpt"; rm -f "$tmp/s.log" "$tmp/sock"
    t0=$(now)
    bin/dino-step serve --ckpt "$tmp/s.mpt" --socket "$tmp/sock" --save-every 0 --log "$tmp/s.log" \
        --log-every 1 --steps "$steps" &
    srv=$!
    until [ -S "$tmp/sock" ]; do sleep 0.01; done
    $py tests/cli/dino_tool.py send "$tmp/sock" "$tmp/b.mpt" > /dev/null || true
    wait $srv
    t1=$(now)
    echo "$(rate "$tmp/s.log") $(echo "$t1 - $t0" | bc -l)" >> "$tmp/serve.txt"
    cmp "$tmp/t.mpt" "$tmp/s.mpt" || { echo "serve and train checkpoints differ"; exit 1; }
done
tr_rate=$(cut -d' ' -f1 "$tmp/train.txt" | median)
sv_rate=$(cut -d' ' -f1 "$tmp/serve.txt" | median)
tr_wall=$(cut -d' ' -f2 "$tmp/train.txt" | median)
sv_wall=$(cut -d' ' -f2 "$tmp/serve.txt" | median)
echo "same checkpoint from train and serve in every round"
echo "| model | batch | steps | train samples/s | serve samples/s | serve overhead | train wall | serve wall |"
echo "|---|---|---|---|---|---|---|---|"
printf "| %s/%s out_dim %s | %s | %s | %.2f | %.2f | %.1f%% | %.2f s | %.2f s |\n" "$arch" "$patch" \
    "$outdim" "$batch" "$steps" "$tr_rate" "$sv_rate" \
    "$(echo "($tr_rate - $sv_rate) / $tr_rate * 100" | bc -l)" "$tr_wall" "$sv_wall"
