#!/usr/bin/env bats
# ema-update: DINO's teacher EMA on checkpoints, against hand-computed
# values and against dino-step's own in-process EMA.

load helpers

TOOL=$ROOT/tests/cli/dino_tool.py

ckpt() { $PY "$TOOL" ckpt "$@"; }
tensor() { $PY "$TOOL" tensor "$@"; }

@test "help, version, usage errors" {
    run "$BIN/ema-update" --help
    assert_success
    assert_output --partial "--momentum"
    run "$BIN/ema-update" --version
    assert_output --regexp "^ema-update \(geodino\) "
    run "$BIN/ema-update" --ckpt x.mpt -o y.mpt
    assert_failure 2
    assert_output --partial "give --momentum, or --step and --total"
    run "$BIN/ema-update" --ckpt x.mpt --momentum 0.5 --step 1 --total 3 -o y.mpt
    assert_failure 2
    run "$BIN/ema-update" --teacher x.mpt --momentum 0.5 -o y.mpt
    assert_failure 2
    assert_output --partial "give --teacher and --student, or --ckpt"
    run "$BIN/ema-update" --ckpt x.mpt --momentum 1.5 -o y.mpt
    assert_failure 2
    run "$BIN/ema-update" --ckpt "$TMP/none.mpt" --momentum 0.5 -o "$TMP/y.mpt"
    assert_failure 1
    assert_output --partial "ema-update: $TMP/none.mpt: No such file"
}

@test "a small case by hand: m t + (1 - m) s" {
    ckpt "$TMP/c.mpt" '{"teacher/a": [[1, 2], [3, 4]], "student/a": [[5, 6], [7, 8]],
                        "teacher/b/bias": [10], "student/b/bias": [0], "center": [9]}'
    "$BIN/ema-update" --ckpt "$TMP/c.mpt" --momentum 0.5 -o "$TMP/o.mpt"
    run tensor "$TMP/o.mpt" teacher/a
    assert_output "[3.0, 4.0, 5.0, 6.0]"
    run tensor "$TMP/o.mpt" teacher/b/bias
    assert_output "[5.0]"
    # the student and everything else are copied as they were
    run tensor "$TMP/o.mpt" student/a
    assert_output "[5.0, 6.0, 7.0, 8.0]"
    run tensor "$TMP/o.mpt" center
    assert_output "[9.0]"
    "$BIN/ema-update" --ckpt "$TMP/c.mpt" --momentum 0.75 -o "$TMP/o.mpt"
    run tensor "$TMP/o.mpt" teacher/a
    assert_output "[2.0, 3.0, 4.0, 5.0]"
    # DINO's cosine: at step 5 of 10 from base 0.9, m = 1 + (0.9 - 1) (1 + cos(pi / 2)) / 2 = 0.95
    "$BIN/ema-update" --ckpt "$TMP/c.mpt" --step 5 --total 10 --base 0.9 -o "$TMP/o.mpt"
    run tensor "$TMP/o.mpt" teacher/b/bias
    assert_output "[9.5]"
    run $PY "$TOOL" meta "$TMP/o.mpt" ema_update/momentum
    assert_output --regexp "^0\.9499999"
    # step 0 is the base, the last step almost 1
    "$BIN/ema-update" --ckpt "$TMP/c.mpt" --step 0 --total 10 --base 0.9 -o "$TMP/o.mpt"
    run tensor "$TMP/o.mpt" teacher/b/bias
    assert_output "[9.0]"
}

@test "--teacher and --student from two files, to the last bit of numpy float32" {
    ckpt "$TMP/t.mpt" '{"teacher/w": [0.1, -2.5, 3.25e-3, 7], "student/w": [0, 0, 0, 0]}'
    ckpt "$TMP/s.mpt" '{"teacher/w": [0, 0, 0, 0], "student/w": [1.7, 0.33, -9.5, 1e-4]}'
    "$BIN/ema-update" --teacher "$TMP/t.mpt" --student "$TMP/s.mpt" --momentum 0.9961 -o "$TMP/o.mpt"
    expected=$($PY "$TOOL" ema "$TMP/t.mpt" "$TMP/s.mpt" 0.9961 |
               $PY -c 'import json, sys; print(json.load(sys.stdin)["teacher/w"])')
    run tensor "$TMP/o.mpt" teacher/w
    assert_output "$expected"
    refute_output "[0.1, -2.5, 0.00325, 7.0]"
    # the output is the teacher file with its teacher replaced
    run tensor "$TMP/o.mpt" student/w
    assert_output "[0.0, 0.0, 0.0, 0.0]"
}

