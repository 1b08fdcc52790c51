#!/usr/bin/env bash
# bench/stage.sh [BATCH] [ROUNDS] [DEVICE]
#
# The host side of feeding one batch of the Sentinel-2 recipe to the
# trainer (views_fill, bench/stage.c) with 1 OpenMP thread and with all of
# them, in one run; on the GPU machine DEVICE=cuda adds the upload from
# page-locked memory.  Markdown out.
set -euo pipefail
cd "$(dirname "$0")/.."
batch=${1:-32}
rounds=${2:-9}
device=${3:-cpu}
bench/cbuild.sh bench/stage.c bench/out/stage
echo "| backend | batch | ms per batch | GB/s of float32 views | threads |"
echo "|---|---|---|---|---|"
for th in 1 "$(nproc)"; do
    OMP_NUM_THREADS=$th bench/out/stage "$device" "$batch" "$rounds" | sed "s/\$/ $th |/"
done
