#!/usr/bin/env bash
# tests/cli/one_rank.sh DEVICE [BIN]
#
# dino-step train through the distributed communicator with one rank
# (mpirun -np 1 ... --distributed yes: MPI's collectives with --device cpu,
# NCCL's with --device cuda), its gradients reduced after backward
# (--bucket 0) and in buckets during it (--bucket 1K), against the plain
# run on the same batches: student, teacher, Adam moments and center equal
# to 1e-6.  Run by dino-mpi.bats (cpu) and by make check-gpu (cuda).
# Exit 0 when they match, 1 when not, 77 with "skipped: why" when mpirun
# or the plugin is missing.
set -euo pipefail
device=${1:?usage: one_rank.sh DEVICE [BIN]}
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${2:-$root/bin}
plugin=$bin/../lib/geodino-$([ "$device" = cpu ] && echo mpi || echo nccl).so
command -v mpirun > /dev/null || { echo "skipped: mpirun not found"; exit 77; }
[ -e "$plugin" ] || { echo "skipped: no $plugin"; exit 77; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
py=/usr/bin/python3
data=$root/tests/data
export OMP_NUM_THREADS=1
opts=(--device "$device")
[ "$device" = cpu ] || opts+=(--precision fp32)

"$bin/tif-stats" "$data/L7_ETMs.tif" -o "$tmp/stats.mpt" > /dev/null
for _ in 1 2 3 4 5 6; do echo "$data/L7_ETMs.tif"; done > "$tmp/list.txt"
"$bin/multicrop" --stats "$tmp/stats.mpt" --list "$tmp/list.txt" --batch-size 2 --epochs 1 \
    --global-size 32 --local-size 16 --local-crops-number 2 --seed 1 --threads 1 -o "$tmp/b.mpt"
"$bin/dino-step" init --arch vit_tiny --depth 2 --embed-dim 32 --num-heads 2 --patch-size 8 \
    --img-size 32 --out-dim 64 --hidden-dim 64 --bottleneck-dim 32 --local-crops-number 2 \
    --iters-per-epoch 3 --epochs 10 --warmup-epochs 1 --stats "$tmp/stats.mpt" \
    --batch-size-per-gpu 2 --world-size 1 -o "$tmp/plain.mpt"
cp "$tmp/plain.mpt" "$tmp/after.mpt"
cp "$tmp/plain.mpt" "$tmp/bucketed.mpt"
"$bin/dino-step" train --ckpt "$tmp/plain.mpt" "${opts[@]}" "$tmp/b.mpt"
for run in "after 0" "bucketed 1K"; do
    read -r name bucket <<< "$run"
    timeout 120 mpirun --allow-run-as-root -np 1 -x OMP_NUM_THREADS=1 \
        -x ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0" \
        "$bin/dino-step" train --ckpt "$tmp/$name.mpt" --distributed yes --bucket "$bucket" \
        "${opts[@]}" "$tmp/b.mpt"
done
for name in after bucketed; do
    for role in student/ teacher/ adam_m/ adam_v/ center; do
        if ! $py "$root/tests/cli/dist_tool.py" close "$tmp/$name.mpt" "$tmp/plain.mpt" "$role" 1e-6 \
            > /dev/null; then
            echo "one_rank ($device): --bucket of '$name': $role differs from the plain run"
            exit 1
        fi
    done
done
step=$($py -c "import msgpack,sys; print(next(iter(msgpack.Unpacker(open(sys.argv[1],'rb'),raw=False,max_buffer_size=2**31)))['meta']['step'])" "$tmp/bucketed.mpt")
[ "$step" = 3 ] || { echo "one_rank ($device): step $step, not 3"; exit 1; }
echo "one_rank ($device): one rank through the collectives, after backward and in buckets, matches the plain run (3 steps)"
