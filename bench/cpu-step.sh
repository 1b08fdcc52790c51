#!/usr/bin/env bash
# bench/cpu-step.sh [STEPS] [IN_CHANS] [OUT_DIM]
#
# One DINO training step of vit_tiny/16 (2 x 96 px + 4 x 48 px crops,
# batch 8, DINO head out_dim 65536) on the CPU backend: median time per
# step and the share of it spent in GEMM (and in attention, which is
# per-head GEMMs plus a softmax).  When TORCH_PYTHON names a Python with
# torch and timm, the same step in PyTorch (timm ViT + the DINO head, loss
# and step of tests/reference/make_fixture.py) runs side by side, with the
# same thread count, as the peer.  Needs `make` first (lib/libcommon.a).
#
# geodino runs twice: with libgomp's default wait policy (idle threads spin
# between parallel regions) and with OMP_WAIT_POLICY=passive; where the
# vCPUs are SMT siblings or oversubscribed, a spinning thread takes the
# core from the one doing the work.
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-5}
chans=${2:-10}
outdim=${3:-65536}
mkdir -p bench/out
cc -O2 -std=c11 -D_GNU_SOURCE -fopenmp -Ilibcommon -Ikernels bench/cpu-step.c lib/libcommon.a \
    -ltiff -lmsgpackc -lpng -lopenblas -lm -lpthread -fopenmp -o bench/out/cpu-step
threads=${OMP_NUM_THREADS:-$(nproc)}
echo "== geodino CPU backend ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))"
echo "-- OMP_WAIT_POLICY default"
env -u OMP_WAIT_POLICY OMP_NUM_THREADS=$threads bench/out/cpu-step "$steps" "$chans" "$outdim"
echo "-- OMP_WAIT_POLICY=passive"
OMP_WAIT_POLICY=passive OMP_NUM_THREADS=$threads bench/out/cpu-step "$steps" "$chans" "$outdim"
if [ -n "${TORCH_PYTHON:-}" ]; then
    echo "== PyTorch peer"
    for policy in default passive; do
        echo "-- OMP_WAIT_POLICY $policy"
        if [ $policy = default ]; then
            env -u OMP_WAIT_POLICY OMP_NUM_THREADS=$threads "$TORCH_PYTHON" bench/cpu-step.py \
                "$steps" "$chans" "$outdim" "$threads" 2>&1 | grep -v -i warn
        else
            OMP_WAIT_POLICY=passive OMP_NUM_THREADS=$threads "$TORCH_PYTHON" bench/cpu-step.py \
                "$steps" "$chans" "$outdim" "$threads" 2>&1 | grep -v -i warn
        fi
    done
fi
