#!/usr/bin/env bash
# bench/paste-aug.sh: samples/s of paste-aug copy-paste and cutmix on one
# core, against the same operations in numpy (bench/paste_aug_numpy.py), in
# the same run, on the same synthetic samples:
#   - 512x512, 4 bands (SAR-like, SpaceNet 6 tiles), 4 classes
#   - 120x120, 10 bands (BigEarthNet-like patches), 10 classes
# paste-aug is timed as a whole process (decode, augment, encode to a pipe
# to /dev/null); numpy from decoding to encoding in memory, without the
# interpreter start-up.  Medians of REPEATS runs.  Under 2 minutes.
#   bench/paste-aug.sh [REPEATS]        (run `make` first)
set -euo pipefail
cd "$(dirname "$0")/.."
REPEATS=${1:-3}
PY=/usr/bin/python3
BIN=${GEODINO_BIN:-$PWD/bin}
NP=bench/paste_aug_numpy.py
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

median_c() {   # median seconds of REPEATS runs of a command
    local t=()
    for _ in $(seq "$REPEATS"); do
        local s e
        s=$(date +%s.%N)
        "$@" > /dev/null
        e=$(date +%s.%N)
        t+=("$(echo "$e - $s" | bc -l)")
    done
    printf '%s\n' "${t[@]}" | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'
}

printf '%-22s %-10s %6s %12s %12s %8s\n' case op samples "C samples/s" "np samples/s" ratio
run_case() {
    local name=$1 n=$2 c=$3 h=$4 w=$5 conf=$6
    local k
    k=$(echo "$conf" | tr ',' '\n' | wc -l)
    "$PY" "$NP" gen "$work/s$h-$c.mpt" "$n" "$c" "$h" "$w" "$k" 1
    "$PY" -c "
import msgpack, numpy as np
c = np.array([$conf], '<f8')
open('$work/bank.mpt','wb').write(msgpack.packb({'v':1,'kind':'bank','meta':{'momentum':0.999,'updates':0},
  'tensors':{'confidence':{'dtype':'<f8','shape':[len(c)],'data':c.tobytes()}}}))"
    for op in copy-paste cutmix; do
        local extra=()
        [ "$op" = copy-paste ] && extra=(--prob 1)
        local tc tn
        tc=$(median_c "$BIN/paste-aug" "$op" --bank "$work/bank.mpt" --input "$work/s$h-$c.mpt" \
            --threads 1 --quiet "${extra[@]}" -o -)
        tn=$("$PY" "$NP" "$op" "$work/s$h-$c.mpt" "$conf" "$REPEATS")
        awk -v n="$n" -v tc="$tc" -v tn="$tn" -v name="$name" -v op="$op" 'BEGIN {
            printf "%-22s %-10s %6d %12.1f %12.1f %7.1fx\n", name, op, n, n / tc, n / tn, tn / tc }'
    done
}

run_case "512x512x4 (SAR)" 10 4 512 512 0.9,0.4,0.6,0.2
run_case "120x120x10 (BEN)" 300 10 120 120 0.9,0.4,0.6,0.2,0.8,0.7,0.5,0.3,0.95,0.1
echo "paste-aug --threads 1; numpy $("$PY" -c 'import numpy; print(numpy.__version__)'); $(nproc --all) cores; medians of $REPEATS"
