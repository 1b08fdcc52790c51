#!/usr/bin/env bash
# bench/mpi.sh [STEPS] [BATCH] [GLOBAL] [LOCAL]
#
# Data-parallel dino-step on this box's CPU with 2 MPI ranks: the volume of
# the per-step all-reduce for vit_small/16 and vit_small/8 (parameters of
# the whole student, backbone + DINO head with out_dim 65536, and the
# center), the median time of an in-place MPI_Allreduce of that many floats
# (bench/mpi_allreduce.c), and the training step of vit_small/16 with 2
# ranks next to the same per-rank batch in one process, in the same run,
# with the gradient all-reduce after backward and in buckets during it.
# Step times come from the --log lines of steps 2..STEPS (the median over
# both rounds of a setting).  Markdown out.
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-5}
batch=${2:-2}
gsize=${3:-64}
lsize=${4:-32}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
py=/usr/bin/python3
mpi=(mpirun --oversubscribe --allow-run-as-root -np 2 -x OMP_NUM_THREADS=1)
export OMP_NUM_THREADS=1

bin/tif-stats tests/data/L7_ETMs.tif -o "$tmp/stats.mpt" > /dev/null
for i in $(seq $((2 * steps * batch))); do echo tests/data/L7_ETMs.tif; done > "$tmp/list.txt"
for r in 0 1; do
    bin/multicrop --stats "$tmp/stats.mpt" --list "$tmp/list.txt" --batch-size "$batch" \
        --global-size "$gsize" --local-size "$lsize" --local-crops-number 2 --rank $r --world 2 \
        --drop-last --threads 1 -o "$tmp/shard$r.mpt"
done
mpicc -O2 bench/mpi_allreduce.c -o "$tmp/allreduce"

init() {
    bin/dino-step init --arch vit_small --stats "$tmp/stats.mpt" --local-crops-number 2 \
        --img-size "$gsize" --iters-per-epoch 100 --batch-size-per-gpu "$batch" "$@"
}
# floats reduced per step: the gradient buffer (every student tensor) + center
floats() {
    $py - "$1" <<'PY'
import sys, msgpack
m = next(iter(msgpack.Unpacker(open(sys.argv[1], "rb"), raw=False, max_buffer_size=2**32)))
n = sum(len(t["data"]) // 4 for k, t in m["tensors"].items() if k.startswith("student/"))
print(n, len(m["tensors"]["center"]["data"]) // 4)
PY
}
# median seconds per step of steps 2.. of the logs; $1: samples per step
# over all ranks (samples_per_s counts every rank's), then the logs
step_s() {
    $py - "$@" <<'PY'
import sys, json, statistics
rows = [r for p in sys.argv[2:] for r in [json.loads(l) for l in open(p)][1:]]
print("%.4f" % statistics.median(int(sys.argv[1]) / r["samples_per_s"] for r in rows))
PY
}

echo "| model (DINO's: 224 px, 3 bands, out_dim 65536) | parameters | + center | MB per all-reduce | MPI_Allreduce, 2 ranks (s) |"
echo "|---|---|---|---|---|"
for p in 16 8; do
    bin/dino-step init --arch vit_small --patch-size $p --iters-per-epoch 1 -o "$tmp/v$p.mpt"
    read -r n k < <(floats "$tmp/v$p.mpt")
    rm -f "$tmp/v$p.mpt"
    t=$("${mpi[@]}" "$tmp/allreduce" $((n + k)) 7)
    echo "| vit_small/$p | $n | $k | $(( (n + k) * 4 / 1000000 )) | $t |"
done
init --patch-size 16 --world-size 2 -o "$tmp/two.mpt"
read -r n k < <(floats "$tmp/two.mpt")
ar16=$("${mpi[@]}" "$tmp/allreduce" $((n + k)) 7)
echo "| vit_small/16 as trained below (64 px, 6 bands) | $n | $k | $(( (n + k) * 4 / 1000000 )) | $ar16 |"

init --patch-size 16 -o "$tmp/one.mpt"
bin/dino-step train --ckpt "$tmp/one.mpt" --log "$tmp/one.jsonl" --log-every 1 --steps "$steps" \
    --save-every 0 "$tmp/shard0.mpt"
# 2 ranks, the all-reduce after backward (--bucket 0) and in 25 MB buckets
# during it (the GPU default), alternated twice so that drift in the box's load
# falls on both
for round in 1 2; do
    for b in 0 25M; do
        cp "$tmp/two.mpt" "$tmp/run.mpt"
        "${mpi[@]}" bin/dino-step train --ckpt "$tmp/run.mpt" --log "$tmp/two-$b-$round.jsonl" \
            --log-every 1 --steps "$steps" --save-every 0 --check-every 0 --bucket "$b" \
            "$tmp/shard%r.mpt"
    done
done
one=$(step_s "$batch" "$tmp/one.jsonl")
after=$(step_s $((2 * batch)) "$tmp"/two-0-?.jsonl)
bucketed=$(step_s $((2 * batch)) "$tmp"/two-25M-?.jsonl)
echo
echo "| vit_small/16, $batch samples per rank, ${gsize}/${lsize} px | s per step |"
echo "|---|---|"
echo "| 1 process | $one |"
echo "| 2 ranks (MPI, oversubscribed on this box's cores), all-reduce after backward (--bucket 0) | $after |"
echo "| 2 ranks, 25 MB buckets started during backward (--bucket 25M, the GPU default) | $bucketed |"
echo "| bucketed / after | $($py -c "print('%.3f' % ($bucketed / $after))") |"
echo "| all-reduce alone, as a share of the 2-rank step (after backward) | $($py -c "print('%.1f%%' % (100 * $ar16 / $after))") |"
echo "| (2-rank step - 1-process step) / 2-rank step (after backward) | $($py -c "print('%.1f%%' % (100 * ($after - $one) / $after))") |"
