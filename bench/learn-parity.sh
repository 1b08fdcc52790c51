#!/usr/bin/env bash
# bench/learn-parity.sh [SEED] [EPOCHS] [MULTICROP OPTIONS...]
#
# Is a DINO run of dino-step the DINO run PyTorch makes?  One checkpoint
# from dino-step init (the synthetic set's configuration of bench/learn.sh,
# 28 steps per epoch), one stream of multicrop batches saved to a file (the
# seeds pipelines/dino.mk uses, one per epoch), then dino-step train and
# bench/learn_torch.py (PyTorch, main_dino.py's recipe) on that same stream
# from that same start.  Prints the largest relative difference of the
# per-step losses and teacher entropies, the worst teacher tensor, and the
# 20-NN top-1 (dino-step embed + knn-eval) of the start and of both teachers.
# Needs /work/venv-torch/bin/python (torch, timm); not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."
seed=${1:-0}; epochs=${2:-6}; shift 2 || shift $#
TORCH_PY=${TORCH_PY:-/work/venv-torch/bin/python}
py=/usr/bin/python3
out=bench/out/learn-parity
# the synthetic set with its default textures, and (below) the views of the
# previous attempt (multicrop's per-band jitter): the run that lost to
# initialisation, which is what this comparison was for
data=$out/syn-$seed
mkdir -p "$out"
[ -f "$data/train.txt" ] || $py pipelines/synthetic-textures.py "$data" --seed "$seed" > /dev/null
AUG=(--collapse-prob 0 0 0 --blur-prob 0.5 0.1 0.2 --blur-sigma 0.1 1 --solarize-prob 0 0 0
     --ssr-prob 1 --ssr-rotate 180 --ssr-shift 0.1 --ssr-scale 0 "$@")
B=32; iters=$(( $(grep -c . "$data/train.txt") / B )); steps=$(( iters * epochs ))

cut -d' ' -f1 "$data/train.txt" > "$out/paths.txt"
bin/tif-stats -q -p 2,98 --list "$out/paths.txt" -o "$out/stats.mpt" > /dev/null
bin/dino-step init --force --stats "$out/stats.mpt" --arch vit_tiny --embed-dim 96 --depth 3 \
    --num-heads 3 --patch-size 8 --img-size 32 --out-dim 256 --hidden-dim 256 --bottleneck-dim 64 \
    --drop-path-rate 0 --epochs "$epochs" --warmup-epochs 1 --iters-per-epoch "$iters" \
    --batch-size-per-gpu $B --lr 0.002 --min-lr 1e-5 --momentum-teacher 0.99 --teacher-temp 0.04 \
    --warmup-teacher-temp 0.04 --warmup-teacher-temp-epochs 1 --weight-decay 0.04 \
    --weight-decay-end 0.4 --freeze-last-layer 1 --local-crops-number 4 --global-crops-scale 0.5 1 \
    --local-crops-scale 0.2 0.5 --seed "$seed" -o "$out/init.mpt"
for e in $(seq 1 "$epochs"); do
    bin/multicrop --quiet --stats "$out/stats.mpt" --list "$out/paths.txt" --epochs 1 --batch-size $B \
        --drop-last --seed $(( seed * 1000 + e )) --global-size 32 --local-size 16 \
        --local-crops-number 4 --global-crops-scale 0.5 1 --local-crops-scale 0.2 0.5 "${AUG[@]}"
done > "$out/stream.mpt"

cp "$out/init.mpt" "$out/c.mpt"
rm -f "$out/c.jsonl"
t0=$(date +%s.%N)
bin/dino-step train --quiet --ckpt "$out/c.mpt" --steps "$steps" --save-every 0 \
    --log "$out/c.jsonl" --log-every 1 < "$out/stream.mpt"
t1=$(date +%s.%N)
"$TORCH_PY" bench/learn_torch.py "$out/init.mpt" "$out/stream.mpt" "$steps" "$out/t.mpt" \
    "$out/t.jsonl" 2> >(grep -v -i -e 'weight_norm' -e 'WeightNorm' >&2)
t2=$(date +%s.%N)
rm -f "$out/stream.mpt"
echo "steps $steps; dino-step $(echo "$t1 - $t0" | bc) s, PyTorch (1 thread) $(echo "$t2 - $t1" | bc) s"

$py - "$out" <<'PY'
import json, sys
import msgpack, numpy as np
out = sys.argv[1]
c = [json.loads(l) for l in open(out + "/c.jsonl")]
t = [json.loads(l) for l in open(out + "/t.jsonl")]
assert len(c) == len(t), (len(c), len(t))
dl = max(abs(a["loss"] - b["loss"]) / abs(b["loss"]) for a, b in zip(c, t))
dh = max(abs(a["teacher_entropy"] - b["teacher_entropy"]) for a, b in zip(c, t))
print("per-step loss: max relative difference %.2e; teacher entropy: max difference %.2e" % (dl, dh))
for a, b in zip(c, t):
    if a["step"] % 28 == 0:
        print("  step %3d  loss %.4f / %.4f  H %.3f / %.3f  Hmean %.3f / %.3f" % (
            a["step"], a["loss"], b["loss"], a["teacher_entropy"], b["teacher_entropy"],
            a["teacher_mean_entropy"], b["teacher_mean_entropy"]))
def teacher(p):
    m = next(iter(msgpack.Unpacker(open(p, "rb"), raw=False, max_buffer_size=2**31)))
    return {k: np.frombuffer(v["data"], dtype=v["dtype"]).astype(np.float64)
            for k, v in m["tensors"].items() if k.startswith("teacher/")}
a, b = teacher(out + "/c.mpt"), teacher(out + "/t.mpt")
w = max((np.linalg.norm(a[k] - b[k]) / max(np.linalg.norm(b[k]), 1e-30), k) for k in b)
print("worst teacher tensor: relative L2 %.2e (%s)" % w)
PY
for w in init c t; do
    bin/dino-step embed --ckpt "$out/$w.mpt" --list "$data/train.txt" -o "$out/tr.mpt"
    bin/dino-step embed --ckpt "$out/$w.mpt" --list "$data/test.txt" -o "$out/te.mpt"
    top1=$(bin/knn-eval --train "$out/tr.mpt" --test "$out/te.mpt" -k 20 --json - |
           $py -c 'import json,sys; print("%.2f" % json.load(sys.stdin)["results"][0]["top1"])')
    case $w in init) name="initialisation";; c) name="dino-step teacher";; t) name="PyTorch teacher";; esac
    echo "20-NN top-1, $name: $top1"
done
rm -f "$out/tr.mpt" "$out/te.mpt"
