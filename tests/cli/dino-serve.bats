#!/usr/bin/env bats
# dino-step serve: the trainer on a Unix-domain socket, with several
# producers, a controller and misbehaving clients.

load helpers

TOOL=$ROOT/tests/cli/dino_tool.py

setup_file() { :; }

prepare() {
    "$BIN/tif-stats" "$DATA/L7_ETMs.tif" -o "$TMP/stats.mpt" > /dev/null
    for i in 1 2 3 4; do echo "$DATA/L7_ETMs.tif"; done > "$TMP/list.txt"
    "$BIN/multicrop" --stats "$TMP/stats.mpt" --list "$TMP/list.txt" --batch-size 2 --epochs 2 \
        --global-size 32 --local-size 16 --local-crops-number 2 --seed 3 --threads 1 -o "$TMP/b.mpt"
    "$BIN/dino-step" init --arch vit_tiny --depth 1 --embed-dim 32 --num-heads 2 --patch-size 8 \
        --img-size 32 --out-dim 64 --hidden-dim 64 --bottleneck-dim 32 --batch-size-per-gpu 2 \
        --local-crops-number 2 --iters-per-epoch 4 --epochs 10 --stats "$TMP/stats.mpt" \
        -o "$TMP/c.mpt"
    SOCK=$TMP/s.sock
}

# starts a server in the background ($SERVER is its pid) and waits until it answers
serve() {
    "$BIN/dino-step" serve --ckpt "$TMP/c.mpt" --socket "$SOCK" --save-every 0 "$@" \
        > "$TMP/serve.out" 2> "$TMP/serve.err" &
    SERVER=$!
    for i in $(seq 300); do
        [ -S "$SOCK" ] && $PY "$TOOL" control "$SOCK" stats > /dev/null 2>&1 && return 0
        sleep 0.05
    done
    cat "$TMP/serve.err"
    return 1
}

teardown() {
    [ -n "${SERVER:-}" ] && kill -9 "$SERVER" 2>/dev/null || true
    rm -rf "$TMP"
}

ctl() { $PY "$TOOL" control "$SOCK" "$1"; }
field() { $PY -c "import json, sys; print(json.loads(sys.stdin.read())['$1'])"; }

@test "one producer through the socket trains exactly as train on a pipe" {
    prepare
    cp "$TMP/c.mpt" "$TMP/t.mpt"
    "$BIN/dino-step" train --ckpt "$TMP/t.mpt" < "$TMP/b.mpt"
    serve
    [ "$(stat -c %a "$SOCK")" = 600 ]
    run $PY "$TOOL" send "$SOCK" "$TMP/b.mpt"
    assert_success
    assert_output ""            # producers get no replies when all is well
    run ctl stats
    assert_output --partial '"ok": true'
    assert_output --partial '"step": 4'
    assert_output --partial '"loss": '
    run ctl stop
    assert_output --partial '"command": "stop"'
    assert_output --partial '"ok": true'
    wait $SERVER
    SERVER=
    cmp "$TMP/c.mpt" "$TMP/t.mpt"
    [ ! -e "$SOCK" ]
}

@test "two producers, a controller and malicious clients: the server carries on" {
    prepare
    serve --max-message 1M
    $PY "$TOOL" send "$SOCK" "$TMP/b.mpt" > "$TMP/p1.out" &
    p1=$!
    $PY "$TOOL" send "$SOCK" "$TMP/b.mpt" > "$TMP/p2.out" &
    p2=$!
    # garbage bytes
    run $PY "$TOOL" raw "$SOCK" c1c1c1c1
    assert_output --partial '"ok": false'
    assert_output --partial 'malformed msgpack'
    # a length that claims 4 GiB
    run $PY "$TOOL" raw "$SOCK" 84a17601a46b696e64c6fffffff0
    assert_output --partial '"ok": false'
    assert_output --partial 'exceeds the maximum message size (1048576 bytes)'
    # a truncated message, then hanging up
    run $PY "$TOOL" raw "$SOCK" 84a17601a46b696e64a56261
    assert_output --partial 'truncated'
    # an unknown command, a message of another kind
    run ctl explode
    assert_output --partial 'unknown command \"explode\"'
    $PY "$TOOL" ckpt "$TMP/odd.mpt" '{"x": [1]}'
    run $PY "$TOOL" send "$SOCK" "$TMP/odd.mpt"
    assert_output --partial 'a \"checkpoint\" message; the server takes batch and control'
    wait $p1
    wait $p2
    [ ! -s "$TMP/p1.out" ] && [ ! -s "$TMP/p2.out" ]
    run ctl save
    assert_output --partial '"step": 8'
    assert_output --partial '"saved_step": 8'
    run $PY "$TOOL" meta "$TMP/c.mpt" step
    assert_output "8"
    kill -0 $SERVER
    run ctl stop
    assert_output --partial '"ok": true'
    wait $SERVER
    SERVER=
    grep -q "client [0-9]*: .*malformed msgpack.*(connection closed)" "$TMP/serve.err"
}

