#!/usr/bin/env bats
# dino-step embed: CLS (and --avgpool) features of whole tiles against a float64 numpy ViT,
# labels from ImageFolder roots and --list files, and knn-eval on the result.

load helpers

TOOL=$ROOT/tests/cli/dino_tool.py

# tiles cut from the real scene: class "field" from the top rows, "town"
# from the bottom ones (32x32 and 32x34, which crops to 32x32)
prepare() {
    "$BIN/tif-stats" "$DATA/L7_ETMs.tif" -o "$TMP/stats.mpt" > /dev/null
    mkdir -p "$TMP/tiles/field" "$TMP/tiles/town"
    for i in 0 1 2; do
        gdal_translate -q -srcwin $((i * 40)) 0 32 32 "$DATA/L7_ETMs.tif" "$TMP/tiles/field/f$i.tif"
        gdal_translate -q -srcwin $((200 + i * 40)) 300 32 34 "$DATA/L7_ETMs.tif" "$TMP/tiles/town/t$i.tif"
    done
    rm "$TMP/tiles/town/t2.tif"   # 5 tiles: an odd number, the last pass is padded
    "$BIN/dino-step" init --arch vit_tiny --depth 2 --embed-dim 32 --num-heads 2 --patch-size 8 \
        --img-size 32 --out-dim 64 --hidden-dim 64 --bottleneck-dim 32 --batch-size-per-gpu 2 \
        --local-crops-number 2 --iters-per-epoch 2 --stats "$TMP/stats.mpt" -o "$TMP/c.mpt"
    # a few steps, so that student and teacher differ
    for i in 1 2 3 4; do echo "$DATA/L7_ETMs.tif"; done > "$TMP/list.txt"
    "$BIN/multicrop" --stats "$TMP/stats.mpt" --list "$TMP/list.txt" --batch-size 2 \
        --global-size 32 --local-size 16 --local-crops-number 2 --threads 1 -o "$TMP/b.mpt"
    "$BIN/dino-step" train --ckpt "$TMP/c.mpt" "$TMP/b.mpt"
}

# max |a - b| of the features of two files, or of a file and numpy's JSON
compare() {
    $PY - "$@" <<'PY'
import json, sys, msgpack, numpy as np
def feats(p):
    if p.endswith(".json"):
        return np.array(json.load(open(p)))
    m = msgpack.unpackb(open(p, "rb").read())
    t = m["tensors"]["features"]
    return np.frombuffer(t["data"], "<f4").reshape(t["shape"]).astype(np.float64)
a, b = feats(sys.argv[1]), feats(sys.argv[2])
assert a.shape == b.shape, (a.shape, b.shape)
print("%.3g" % np.abs(a - b).max())
PY
}

