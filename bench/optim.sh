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
bench/cbuild.sh bench/optim.c bench/out/optim
echo "| backend | floats | tensors | adamw per tensor + ema (s) | adamw_ema (s) | ratio |"
echo "|---|---|---|---|---|---|"
bench/out/optim "$device" "$rounds"