@test "a batch of the wrong shape is answered with an error; the weights are untouched" {
    prepare
    cp "$TMP/c.mpt" "$TMP/before.mpt"
    $PY "$TOOL" badbatch "$TMP/b.mpt" "$TMP/bs.mpt" bsize
    $PY "$TOOL" badbatch "$TMP/b.mpt" "$TMP/nan.mpt" nan
    serve
    run $PY "$TOOL" send "$SOCK" "$TMP/bs.mpt" "$TMP/b.mpt"
    assert_output --partial '"ok": false'
    assert_output --partial "batch of 3 samples, the run's batch_size_per_gpu is 2"
    run $PY "$TOOL" send "$SOCK" "$TMP/nan.mpt"
    assert_output --partial 'is not finite'
    run ctl stats
    assert_output --partial '"step": 0'
    run $PY "$TOOL" send "$SOCK" "$TMP/b.mpt"
    assert_output ""
    run ctl stop
    assert_output --partial '"step": 4'
    wait $SERVER
    SERVER=
}

@test "a second server on the same socket is refused; a stale socket is reused" {
    prepare
    serve
    run "$BIN/dino-step" serve --ckpt "$TMP/c.mpt" --socket "$SOCK"
    assert_failure 1
    assert_output "dino-step: $SOCK: another server is listening on this socket"
    kill -9 $SERVER
    wait $SERVER || true
    SERVER=
    [ -S "$SOCK" ]
    serve
    run ctl stop
    assert_output --partial '"ok": true'
    wait $SERVER
    SERVER=
    touch "$TMP/plain"
    run "$BIN/dino-step" serve --ckpt "$TMP/c.mpt" --socket "$TMP/plain"
    assert_failure 1
    assert_output "dino-step: $TMP/plain: exists and is not a socket"
}

@test "SIGTERM stops the server with a saved checkpoint" {
    prepare
    serve
    $PY "$TOOL" send "$SOCK" "$TMP/b.mpt"
    kill -TERM $SERVER
    wait $SERVER
    SERVER=
    run $PY "$TOOL" meta "$TMP/c.mpt" step
    assert_output "4"
    [ ! -e "$SOCK" ]
}

@test "dino-step send and control: the built-in clients" {
    prepare
    cp "$TMP/c.mpt" "$TMP/t.mpt"
    "$BIN/dino-step" train --ckpt "$TMP/t.mpt" < "$TMP/b.mpt"
    serve
    run "$BIN/dino-step" send --socket "$SOCK" < "$TMP/b.mpt"
    assert_success
    assert_output ""
    run "$BIN/dino-step" control --socket "$SOCK" stats
    assert_success
    assert_output --regexp '^\{"command": "stats", "ok": true, "step": 4, "epoch": 1, "saved_step": 0, '
    $PY "$TOOL" badbatch "$TMP/b.mpt" "$TMP/bs.mpt" bsize
    run "$BIN/dino-step" send --socket "$SOCK" "$TMP/bs.mpt"
    assert_failure 1
    assert_output --partial '"ok": false, "error": "batch of shape B=3 G=2 L=2 C=6 H=32 h=16, the first batch was B=2'
    run "$BIN/dino-step" control --socket "$SOCK" reboot
    assert_failure 1
    assert_output --partial 'unknown command \"reboot\"'
    run "$BIN/dino-step" control --socket "$SOCK" stop
    assert_success
    assert_output --partial '"step": 4'
    wait $SERVER
    SERVER=
    cmp "$TMP/c.mpt" "$TMP/t.mpt"
    run "$BIN/dino-step" control --socket "$SOCK" stats
    assert_failure 1
    assert_output --partial "dino-step: $SOCK: No such file or directory"
}