@test "mismatched names or shapes are refused, naming the first" {
    ckpt "$TMP/a.mpt" '{"teacher/x": [1, 2], "teacher/y": [1], "student/x": [1, 2], "student/y": [1]}'
    ckpt "$TMP/b.mpt" '{"student/x": [1, 2]}'
    run "$BIN/ema-update" --teacher "$TMP/a.mpt" --student "$TMP/b.mpt" --momentum 0.5 -o "$TMP/o.mpt"
    assert_failure 1
    assert_output 'ema-update: tensor "teacher/y" has no counterpart "student/y" in the student'
    ckpt "$TMP/b.mpt" '{"student/x": [1, 2], "student/y": [1], "student/z": [3]}'
    run "$BIN/ema-update" --teacher "$TMP/a.mpt" --student "$TMP/b.mpt" --momentum 0.5 -o "$TMP/o.mpt"
    assert_failure 1
    assert_output 'ema-update: tensor "student/z" has no counterpart "teacher/z" in the teacher'
    ckpt "$TMP/b.mpt" '{"student/x": [[1, 2]], "student/y": [1]}'
    run "$BIN/ema-update" --teacher "$TMP/a.mpt" --student "$TMP/b.mpt" --momentum 0.5 -o "$TMP/o.mpt"
    assert_failure 1
    assert_output 'ema-update: tensor "x": shape [2] in the teacher, [1,2] in the student'
    ckpt "$TMP/e.mpt" '{"student/x": [1, 2]}'
    run "$BIN/ema-update" --ckpt "$TMP/e.mpt" --momentum 0.5 -o "$TMP/o.mpt"
    assert_failure 1
    assert_output --partial "holds no tensor named teacher/"
    [ ! -e "$TMP/o.mpt" ]
}

@test "equals dino-step's in-process EMA bit for bit" {
    "$BIN/tif-stats" "$DATA/L7_ETMs.tif" -o "$TMP/stats.mpt" > /dev/null
    echo "$DATA/L7_ETMs.tif" > "$TMP/list.txt"
    echo "$DATA/L7_ETMs.tif" >> "$TMP/list.txt"
    "$BIN/multicrop" --stats "$TMP/stats.mpt" --list "$TMP/list.txt" --batch-size 2 \
        --global-size 32 --local-size 16 --local-crops-number 2 --threads 1 -o "$TMP/b.mpt"
    "$BIN/dino-step" init --arch vit_tiny --depth 1 --embed-dim 32 --num-heads 2 --patch-size 8 \
        --img-size 32 --out-dim 64 --hidden-dim 64 --bottleneck-dim 32 --batch-size-per-gpu 2 \
        --local-crops-number 2 --iters-per-epoch 3 --epochs 4 --momentum-teacher 0.9 \
        --stats "$TMP/stats.mpt" -o "$TMP/c0.mpt"
    cp "$TMP/c0.mpt" "$TMP/c1.mpt"
    "$BIN/dino-step" train --ckpt "$TMP/c1.mpt" "$TMP/b.mpt"
    # one step: teacher1 = m(0) teacher0 + (1 - m(0)) student1, m on 4 * 3 iterations from 0.9
    "$BIN/ema-update" --teacher "$TMP/c0.mpt" --student "$TMP/c1.mpt" --step 0 --total 12 \
        --base 0.9 -o "$TMP/e.mpt"
    run $PY "$TOOL" diff "$TMP/c1.mpt" "$TMP/e.mpt" teacher/
    assert_success
    assert_output ""
    # and the teacher really moved
    run $PY "$TOOL" diff "$TMP/c0.mpt" "$TMP/e.mpt" teacher/
    assert_line "teacher/backbone/cls_token"
}
