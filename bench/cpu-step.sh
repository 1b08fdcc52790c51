#!/usr/bin/env bash
# bench/cpu-step.sh [STEPS] [ROUNDS] [IN_CHANS] [OUT_DIM]
#
# One DINO training step of vit_tiny/16 (2 x 96 px + 4 x 48 px crops,
# batch 8, DINO head out_dim 65536, IN_CHANS bands, default 10) on the CPU
# backend: time per step and the share of it spent in GEMM (and in
# attention, which is per-head GEMMs plus a softmax).  When TORCH_PYTHON
# names a Python with torch and timm, the same step in PyTorch (timm ViT +
# the DINO head, loss and step of tests/reference/make_fixture.py) is the
# peer, with the same thread count.  Needs `make` first (lib/libcommon.a).
#
# Shared machines are noisy, so the two alternate: ROUNDS rounds, each
# running geodino then PyTorch under libgomp's default wait policy (idle
# threads spin between parallel regions) and then both under
# OMP_WAIT_POLICY=passive (where vCPUs are SMT siblings or oversubscribed,
# a spinning thread takes the core from the one doing the work).
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-4}
rounds=${2:-3}
chans=${3:-10}
outdim=${4:-65536}
mkdir -p bench/out
cc -O2 -std=c11 -D_GNU_SOURCE -fopenmp -Ilibcommon -Ikernels bench/cpu-step.c lib/libcommon.a \
    -ltiff -lmsgpackc -lpng -lopenblas -lm -lpthread -fopenmp -o bench/out/cpu-step
threads=${OMP_NUM_THREADS:-$(nproc)}
echo "# $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $threads threads"
for r in $(seq "$rounds"); do
    for policy in default passive; do
        if [ $policy = default ]; then run=(env -u OMP_WAIT_POLICY); else run=(env OMP_WAIT_POLICY=passive); fi
        echo "== round $r, OMP_WAIT_POLICY $policy: geodino"
        "${run[@]}" OMP_NUM_THREADS="$threads" bench/out/cpu-step "$steps" "$chans" "$outdim"
        if [ -n "${TORCH_PYTHON:-}" ]; then
            echo "== round $r, OMP_WAIT_POLICY $policy: PyTorch"
            "${run[@]}" OMP_NUM_THREADS="$threads" PYTHONWARNINGS=ignore "$TORCH_PYTHON" \
                bench/cpu-step.py "$steps" "$chans" "$outdim" "$threads" 2>&1 | grep -v WeightNorm
        fi
    done
done
