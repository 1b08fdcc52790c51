#!/usr/bin/env bash
# bench/gpu-step.sh [STEPS] [BATCH] [ROUNDS]
#
# On the GPU machine: the DINO step of issue 6's two recipes on the CUDA
# backend against PyTorch on the same card, in the same run.
#   1. FLOPs per image of each recipe (bench/gpu_flops.py) and the card's
#      measured bf16 GEMM rate (torch.matmul, 8192^3), for model FLOP
#      utilisation = images/s x FLOPs/image / that rate;
#   2. the step alone (views in GPU memory): bench/gpu-step.c on
#      --device cuda in bf16, tf32 and fp32, then the PyTorch peer
#      (bench/gpu_step_torch.py: timm ViT + DINO head, loss, AdamW, EMA
#      with bf16 autocast), eager and torch.compile, alternating for
#      ROUNDS rounds;
#   3. the whole path: multicrop | dino-step train --device cuda on the
#      bundled Landsat scene (bands repeated or picked to the recipe's
#      count), images/s from dino-step's --log (steps 3.. of each run).
# TORCH_PYTHON names a Python with torch (CUDA) and timm (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-20}
batch=${2:-64}
rounds=${3:-2}
torch_py=${TORCH_PYTHON:-python3}
py=/usr/bin/python3
nvidia-smi -L || { echo "gpu-step: no GPU here" >&2; exit 1; }
make -j"$(nproc)" > /dev/null
nvcc=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
cuda_home=$(dirname "$(dirname "$nvcc")")
mkdir -p bench/out
cc -O2 -std=c11 -D_GNU_SOURCE -fopenmp -Ilibcommon -Ikernels bench/gpu-step.c \
    -Wl,--start-group lib/libcommon.a lib/libgdcuda.a -Wl,--end-group \
    -L"$cuda_home/lib64" -lcublas -lcudart -lstdc++ -Wl,-rpath,"$cuda_home/lib64" \
    -ltiff -lmsgpackc -lpng -lopenblas -lm -lpthread -fopenmp -o bench/out/gpu-step
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "# $(date -u +%Y-%m-%dT%H:%MZ), $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader), batch $batch, $steps timed steps"
$py bench/gpu_flops.py
"$torch_py" bench/gpu_step_torch.py gemm 8192

# name patch bands global local nlocal multicrop-recipe bands-spec
recipes=("imagenet 16 3 224 96 10 dino 3,2,1"
         "s2 8 10 120 56 6 s2 1,2,3,4,5,6,1,2,3,4")
for rec in "${recipes[@]}"; do
    read -r name patch bands g l nl mrecipe bspec <<< "$rec"
    echo "== recipe $name: step alone"
    for r in $(seq "$rounds"); do
        for prec in bf16 tf32 fp32; do
            bench/out/gpu-step cuda "$prec" vit_small "$patch" "$bands" "$g" "$l" "$nl" "$batch" "$steps"
        done
        for mode in eager compile; do
            PYTHONWARNINGS=ignore "$torch_py" bench/gpu_step_torch.py step "$patch" "$bands" "$g" \
                "$l" "$nl" "$batch" "$steps" "$mode" 2>&1 | grep -v WeightNorm
        done
    done
    echo "== recipe $name: the whole path, multicrop | dino-step train --device cuda"
    bin/tif-stats tests/data/L7_ETMs.tif --bands "$bspec" -o "$tmp/stats.mpt" > /dev/null
    for i in $(seq $(((steps + 2) * batch))); do echo tests/data/L7_ETMs.tif; done > "$tmp/list.txt"
    for r in $(seq "$rounds"); do
        bin/dino-step init --arch vit_small --patch-size "$patch" --out-dim 65536 --img-size "$g" \
            --batch-size-per-gpu "$batch" --local-crops-number "$nl" --stats "$tmp/stats.mpt" \
            --iters-per-epoch 1000 --force -o "$tmp/c.mpt"
        rm -f "$tmp/log.jsonl"
        bin/multicrop --recipe "$mrecipe" --local-crops-number "$nl" --stats "$tmp/stats.mpt" \
            --bands "$bspec" --list "$tmp/list.txt" --batch-size "$batch" --drop-last --quiet \
            | bin/dino-step train --ckpt "$tmp/c.mpt" --device cuda --log "$tmp/log.jsonl" \
                --log-every 1 --save-every 0 --quiet
        $py -c "
import json, sys
r = [json.loads(l)['samples_per_s'] for l in open(sys.argv[1])][2:]
r.sort()
print('geodino whole path $name (multicrop | dino-step train, auto precision): %.1f images/s (median of %d steps)' % (r[len(r) // 2], len(r)))" "$tmp/log.jsonl"
    done
done
