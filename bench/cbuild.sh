#!/usr/bin/env bash
# bench/cbuild.sh SRC OUT: builds a C benchmark of bench/ against
# lib/libcommon.a (and lib/libgdcuda.a with the CUDA libraries when the
# build has the CUDA backend: backend.o then calls into it, even for the CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
make -j2 > /dev/null
mkdir -p "$(dirname "$2")"
libs=(lib/libcommon.a)
extra=()
if [ -e lib/libgdcuda.a ]; then
    nvcc=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
    cuda_home=$(dirname "$(dirname "$nvcc")")
    libs+=(lib/libgdcuda.a)
    extra=(-L"$cuda_home/lib64" -lcublas -lcudart -lstdc++ -Wl,-rpath,"$cuda_home/lib64")
fi
cc -O2 -std=c11 -D_GNU_SOURCE -fopenmp -Wall -Wextra -Werror -Ilibcommon -Ikernels "$1" \
    -Wl,--start-group "${libs[@]}" -Wl,--end-group "${extra[@]}" \
    -ltiff -lmsgpackc -lpng -lopenblas -lm -lpthread -fopenmp -o "$2"
