#!/usr/bin/env bats
# knn-eval: DINO's weighted k-NN, against an independent numpy version and
# hand-computed cases; bad inputs.

load helpers

FEAT=$ROOT/tests/cli/features.py

# A features message from inline Python: features(path, rows, labels, dtype)
features() {
    $PY - "$@" <<'PY'
import sys, json, msgpack, numpy as np
path, rows, labels = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
dtype = sys.argv[4] if len(sys.argv) > 4 else "<f4"
x = np.array(rows, dtype=dtype).reshape(len(rows), -1) if rows else np.zeros((0, 2), dtype)
tensors = {"features": {"dtype": dtype, "shape": list(x.shape), "data": x.tobytes()}}
if labels is not None:
    y = np.array(labels, dtype="<i4")
    tensors["labels"] = {"dtype": "<i4", "shape": [len(y)], "data": y.tobytes()}
open(path, "wb").write(msgpack.packb({"v": 1, "kind": "features", "meta": {}, "tensors": tensors}))
PY
}

@test "accuracies equal the numpy implementation, to the last digit" {
    for seed in 1 2; do
        $PY "$FEAT" make "$TMP/tr.mpt" "$TMP/te.mpt" --seed $seed --noise 3 --classes 12 --dim 48
        "$BIN/knn-eval" --train "$TMP/tr.mpt" --test "$TMP/te.mpt" -k 1 5 10 20 100 200 > "$TMP/ours.txt"
        $PY "$FEAT" knn "$TMP/tr.mpt" "$TMP/te.mpt" 1 5 10 20 100 200 > "$TMP/numpy.txt"
        diff "$TMP/ours.txt" "$TMP/numpy.txt"
    done
    # and the numbers are not trivial: neither perfect nor chance
    run grep -c "Top1: 100.00\|Top1: [0-9]\.[0-9]*," "$TMP/ours.txt"
    assert_output "0"
}

@test "20-NN is reported first, then the other k in order" {
    $PY "$FEAT" make "$TMP/tr.mpt" "$TMP/te.mpt" --n-train 300 --n-test 50
    run "$BIN/knn-eval" --train "$TMP/tr.mpt" --test "$TMP/te.mpt"
    assert_success
    assert_line --index 0 --regexp "^20-NN classifier result: Top1: [0-9.]+, Top5: [0-9.]+$"
    assert_line --index 1 --partial "10-NN"
    assert_line --index 3 --partial "200-NN"
}

@test "a hand-computed vote: weights exp(sim / T) decide, not counts" {
    # class 0: two training points at 60 degrees from the test point;
    # class 1: one point at 10 degrees.  With T = 0.07, exp(cos 10 / T)
    # = e^14.07 outweighs 2 e^(0.5 / 0.07) = 2 e^7.14; with T = 100 the
    # weights are nearly equal and the two class-0 points win.
    features "$TMP/tr.mpt" '[[0.5, 0.8660254], [0.5, -0.8660254], [0.98480775, 0.17364818]]' '[0, 0, 1]'
    features "$TMP/te.mpt" '[[2.0, 0.0]]' '[1]'
    run "$BIN/knn-eval" --train "$TMP/tr.mpt" --test "$TMP/te.mpt" -k 3
    assert_success
    assert_output "3-NN classifier result: Top1: 100.00"
    run "$BIN/knn-eval" --train "$TMP/tr.mpt" --test "$TMP/te.mpt" -k 3 -T 100
    assert_output "3-NN classifier result: Top1: 0.00"
    # k = 1: only the nearest votes
    run "$BIN/knn-eval" --train "$TMP/tr.mpt" --test "$TMP/te.mpt" -k 1 -T 100
    assert_output "1-NN classifier result: Top1: 100.00"
}

@test "--json: per-class accuracy and confusion matrix agree with the text" {
    $PY "$FEAT" make "$TMP/tr.mpt" "$TMP/te.mpt" --noise 3 --classes 6 --n-test 300
    "$BIN/knn-eval" --train "$TMP/tr.mpt" --test "$TMP/te.mpt" -k 20 --json "$TMP/r.json" > "$TMP/r.txt"
    run $PY - "$TMP/r.json" "$TMP/r.txt" <<'PY'
import json, sys, numpy as np
r = json.load(open(sys.argv[1]))
res = r["results"][0]
cm = np.array(res["confusion"])
assert r["classes"] == [f"class{c}" for c in range(6)]
assert cm.shape == (6, 6) and cm.sum() == r["n_test"] == 300
assert abs(100 * np.trace(cm) / cm.sum() - res["top1"]) < 1e-9
pc = 100 * np.diag(cm) / cm.sum(axis=1)
assert np.allclose(pc, res["per_class"])
line = open(sys.argv[2]).read().strip()
assert line == f"20-NN classifier result: Top1: {res['top1']:.2f}, Top5: {res['top5']:.2f}", line
print("ok")
PY
    assert_success
    assert_output "ok"
}

