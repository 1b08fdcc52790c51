#!/usr/bin/env bash
# bench/adapt.sh [SEED...]   (default: 0 1 2)
#
# Does Mutual Prototypical Adaptation help on a sensor shift?  For each
# seed and each shift strength (STRENGTHS, default "0.25 0.5 1"; seeds
# other than the first only at the first strength): the Landsat domain-shift
# set (pipelines/adapt-data.py --seed SEED --strength S), a tiny ViT at
# initialisation (dino-step init --seed SEED; bench/results-learn.md: short
# DINO runs do not beat it yet), and one pipelines/adapt.mk run: source-only,
# pseudo-label self-training (adapt --lambda-proto 0) and MPA (the issue's
# recipe: lambda 0.001, T 20, alpha 0.9, bank every 100, momentum 0.999),
# each as target-test mIoU; the first seed and strength once more with the
# backbone fine-tuned.  Then, on the first seed and strength, the
# prototype loss weight swept (LAMBDAS, default "0.01 0.1 1") from the same
# source model, pseudo-labels and bank.  Prints markdown rows; runs go to
# bench/out/adapt/ (kept).
#
# DMLP_ONLY=1 bench/adapt.sh [SEED]: only the dmlp head (mpa-adapt --head
# dmlp, 2 blocks) on the first seed and strength: train-source wall time
# against the plain head side by side (TIME_STEPS, default 30, each), then
# the whole pipelines/adapt.mk run with HEAD=dmlp as one more row.
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=("${@:-0}")
[ $# -gt 0 ] || seeds=(0 1 2)
strengths=(${STRENGTHS:-0.25 0.5 1})
lambdas=(${LAMBDAS:-0.01 0.1 1})
out=bench/out/adapt
py=/usr/bin/python3
mkdir -p "$out"

# make variables of the runs (see pipelines/adapt.mk)
VARS=(SRC_STEPS=${SRC_STEPS:-300} ADAPT_STEPS=${ADAPT_STEPS:-200} BATCH=8 LR=0.001)

miou() { $py -c 'import json,sys; print("%.4f" % json.load(open(sys.argv[1]))["miou"])' "$1"; }
ious() { $py -c 'import json,sys; print(" / ".join("%.3f" % v for v in json.load(open(sys.argv[1]))["iou"]))' "$1"; }

# the data set and the DINO checkpoint of one strength and seed, once
prepare() {
    local d=$1 st=$2 seed=$3
    [ -f "$d/summary.json" ] || $py pipelines/adapt-data.py "$d" --seed "$seed" --strength "$st" > /dev/null
    [ -f "$d/stats.mpt" ] || bin/tif-stats -q --list <(cut -d' ' -f1 "$d/src-train.txt") -o "$d/stats.mpt" > /dev/null
    [ -f "$d/dino.mpt" ] || bin/dino-step init --arch vit_tiny --patch-size 4 --img-size 24 --embed-dim 48 \
        --depth 3 --num-heads 3 --out-dim 64 --hidden-dim 64 --bottleneck-dim 32 --stats "$d/stats.mpt" \
        --iters-per-epoch 10 --seed "$seed" -o "$d/dino.mpt" > /dev/null
}

# one pipelines/adapt.mk run (extra make variables after RUN) and its table row, labelled LABEL
run_row() {
    local label=$1 st=$2 seed=$3 r=$4
    shift 4
    local d=$out/data-$st-$seed t0 t1 s t m
    t0=$(date +%s)
    make -s -f pipelines/adapt.mk DATA="$d" CKPT="$d/dino.mpt" RUN="$r" SEED="$seed" "$@" "${VARS[@]}" \
        > "$r.log" 2>&1 || { echo "bench/adapt: $r failed, see $r.log" >&2; exit 1; }
    t1=$(date +%s)
    s=$(miou "$r/eval-source.json") t=$(miou "$r/eval-selftrain.json") m=$(miou "$r/eval-mpa.json")
    echo "| $label | $seed | $s | $t | $m | $($py -c "print('%+.4f' % ($m - $s))") |" \
         "$($py -c "print('%+.4f' % ($m - $t))") | $(ious "$r/eval-source.json") ; $(ious "$r/eval-mpa.json") |" \
         "$(miou "$r/eval-source-src.json") | $((t1 - t0)) |"
}

# train-source wall seconds of one head (TIME_STEPS iterations, batch 8)
head_time() {
    local d=$1 tag=$2 t0 t1
    shift 2
    t0=$(date +%s.%N)
    bin/mpa-adapt train-source --ckpt "$d/dino.mpt" --num-classes 3 --list "$d/src-train.txt" \
        --steps "${TIME_STEPS:-30}" --batch-size 8 -q "$@" -o "$out/time-$tag.mpt"
    t1=$(date +%s.%N)
    $py -c "print('%.1f' % ($t1 - $t0))"
}

if [ "${DMLP_ONLY:-0}" = 1 ]; then
    st=${strengths[0]} seed=${seeds[0]}
    d=$out/data-$st-$seed
    prepare "$d" "$st" "$seed"
    echo "| head | train-source ${TIME_STEPS:-30} steps (s) | / plain |"
    echo "|---|---|---|"
    tp=$(head_time "$d" plain) td=$(head_time "$d" dmlp --head dmlp --dmlp-blocks 2)
    echo "| plain | $tp | 1.00 |"
    echo "| dmlp, 2 blocks | $td | $($py -c "print('%.2f' % ($td / $tp))") |"
    echo
    run_row "$st, --head dmlp (2 blocks)" "$st" "$seed" "$out/run-$st-$seed-dmlp" HEAD=dmlp DMLP_BLOCKS=2
    exit 0
fi

echo "| strength | seed | source-only | + self-training | + MPA | MPA - source-only | MPA - self-training | per-class IoU source-only / MPA (water / veg. / built) | source on source | time (s) |"
echo "|---|---|---|---|---|---|---|---|---|---|"
first=1
for st in "${strengths[@]}"; do
    for seed in "${seeds[@]}"; do
        [ $first = 1 ] || [ "$seed" = "${seeds[0]}" ] || continue
        d=$out/data-$st-$seed
        prepare "$d" "$st" "$seed"
        run_row "$st" "$st" "$seed" "$out/run-$st-$seed"
    done
    first=0
done

# the same recipe with the backbone fine-tuned (FINETUNE=1, lr x 0.1), first seed and strength
st=${strengths[0]} seed=${seeds[0]}
run_row "$st (fine-tuned)" "$st" "$seed" "$out/run-$st-$seed-finetune" FINETUNE=1

# the prototype weight, from the first run's source model, pseudo-labels and bank
st=${strengths[0]} seed=${seeds[0]}
d=$out/data-$st-$seed r=$out/run-$st-$seed
echo
echo "| lambda-proto | target mIoU | - self-training | last proto_target | last ce_target | command |"
echo "|---|---|---|---|---|---|"
for l in 0.001 "${lambdas[@]}"; do
    a=$r/sweep-$l
    if [ "$l" = 0.001 ]; then a=$r/mpa; else
        bin/mpa-adapt adapt --model "$r/source.mpt" --source "$d/src-train.txt" --target "$r/pl/list.txt" \
            --protos "$r/protos.mpt" --lambda-proto "$l" --steps "${ADAPT_STEPS:-200}" --batch-size 8 \
            --seed "$seed" --lr 0.001 --log "$a.jsonl" -q -o "$a.mpt"
        bin/mpa-adapt eval --model "$a.mpt" --list "$d/tgt-test.txt" -q -o "$r/eval-sweep-$l.json"
    fi
    e=$([ "$l" = 0.001 ] && echo "$r/eval-mpa.json" || echo "$r/eval-sweep-$l.json")
    log=$([ "$l" = 0.001 ] && echo "$r/log/mpa.jsonl" || echo "$a.jsonl")
    last=$(tail -1 "$log")
    echo "| $l | $(miou "$e") | $($py -c "print('%+.4f' % ($(miou "$e") - $(miou "$r/eval-selftrain.json")))") |" \
         "$($py -c "import json,sys; r=json.loads(sys.argv[1]); print('%.4f | %.4f' % (r['proto_target'], r['ce_target']))" "$last") |" \
         "\`mpa-adapt adapt ... --lambda-proto $l\` |"
done
