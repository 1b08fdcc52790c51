#!/usr/bin/env bash
# bench/optim.sh [ROUNDS] [DEVICE]
#
# The optimizer part of the DINO step (AdamW on every tensor of vit_small/16
# + DINO head, then the teacher EMA): separate ops against the fused
# adamw_ema, alternating in one run (bench/optim.c).  DEVICE: cpu (default)
# or cuda on the GPU machine.  Markdown out.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-9}
device=${2:-cpu}
make -j2 > /dev/null
mkdir -p bench/out
libs=(lib/libcommon.a)
extra=()
if [ -e lib/libgdcuda.a ]; then    # backend.o then calls into it, even for the CPU
    nvcc=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
    cuda_home=$(dirname "$(dirname "$nvcc")")
    libs+=(lib/libgdcuda.a)
    extra=(-L"$cuda_home/lib64" -lcublas -lcudart -lstdc++ -Wl,-rpath,"$cuda_home/lib64")
fi
cc -O2 -std=c11 -D_GNU_SOURCE -fopenmp -Ilibcommon -Ikernels bench/optim.c \
    -Wl,--start-group "${libs[@]}" -Wl,--end-group "${extra[@]}" \
    -ltiff -lmsgpackc -lpng -lopenblas -lm -lpthread -fopenmp -o bench/out/optim
echo "| backend | floats | tensors | adamw per tensor + ema (s) | adamw_ema (s) | ratio |"
echo "|---|---|---|---|---|---|"
bench/out/optim "$device" "$rounds"