@test "results do not depend on the number of threads" {
    $PY "$FEAT" make "$TMP/tr.mpt" "$TMP/te.mpt" --n-test 1500 --noise 3
    "$BIN/knn-eval" --train "$TMP/tr.mpt" --test "$TMP/te.mpt" -j 1 --json "$TMP/a.json" > /dev/null
    "$BIN/knn-eval" --train "$TMP/tr.mpt" --test "$TMP/te.mpt" -j 3 --json "$TMP/b.json" > /dev/null
    cmp "$TMP/a.json" "$TMP/b.json"
}

@test "float64 and float16 features are accepted; top-5 only with 5 classes or more" {
    $PY "$FEAT" make "$TMP/tr.mpt" "$TMP/te.mpt" --classes 3 --dtype '<f2' --n-train 200 --n-test 40
    run "$BIN/knn-eval" --train "$TMP/tr.mpt" --test "$TMP/te.mpt" -k 10
    assert_success
    assert_output --regexp "^10-NN classifier result: Top1: [0-9.]+$"
    $PY "$FEAT" make "$TMP/tr.mpt" "$TMP/te.mpt" --dtype '<f8' --n-train 200 --n-test 40
    run "$BIN/knn-eval" --train "$TMP/tr.mpt" --test "$TMP/te.mpt" -k 10
    assert_success
    assert_output --partial "Top5:"
}

@test "feature dimensions that differ: exit 1 naming both" {
    features "$TMP/tr.mpt" '[[1, 0, 0]]' '[0]'
    features "$TMP/te.mpt" '[[1, 0]]' '[0]'
    run "$BIN/knn-eval" --train "$TMP/tr.mpt" --test "$TMP/te.mpt"
    assert_failure 1
    assert_output --partial "feature dimensions differ: $TMP/tr.mpt has 3, $TMP/te.mpt has 2"
}

@test "labels missing, negative, or of the wrong count: exit 1" {
    features "$TMP/tr.mpt" '[[1, 0]]' null
    features "$TMP/te.mpt" '[[1, 0]]' '[0]'
    run "$BIN/knn-eval" --train "$TMP/tr.mpt" --test "$TMP/te.mpt"
    assert_failure 1
    assert_output --partial "no tensor \"labels\""
    features "$TMP/tr.mpt" '[[1, 0]]' '[-3]'
    run "$BIN/knn-eval" --train "$TMP/tr.mpt" --test "$TMP/te.mpt"
    assert_failure 1
    assert_output --partial "label -3 of row 0 is negative"
    features "$TMP/tr.mpt" '[[1, 0], [0, 1]]' '[0]'
    run "$BIN/knn-eval" --train "$TMP/tr.mpt" --test "$TMP/te.mpt"
    assert_failure 1
    assert_output --partial "1 labels for 2 feature rows"
}

@test "an empty set and NaN features: exit 1" {
    features "$TMP/tr.mpt" '[]' '[]'
    features "$TMP/te.mpt" '[[1, 0]]' '[0]'
    run "$BIN/knn-eval" --train "$TMP/tr.mpt" --test "$TMP/te.mpt"
    assert_failure 1
    assert_output --partial "no samples"
    features "$TMP/tr.mpt" '[[1, 0], [NaN, 1]]' '[0, 1]'
    run "$BIN/knn-eval" --train "$TMP/tr.mpt" --test "$TMP/te.mpt"
    assert_failure 1
    assert_output --partial "features row 1 has a non-finite value"
}

@test "not a features message, a truncated file, a missing file: exit 1" {
    "$BIN/tif-stats" -q -o "$TMP/stats.mpt" "$DATA/L7_ETMs.tif"
    features "$TMP/te.mpt" '[[1, 0]]' '[0]'
    run "$BIN/knn-eval" --train "$TMP/stats.mpt" --test "$TMP/te.mpt"
    assert_failure 1
    assert_output --partial "is a \"stats\" message, expected \"features\""
    head -c 30 "$TMP/te.mpt" > "$TMP/cut.mpt"
    run "$BIN/knn-eval" --train "$TMP/cut.mpt" --test "$TMP/te.mpt"
    assert_failure 1
    assert_output --partial "$TMP/cut.mpt: message 1: truncated"
    run "$BIN/knn-eval" --train "$TMP/none.mpt" --test "$TMP/te.mpt"
    assert_failure 1
    assert_output --partial "No such file"
}

@test "usage errors: exit 2" {
    run "$BIN/knn-eval" --train x.mpt
    assert_failure 2
    assert_output --partial "--train and --test are both required"
    run "$BIN/knn-eval" --train x --test y -k 0
    assert_failure 2
    run "$BIN/knn-eval" --train x --test y -T -1
    assert_failure 2
    run "$BIN/knn-eval" --help
    assert_success
    assert_output --partial "Usage: knn-eval"
}
