#!/usr/bin/env bats
# pipelines/dino.mk: a whole run as make targets, resumable epoch by epoch,
# with its configuration and commands in the run directory.

load helpers

# A tiny model on a tiny synthetic set: seconds, also under ASan.
tiny() {
    make -s -f "$ROOT/pipelines/dino.mk" BIN="$BIN" DATA="$TMP/syn" RUN="$TMP/run" \
        EMBED_DIM=32 DEPTH=1 HEADS=2 PATCH=8 OUT_DIM=64 HIDDEN_DIM=64 BOTTLENECK=16 \
        BATCH=16 LOCAL_CROPS=2 GLOBAL_SIZE=16 LOCAL_SIZE=8 KNN_EVERY=1 KNN_K="5 10" "$@"
}

@test "dino.mk: a run, its files, a no-op rerun, and a refused change of configuration" {
    $PY "$ROOT/pipelines/synthetic-textures.py" "$TMP/syn" --seed 1 --train 6 --test 4 --size 16 > /dev/null
    run tiny EPOCHS=2
    assert_success
    for f in config.mk commands.sh stats.mpt ckpt/epoch-000.mpt ckpt/epoch-001.mpt ckpt/epoch-002.mpt \
             log/epoch-001.jsonl log/epoch-002.jsonl knn/epoch-000.json knn/epoch-001.json \
             knn/epoch-002.json knn/band-stats.json summary.json curves.tsv; do
        [ -s "$TMP/run/$f" ] || { echo "missing $f"; return 1; }
    done
    ! ls "$TMP/run/ckpt/"*.tmp 2> /dev/null
    # 36 tiles, batch 16: 2 steps per epoch
    run $PY - "$TMP/run/summary.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
print([e["steps"] for e in s["epochs"]], sorted(s["knn"]), s["config"]["EPOCHS"],
      0 <= s["knn_init_top1"] <= 100, 0 <= s["band_stats_top1"] <= 100)
PY
    assert_output "[2, 4] ['000', '001', '002'] 2 True True"
    grep -q 'dino-step train' "$TMP/run/commands.sh"
    grep -q 'knn-eval' "$TMP/run/commands.sh"
    grep -qx 'EPOCHS = 2' "$TMP/run/config.mk"
    # the log of epoch 2 continues epoch 1's steps
    [ "$(tail -n 1 "$TMP/run/log/epoch-002.jsonl" | $PY -c 'import json,sys; print(json.load(sys.stdin)["step"])')" = 4 ]
    # nothing left to do: no training command runs again
    n=$(grep -c 'dino-step train' "$TMP/run/commands.sh")
    run tiny EPOCHS=2
    assert_success
    [ "$(grep -c 'dino-step train' "$TMP/run/commands.sh")" = "$n" ]
    # another configuration for the same run directory is refused
    run tiny EPOCHS=3
    assert_failure
    assert_output --partial "was made with another configuration"
    [ ! -e "$TMP/run/ckpt/epoch-003.mpt" ]
}

@test "dino.mk: an interrupted epoch is redone from the last checkpoint, to the same bytes" {
    $PY "$ROOT/pipelines/synthetic-textures.py" "$TMP/syn" --seed 2 --train 6 --test 4 --size 16 > /dev/null
    run tiny EPOCHS=2 BASELINE=0
    assert_success
    cp "$TMP/run/ckpt/epoch-002.mpt" "$TMP/whole.mpt"
    # an epoch-2 run killed half way: a partial checkpoint and log, no target
    rm "$TMP/run/ckpt/epoch-002.mpt" "$TMP/run/log/epoch-002.jsonl"
    head -c 1000 "$TMP/whole.mpt" > "$TMP/run/ckpt/epoch-002.mpt.tmp"
    echo '{"step": 3}' > "$TMP/run/log/epoch-002.jsonl.tmp"
    n=$(grep -c 'dino-step train' "$TMP/run/commands.sh")
    run tiny EPOCHS=2 BASELINE=0
    assert_success
    # exactly one epoch retrained, from epoch 1's checkpoint, to the same bytes
    [ "$(grep -c 'dino-step train' "$TMP/run/commands.sh")" = $((n + 1)) ]
    cmp "$TMP/whole.mpt" "$TMP/run/ckpt/epoch-002.mpt"
    [ "$(wc -l < "$TMP/run/log/epoch-002.jsonl")" = 2 ]
}

@test "dino.mk: an epoch cut short (dino-step stopped by a signal exits 0) is not taken as done" {
    $PY "$ROOT/pipelines/synthetic-textures.py" "$TMP/syn" --seed 3 --train 6 --test 4 --size 16 > /dev/null
    # multicrop stands in for a producer killed half way: one batch of two
    mkdir -p "$TMP/fakebin"
    for t in tif-stats dino-step knn-eval; do ln -s "$BIN/$t" "$TMP/fakebin/$t"; done
    printf '#!/usr/bin/env bash\n"%s/multicrop" "$@" | %s -c "%s"\n' \
        "$BIN" "$PY" "import sys, msgpack; u = msgpack.Unpacker(sys.stdin.buffer, raw=False, max_buffer_size=2**31); sys.stdout.buffer.write(msgpack.packb(next(u)))" \
        > "$TMP/fakebin/multicrop"
    chmod +x "$TMP/fakebin/multicrop"
    run make -s -f "$ROOT/pipelines/dino.mk" BIN="$TMP/fakebin" DATA="$TMP/syn" RUN="$TMP/run" \
        EMBED_DIM=32 DEPTH=1 HEADS=2 PATCH=8 OUT_DIM=64 HIDDEN_DIM=64 BOTTLENECK=16 \
        BATCH=16 LOCAL_CROPS=2 GLOBAL_SIZE=16 LOCAL_SIZE=8 EPOCHS=1 BASELINE=0 train
    assert_failure
    assert_output --partial "epoch 001 stopped before its 2 steps"
    [ ! -e "$TMP/run/ckpt/epoch-001.mpt" ]
    [ -e "$TMP/run/ckpt/epoch-000.mpt" ]
}
