#!/usr/bin/env bats
# Does DINO pretraining learn?  A short, seeded version of bench/learn.sh:
# a small ViT pretrained with pipelines/dino.mk on the synthetic texture set
# (pipelines/synthetic-textures.py), and the 20-NN top-1 of its teacher on
# the test tiles against the same network at initialisation.  The margin is
# one that a broken loss, a frozen teacher or a collapsed head cannot reach
# (bench/results-learn.md: lr 0 and teacher momentum 1 leave the k-NN at
# its initial value exactly; a collapsed head stops learning).

load helpers

# The synthetic set where the initial network's features are dominated by
# the tiles' illumination gain (a nuisance), and multicrop's all-band
# brightness jitter lets DINO learn to ignore it.
syn() {
    $PY "$ROOT/pipelines/synthetic-textures.py" "$TMP/syn" --seed 0 --train 60 --test 30 \
        --scales 16 4 2 > /dev/null
}

learn() {
    make -s -f "$ROOT/pipelines/dino.mk" BIN="$BIN" DATA="$TMP/syn" RUN="$TMP/run" \
        EMBED_DIM=48 DEPTH=2 HEADS=3 PATCH=8 OUT_DIM=256 HIDDEN_DIM=128 BOTTLENECK=32 \
        BATCH=24 LOCAL_CROPS=2 GLOBAL_SIZE=32 LOCAL_SIZE=16 GLOBAL_SCALE="0.8 1" LOCAL_SCALE="0.4 0.7" \
        AUG="--collapse-prob 0 0 0 --blur-prob 0 0 0 --solarize-prob 0 0 0 --ssr-prob 0 --jitter-prob 1 --jitter-bands all --brightness 0.8 --contrast 0" \
        BASELINE=0 KNN_K=20 "$@"
}

# init and final 20-NN top-1 of a run
top1() {
    $PY -c 'import json, sys; s = json.load(open(sys.argv[1])); print(s["knn_init_top1"], s["knn_final_top1"])' \
        "$TMP/run/summary.json"
}

@test "learn: DINO pretraining beats the network at initialisation by 5 points (synthetic set)" {
    syn
    run learn EPOCHS=6 KNN_EVERY=6
    assert_success
    read -r init final <<< "$(top1)"
    echo "20-NN top-1: initialisation $init, after DINO $final"
    $PY -c "import sys; sys.exit(not $final >= $init + 5)" || fail "init $init, DINO $final: margin < 5"
}
