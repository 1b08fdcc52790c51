#!/usr/bin/env bash
# bench/knn-eval.sh [N_TRAIN] [N_TEST] [DIM] [REPEATS]
#
# knn-eval against the same classifier in numpy (tests/cli/features.py knn:
# float32 matmul through the same OpenBLAS, argpartition, exp-weighted
# votes) on the same features, in the same run.  Checks that both print the
# same accuracies, then prints median wall times and the ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
ntrain=${1:-20000}
ntest=${2:-5000}
dim=${3:-384}
repeats=${4:-3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
py=/usr/bin/python3

$py tests/cli/features.py make "$tmp/tr.mpt" "$tmp/te.mpt" --n-train "$ntrain" --n-test "$ntest" \
    --dim "$dim" --classes 100 --noise 4 --seed 7
bin/knn-eval --train "$tmp/tr.mpt" --test "$tmp/te.mpt" > "$tmp/ours.txt"
$py tests/cli/features.py knn "$tmp/tr.mpt" "$tmp/te.mpt" 10 20 100 200 > "$tmp/numpy.txt"
if ! diff "$tmp/ours.txt" "$tmp/numpy.txt" > /dev/null; then
    echo "accuracies differ:"; diff "$tmp/ours.txt" "$tmp/numpy.txt"; exit 1
fi

median() { sort -n | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
time_cmd() {
    for _ in $(seq "$repeats"); do
        local t0 t1
        t0=$(date +%s.%N); "$@" > /dev/null; t1=$(date +%s.%N)
        echo "$t1 - $t0" | bc -l
    done | median
}
cores=$(nproc)
ours1=$(time_cmd bin/knn-eval -j 1 --train "$tmp/tr.mpt" --test "$tmp/te.mpt")
oursN=$(time_cmd bin/knn-eval -j "$cores" --train "$tmp/tr.mpt" --test "$tmp/te.mpt")
np1=$(OPENBLAS_NUM_THREADS=1 time_cmd $py tests/cli/features.py knn "$tmp/tr.mpt" "$tmp/te.mpt" 10 20 100 200)
npN=$(time_cmd $py tests/cli/features.py knn "$tmp/tr.mpt" "$tmp/te.mpt" 10 20 100 200)
echo "same accuracies: $(head -1 "$tmp/ours.txt")"
echo "| train x test x dim | knn-eval -j 1 | numpy, 1 BLAS thread | ratio | knn-eval -j $cores | numpy, $cores BLAS threads | ratio |"
echo "|---|---|---|---|---|---|---|"
printf '| %d x %d x %d | %.3f s | %.3f s | %.2fx | %.3f s | %.3f s | %.2fx |\n' "$ntrain" "$ntest" "$dim" \
    "$ours1" "$np1" "$(echo "$np1 / $ours1" | bc -l)" "$oursN" "$npN" "$(echo "$npN / $oursN" | bc -l)"