@test "ImageFolder: features equal a float64 numpy ViT, labels and classes in name order" {
    prepare
    "$BIN/dino-step" embed --ckpt "$TMP/c.mpt" --precision fp32 "$TMP/tiles" -o "$TMP/f.mpt"
    files=$(ls "$TMP"/tiles/field/*.tif "$TMP"/tiles/town/*.tif)
    $PY "$TOOL" vit "$TMP/c.mpt" teacher $files > "$TMP/ref.json"
    run compare "$TMP/f.mpt" "$TMP/ref.json"
    assert_output --regexp "^([0-9.]+e-0[5-9]|0)$"
    run $PY "$TOOL" tensor "$TMP/f.mpt" labels
    assert_output "[0.0, 0.0, 0.0, 1.0, 1.0]"
    run $PY "$TOOL" meta "$TMP/f.mpt" classes
    assert_output '["field", "town"]'
    run $PY "$TOOL" meta "$TMP/f.mpt" which
    assert_output '"teacher"'
    # the student is another network, and numpy agrees on it too
    "$BIN/dino-step" embed --ckpt "$TMP/c.mpt" --precision fp32 --which student "$TMP/tiles" -o "$TMP/s.mpt"
    $PY "$TOOL" vit "$TMP/c.mpt" student $files > "$TMP/sref.json"
    run compare "$TMP/s.mpt" "$TMP/sref.json"
    assert_output --regexp "^([0-9.]+e-0[5-9]|0)$"
    run compare "$TMP/s.mpt" "$TMP/f.mpt"
    refute_output --regexp "^([0-9.]+e-0[5-9]|0)$"
    # a tile's features do not depend on the batch it is in
    "$BIN/dino-step" embed --ckpt "$TMP/c.mpt" --precision fp32 --batch-size 8 "$TMP/tiles" > "$TMP/f8.mpt"
    run compare "$TMP/f.mpt" "$TMP/f8.mpt"
    assert_output --regexp "^([0-9.]+e-0[6-9]|0)$"
}

@test "--avgpool: CLS and mean patch token interleaved (DINO eval_linear), equal to numpy" {
    prepare
    "$BIN/dino-step" embed --ckpt "$TMP/c.mpt" --precision fp32 "$TMP/tiles" -o "$TMP/f.mpt"
    "$BIN/dino-step" embed --ckpt "$TMP/c.mpt" --precision fp32 --avgpool "$TMP/tiles" -o "$TMP/a.mpt"
    files=$(ls "$TMP"/tiles/field/*.tif "$TMP"/tiles/town/*.tif)
    $PY "$TOOL" vit-avgpool "$TMP/c.mpt" teacher $files > "$TMP/ref.json"
    run compare "$TMP/a.mpt" "$TMP/ref.json"
    assert_output --regexp "^([0-9.]+e-0[5-9]|0)$"
    # the feature dim doubles: 5 tiles x 2 x embed_dim 32; meta says how
    run $PY -c 'import sys, msgpack; m = msgpack.unpackb(open(sys.argv[1], "rb").read())
print(m["tensors"]["features"]["shape"], m["meta"]["pooling"])' "$TMP/a.mpt"
    assert_output "[5, 64] cls+avgpool"
    # the even elements are the plain CLS features; the odd ones are not
    run $PY - "$TMP/f.mpt" "$TMP/a.mpt" <<'PY'
import sys, msgpack, numpy as np
f = [msgpack.unpackb(open(p, "rb").read())["tensors"]["features"] for p in sys.argv[1:]]
c, a = (np.frombuffer(t["data"], "<f4").reshape(t["shape"]) for t in f)
print(np.abs(a[:, 0::2] - c).max(), np.abs(a[:, 1::2] - c).max() > 1e-3)
PY
    assert_output "0.0 True"
    # a tile's features do not depend on the batch it is in
    "$BIN/dino-step" embed --ckpt "$TMP/c.mpt" --precision fp32 --avgpool --batch-size 8 "$TMP/tiles" -o "$TMP/a8.mpt"
    run compare "$TMP/a.mpt" "$TMP/a8.mpt"
    assert_output --regexp "^([0-9.]+e-0[6-9]|0)$"
}

@test "--list: PATH LABEL lines, integer labels kept; knn-eval reads the result" {
    prepare
    {
        for f in "$TMP"/tiles/field/*.tif; do echo "$f 3"; done
        for f in "$TMP"/tiles/town/*.tif; do echo "$f 7"; done
    } > "$TMP/labeled.txt"
    "$BIN/dino-step" embed --ckpt "$TMP/c.mpt" --list "$TMP/labeled.txt" -o "$TMP/f.mpt"
    run $PY "$TOOL" tensor "$TMP/f.mpt" labels
    assert_output "[3.0, 3.0, 3.0, 7.0, 7.0]"
    run "$BIN/knn-eval" --train "$TMP/f.mpt" --test "$TMP/f.mpt" -k 1
    assert_success
    assert_output --partial "1-NN classifier result: Top1: 100.00"
    # --stats replaces the checkpoint's normalization: other features
    $PY - "$TMP/stats.mpt" "$TMP/stats2.mpt" <<'PY'
import sys, msgpack, numpy as np
m = msgpack.unpackb(open(sys.argv[1], "rb").read())
s = np.frombuffer(m["tensors"]["std"]["data"], "<f8") * 2
m["tensors"]["std"]["data"] = s.tobytes()
open(sys.argv[2], "wb").write(msgpack.packb(m))
PY
    "$BIN/dino-step" embed --ckpt "$TMP/c.mpt" --list "$TMP/labeled.txt" --stats "$TMP/stats2.mpt" -o "$TMP/g.mpt"
    run compare "$TMP/f.mpt" "$TMP/g.mpt"
    refute_output "0"
}

@test "embed errors: bands, tile sizes, list format, usage" {
    prepare
    gdal_translate -q -b 1 -srcwin 0 0 32 32 "$DATA/L7_ETMs.tif" "$TMP/one.tif"
    run "$BIN/dino-step" embed --ckpt "$TMP/c.mpt" "$TMP/one.tif" -o "$TMP/f.mpt"
    assert_failure 1
    assert_output "dino-step: $TMP/one.tif: 1 bands, the model has 6"
    gdal_translate -q -srcwin 0 0 48 48 "$DATA/L7_ETMs.tif" "$TMP/big.tif"
    run "$BIN/dino-step" embed --ckpt "$TMP/c.mpt" "$TMP/tiles/field/f0.tif" "$TMP/big.tif" -o "$TMP/f.mpt"
    assert_failure 1
    assert_output --partial "big.tif: gives 48 px crops, the first tile 32"
    echo "$TMP/one.tif" > "$TMP/bad.txt"
    run "$BIN/dino-step" embed --ckpt "$TMP/c.mpt" --list "$TMP/bad.txt"
    assert_failure 1
    assert_output --partial 'expected "PATH LABEL"'
    run "$BIN/dino-step" embed --ckpt "$TMP/c.mpt" --which both "$TMP/tiles"
    assert_failure 2
    run "$BIN/dino-step" embed "$TMP/tiles"
    assert_failure 2
    [ ! -e "$TMP/f.mpt" ]
}
