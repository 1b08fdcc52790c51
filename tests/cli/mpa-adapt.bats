#!/usr/bin/env bats
# mpa-adapt: every command end to end on a few tiles of the Landsat
# domain-shift set (pipelines/adapt-data.py), the message names of the
# man page, reproducibility, pipelines/adapt.mk, and bad inputs.

load helpers

# Shared by the tests of this file: 6 tiles per set and a tiny ViT.
setup_file() {
    export D=$BATS_FILE_TMPDIR
    local root bin
    root=$(cd "$BATS_TEST_DIRNAME/../.." && pwd)
    bin=${GEODINO_BIN:-$root/bin}
    /usr/bin/python3 "$root/pipelines/adapt-data.py" "$D/data" --scene "$root/tests/data/L7_ETMs.tif" \
        --max-tiles 6 > /dev/null
    cut -d' ' -f1 "$D/data/src-train.txt" > "$D/src-images.txt"
    "$bin/tif-stats" -q --list "$D/src-images.txt" -o "$D/stats.mpt" > /dev/null
    "$bin/dino-step" init --arch vit_tiny --patch-size 4 --img-size 24 --embed-dim 16 --depth 3 \
        --num-heads 2 --out-dim 16 --hidden-dim 16 --bottleneck-dim 8 --stats "$D/stats.mpt" \
        --iters-per-epoch 1 -o "$D/dino.mpt" > /dev/null
    "$bin/mpa-adapt" train-source --ckpt "$D/dino.mpt" --num-classes 3 --list "$D/data/src-train.txt" \
        --steps 4 --batch-size 4 --emb-chans 8 -q -o "$D/seg.mpt"
}

# Prints "name dtype shape" per tensor and the meta as JSON.
show() {
    $PY - "$1" <<'PY'
import json, sys, msgpack
m = msgpack.unpackb(open(sys.argv[1], "rb").read(), raw=False)
print("kind", m["kind"])
for n, t in sorted(m["tensors"].items()):
    print(n, t["dtype"], t["shape"])
print("meta", json.dumps(m["meta"], sort_keys=True))
PY
}

@test "help, version, and a missing or unknown command" {
    run "$BIN/mpa-adapt" --help
    assert_success
    assert_output --partial "pseudo-label"
    run "$BIN/mpa-adapt" --version
    assert_success
    run "$BIN/mpa-adapt"
    assert_failure 2
    assert_output --partial "a command is required"
    run "$BIN/mpa-adapt" segment
    assert_failure 2
    assert_output --partial "unknown command 'segment'"
}

@test "train-source writes a segmodel with the man page's tensor names and a log per step" {
    run "$BIN/mpa-adapt" train-source --ckpt "$D/dino.mpt" --num-classes 3 --levels 1,3 \
        --list "$D/data/src-train.txt" --steps 3 --batch-size 4 --emb-chans 8 --log "$TMP/log.jsonl" \
        -q -o "$TMP/seg.mpt"
    assert_success
    run show "$TMP/seg.mpt"
    assert_line "kind segmodel"
    assert_line "decoder/proj/0/weight <f4 [8, 16]"
    assert_line "decoder/proj/1/bias <f4 [8]"
    assert_line "decoder/pred/weight <f4 [3, 8]"
    assert_line "backbone/blocks/2/attn/qkv/weight <f4 [48, 16]"
    assert_output --partial '"levels": [1, 3]'
    assert_output --partial '"which": "teacher"'
    refute_output --partial "head/"
    [ "$(wc -l < "$TMP/log.jsonl")" -eq 3 ]
    run $PY -c 'import json,sys; [json.loads(l)["ce_source"] for l in open(sys.argv[1])]' "$TMP/log.jsonl"
    assert_success
}

@test "the default levels scale 3,6,9,12 to the depth (1,2,3 for depth 3)" {
    run show "$D/seg.mpt"
    assert_output --partial '"levels": [1, 2, 3]'
}

@test "the same seed gives the same bytes (any thread count); another seed another model" {
    for f in a:1 b:1 c:2; do
        "$BIN/mpa-adapt" train-source --ckpt "$D/dino.mpt" --num-classes 3 --list "$D/data/src-train.txt" \
            --steps 2 --batch-size 4 --emb-chans 8 --seed ${f#*:} -q -o "$TMP/${f%:*}.mpt"
    done
    cmp "$TMP/a.mpt" "$TMP/b.mpt"
    run cmp -s "$TMP/a.mpt" "$TMP/c.mpt"
    assert_failure
    # and whatever the number of threads
    OMP_NUM_THREADS=1 "$BIN/mpa-adapt" train-source --ckpt "$D/dino.mpt" --num-classes 3 \
        --list "$D/data/src-train.txt" --steps 2 --batch-size 4 --emb-chans 8 --seed 1 -q -o "$TMP/t1.mpt"
    cmp "$TMP/a.mpt" "$TMP/t1.mpt"
}

@test "--finetune moves the backbone; the frozen default keeps the teacher's weights" {
    for mode in --freeze-backbone --finetune; do
        "$BIN/mpa-adapt" train-source --ckpt "$D/dino.mpt" --num-classes 3 --list "$D/data/src-train.txt" \
            --steps 2 --batch-size 4 --emb-chans 8 $mode -q -o "$TMP/m$mode.mpt"
    done
    run $PY - "$D/dino.mpt" "$TMP/m--freeze-backbone.mpt" "$TMP/m--finetune.mpt" <<'PY'
import sys, msgpack
ck, fr, ft = (msgpack.unpackb(open(p, "rb").read(), raw=False) for p in sys.argv[1:])
names = [n for n in fr["tensors"] if n.startswith("backbone/")]
same = lambda a, n: a["tensors"][n]["data"] == ck["tensors"]["teacher/" + n]["data"]
assert len(names) > 10 and all(same(fr, n) for n in names)
moved = [n for n in names if not same(ft, n)]
print(fr["meta"]["seg"]["backbone"], ft["meta"]["seg"]["backbone"], "blocks/2/mlp/fc2/weight" in " ".join(moved))
PY
    assert_output "frozen fine-tuned True"
}

@test "train-source reads paste-aug sample messages from stdin" {
    $PY - "$D/data/src-train.txt" "$TMP/samples.mpt" <<'PY'
import sys, msgpack, numpy as np
from osgeo import gdal
out = open(sys.argv[2], "wb")
for line in open(sys.argv[1]):
    img, lab = line.split()
    x = gdal.Open(img).ReadAsArray().astype("<f4")
    y = gdal.Open(lab).ReadAsArray().astype("|u1")
    t = {"image": {"dtype": "<f4", "shape": list(x.shape), "data": x.tobytes()},
         "label": {"dtype": "|u1", "shape": list(y.shape), "data": y.tobytes()}}
    out.write(msgpack.packb({"v": 1, "kind": "sample", "meta": {"files": [img]}, "tensors": t}))
PY
    run "$BIN/mpa-adapt" train-source --ckpt "$D/dino.mpt" --num-classes 3 --samples - --steps 2 \
        --batch-size 4 --emb-chans 8 -q -o "$TMP/seg.mpt" < "$TMP/samples.mpt"
    assert_success
    # the same tiles from messages and from the list train the same model
    "$BIN/mpa-adapt" train-source --ckpt "$D/dino.mpt" --num-classes 3 --list "$D/data/src-train.txt" \
        --steps 2 --batch-size 4 --emb-chans 8 -q -o "$TMP/seg-list.mpt"
    cmp "$TMP/seg.mpt" "$TMP/seg-list.mpt"
    # a label beyond the classes is refused, naming the message
    $PY - "$TMP/samples.mpt" "$TMP/bad.mpt" <<'PY'
import sys, msgpack, numpy as np
msgs = list(msgpack.Unpacker(open(sys.argv[1], "rb"), raw=False))
y = np.frombuffer(msgs[1]["tensors"]["label"]["data"], "|u1").copy()
y[5] = 7
msgs[1]["tensors"]["label"]["data"] = y.tobytes()
open(sys.argv[2], "wb").write(b"".join(msgpack.packb(m) for m in msgs))
PY
    run "$BIN/mpa-adapt" train-source --ckpt "$D/dino.mpt" --num-classes 3 --samples "$TMP/bad.mpt" \
        --steps 1 -q -o "$TMP/x.mpt"
    assert_failure 1
    assert_output --partial "message 2"
    assert_output --partial "label 7"
}

@test "pseudo-label writes label rasters, their list and thresholds capped at --max-thresh" {
    run "$BIN/mpa-adapt" pseudo-label --model "$D/seg.mpt" --list "$D/data/tgt-train-images.txt" \
        --out-dir "$TMP/pl" --scales 0.5,1,1.5 --max-thresh 0.6 -q -o "$TMP/pl.json"
    assert_success
    [ "$(wc -l < "$TMP/pl/list.txt")" -eq 6 ]
    run $PY - "$TMP/pl.json" "$TMP/pl/list.txt" <<'PY'
import json, sys
import numpy as np
from osgeo import gdal
s = json.load(open(sys.argv[1]))
assert s["tiles"] == 6 and s["pixels"] == 6 * 24 * 24, s
assert s["scales"] == [0.5, 1, 1.5]
th = [t for t in s["thresholds"] if t is not None]
assert th and all(0 < t <= 0.6 for t in th), th
assert sum(s["predicted"]) == s["pixels"]
kept = 0
for line in open(sys.argv[2]):
    img, lab = line.split()
    y = gdal.Open(lab).ReadAsArray()
    assert y.shape == (24, 24) and set(np.unique(y)) <= {0, 1, 2, 255}, np.unique(y)
    kept += int((y != 255).sum())
assert kept == sum(s["kept"]), (kept, s["kept"])
assert abs(s["coverage"] - kept / s["pixels"]) < 1e-12
# below the median: about half of each class's pixels are dropped
assert 0.3 < s["coverage"] < 1, s["coverage"]
print("ok")
PY
    assert_output "ok"
}

@test "prototypes: the mutual bank is the mean of the two domains, shapes as documented" {
    "$BIN/mpa-adapt" pseudo-label --model "$D/seg.mpt" --list "$D/data/tgt-train-images.txt" \
        --out-dir "$TMP/pl" -q -o /dev/null
    run "$BIN/mpa-adapt" prototypes --model "$D/seg.mpt" --source "$D/data/src-train.txt" \
        --target "$TMP/pl/list.txt" -q -o "$TMP/p.mpt"
    assert_success
    run show "$TMP/p.mpt"
    assert_line "kind prototypes"
    assert_line "prototypes <f4 [3, 8]"
    assert_line "present |u1 [3]"
    assert_line "target_present |u1 [3]"
    run $PY - "$TMP/p.mpt" <<'PY'
import sys, msgpack, numpy as np
m = msgpack.unpackb(open(sys.argv[1], "rb").read(), raw=False)
T = {n: np.frombuffer(t["data"], t["dtype"]).reshape(t["shape"]) for n, t in m["tensors"].items()}
for c in range(3):
    s, t = T["source_present"][c], T["target_present"][c]
    want = ((T["source"][c] + T["target"][c]) / 2 if s and t else T["source"][c] if s
            else T["target"][c] if t else np.zeros(8))
    assert np.allclose(T["prototypes"][c], want, atol=1e-6), c
    assert T["present"][c] == (s or t)
assert T["present"].any()
print("ok")
PY
    assert_output "ok"
}

@test "adapt with the prototype loss, its bank, and eval's JSON" {
    "$BIN/mpa-adapt" pseudo-label --model "$D/seg.mpt" --list "$D/data/tgt-train-images.txt" \
        --out-dir "$TMP/pl" -q -o /dev/null
    "$BIN/mpa-adapt" prototypes --model "$D/seg.mpt" --source "$D/data/src-train.txt" \
        --target "$TMP/pl/list.txt" -q -o "$TMP/p.mpt" 2>/dev/null
    run "$BIN/mpa-adapt" adapt --model "$D/seg.mpt" --source "$D/data/src-train.txt" \
        --target "$TMP/pl/list.txt" --protos "$TMP/p.mpt" --lambda-proto 0.5 --steps 4 --bank-every 2 \
        --batch-size 4 --log "$TMP/a.jsonl" --bank-out "$TMP/bank.mpt" -q -o "$TMP/a.mpt"
    assert_success
    run $PY - "$TMP/a.jsonl" "$TMP/bank.mpt" <<'PY'
import json, sys, msgpack
rows = [json.loads(l) for l in open(sys.argv[1])]
assert len(rows) == 4 and all(r["proto_source"] > 0 and r["ce_target"] >= 0 for r in rows), rows
m = msgpack.unpackb(open(sys.argv[2], "rb").read(), raw=False)
assert m["kind"] == "prototypes" and m["meta"]["bank_updates"] == 2, m["meta"]
print("ok")
PY
    assert_output "ok"
    run "$BIN/mpa-adapt" eval --model "$TMP/a.mpt" --list "$D/data/tgt-test.txt" -q
    assert_success
    run $PY -c 'import json,sys; r = json.loads(sys.argv[1]); \
        c = r["confusion"]; n = sum(map(sum, c)); \
        assert r["tiles"] == 6 and n == 6 * 24 * 24 and 0 <= r["miou"] <= 1; \
        assert abs(r["pixel_acc"] - sum(c[i][i] for i in range(3)) / n) < 1e-12; print("ok")' "$output"
    assert_output "ok"
}

@test "adapt: --protos is required with a prototype loss, not without" {
    run "$BIN/mpa-adapt" adapt --model "$D/seg.mpt" --source "$D/data/src-train.txt" \
        --target "$D/data/tgt-test.txt" -o "$TMP/a.mpt"
    assert_failure 2
    assert_output --partial "--protos FILE is required"
    run "$BIN/mpa-adapt" adapt --model "$D/seg.mpt" --source "$D/data/src-train.txt" \
        --target "$D/data/tgt-test.txt" --lambda-proto 0 --steps 1 -q -o "$TMP/a.mpt"
    assert_success
}

@test "--device/--precision: cpu runs; cuda agrees with it or is refused clearly; bad names are usage errors" {
    "$BIN/mpa-adapt" pseudo-label --model "$D/seg.mpt" --list "$D/data/tgt-train-images.txt" \
        --out-dir "$TMP/pl" -q -o /dev/null
    "$BIN/mpa-adapt" prototypes --model "$D/seg.mpt" --source "$D/data/src-train.txt" \
        --target "$TMP/pl/list.txt" -q -o "$TMP/p.mpt" 2>/dev/null
    adapt() {
        "$BIN/mpa-adapt" adapt --model "$D/seg.mpt" --source "$D/data/src-train.txt" \
            --target "$TMP/pl/list.txt" --protos "$TMP/p.mpt" --lambda-proto 0.5 --steps 2 \
            --batch-size 4 -q "$@"
    }
    adapt --device cpu --log "$TMP/cpu.jsonl" -o "$TMP/cpu.mpt"
    run adapt --device cuda --precision fp32 --log "$TMP/gpu.jsonl" -o "$TMP/gpu.mpt"
    if [ "$status" -eq 0 ]; then    # a GPU and a CUDA build: the first step's losses agree
        run $PY - "$TMP/cpu.jsonl" "$TMP/gpu.jsonl" <<'PY'
import json, sys
a, b = ([json.loads(l) for l in open(f)][0] for f in sys.argv[1:])
for k in ("ce_source", "ce_target", "proto_source"):
    assert abs(a[k] - b[k]) <= 1e-4 * abs(a[k]) + 1e-6, (k, a[k], b[k])
print("ok")
PY
        assert_output "ok"
    else
        assert_failure 1
        assert_output --regexp '^mpa-adapt: --device cuda: (this build has no CUDA backend|no CUDA device)'
        [ ! -e "$TMP/gpu.mpt" ]
    fi
    run "$BIN/mpa-adapt" eval --model "$D/seg.mpt" --list "$D/data/tgt-test.txt" --device tpu
    assert_failure 2
    assert_output --partial "'tpu' is not auto, cpu, cuda or cuda:N"
    run env GEODINO_DEVICE=tpu "$BIN/mpa-adapt" eval --model "$D/seg.mpt" \
        --list "$D/data/tgt-test.txt"
    assert_failure 2
    assert_output --partial "GEODINO_DEVICE: 'tpu' is not auto, cpu, cuda or cuda:N"
    run "$BIN/mpa-adapt" eval --model "$D/seg.mpt" --list "$D/data/tgt-test.txt" --precision fp16
    assert_failure 2
    assert_output --partial "'fp16' is not auto, fp32, tf32 or bf16"
    run "$BIN/mpa-adapt" eval --model "$D/seg.mpt" --list "$D/data/tgt-test.txt" --device cpu \
        --precision bf16
    assert_failure 2
    assert_output --partial "the CPU backend computes in fp32 only"
}

@test "bad inputs: clear errors, nothing written" {
    # a label outside the classes, named with its file and line
    /usr/bin/python3 -c "
from osgeo import gdal; import numpy as np
d = gdal.GetDriverByName('GTiff').Create('$TMP/lab.tif', 24, 24, 1, gdal.GDT_Byte)
d.GetRasterBand(1).WriteArray(np.full((24, 24), 5, np.uint8)); d = None"
    img=$(head -1 "$D/src-images.txt")
    echo "$img $TMP/lab.tif" > "$TMP/bad.txt"
    run "$BIN/mpa-adapt" train-source --ckpt "$D/dino.mpt" --num-classes 3 --list "$TMP/bad.txt" -o "$TMP/x.mpt"
    assert_failure 1
    assert_output --partial "bad.txt: line 1"
    assert_output --partial "label 5"
    [ ! -e "$TMP/x.mpt" ]
    # a tile that is not a multiple of the patch
    /usr/bin/python3 -c "
from osgeo import gdal; import numpy as np
d = gdal.GetDriverByName('GTiff').Create('$TMP/odd.tif', 22, 22, 6, gdal.GDT_Byte); d = None"
    echo "$TMP/odd.tif" > "$TMP/odd.txt"
    run "$BIN/mpa-adapt" eval --model "$D/seg.mpt" --list "$TMP/odd.txt"
    assert_failure 1
    assert_output --partial "multiple of the patch"
    # another band count than the model's
    /usr/bin/python3 -c "
from osgeo import gdal
d = gdal.GetDriverByName('GTiff').Create('$TMP/b3.tif', 24, 24, 3, gdal.GDT_Byte); d = None"
    echo "$TMP/b3.tif" > "$TMP/b3.txt"
    run "$BIN/mpa-adapt" pseudo-label --model "$D/seg.mpt" --list "$TMP/b3.txt" --out-dir "$TMP/pl"
    assert_failure 1
    assert_output --partial "3 bands, the model has 6"
    # a missing label column where labels are needed
    run "$BIN/mpa-adapt" eval --model "$D/seg.mpt" --list "$D/src-images.txt"
    assert_failure 1
    assert_output --partial "no label raster"
    # levels beyond the depth
    run "$BIN/mpa-adapt" train-source --ckpt "$D/dino.mpt" --num-classes 3 --levels 2,4 \
        --list "$D/data/src-train.txt" -o "$TMP/x.mpt"
    assert_failure 2
    assert_output --partial "block 4 is outside 1..3"
    # a truncated model
    head -c 3000 "$D/seg.mpt" > "$TMP/trunc.mpt"
    run "$BIN/mpa-adapt" eval --model "$TMP/trunc.mpt" --list "$D/data/tgt-test.txt"
    assert_failure 1
    assert_output --partial "trunc.mpt"
    # a DINO checkpoint where a segmodel is expected
    run "$BIN/mpa-adapt" eval --model "$D/dino.mpt" --list "$D/data/tgt-test.txt"
    assert_failure 1
    assert_output --partial "not a segmodel"
    # a bank of another size than the model's
    $PY -c 'import msgpack, numpy as np, sys
p = np.zeros((3, 5), "<f4"); pr = np.ones(3, "|u1")
t = {"prototypes": {"dtype": "<f4", "shape": [3, 5], "data": p.tobytes()},
     "present": {"dtype": "|u1", "shape": [3], "data": pr.tobytes()}}
open(sys.argv[1], "wb").write(msgpack.packb({"v": 1, "kind": "prototypes", "meta": {}, "tensors": t}))' "$TMP/p5.mpt"
    run "$BIN/mpa-adapt" adapt --model "$D/seg.mpt" --source "$D/data/src-train.txt" \
        --target "$D/data/tgt-test.txt" --protos "$TMP/p5.mpt" --steps 1 -o "$TMP/x.mpt"
    assert_failure 1
    assert_output --partial "prototypes are [3, 5], the model needs [3, 8]"
    [ ! -e "$TMP/x.mpt" ]
    # missing required options
    run "$BIN/mpa-adapt" eval --model "$D/seg.mpt"
    assert_failure 2
    run "$BIN/mpa-adapt" train-source --list "$D/data/src-train.txt" -o "$TMP/x.mpt"
    assert_failure 2
    assert_output --partial "--ckpt"
    run "$BIN/mpa-adapt" train-source --ckpt "$D/dino.mpt" --num-classes 3 --class-weights 1,2 \
        --list "$D/data/src-train.txt" -o "$TMP/x.mpt"
    assert_failure 2
    assert_output --partial "2 weights for 3 classes"
}

@test "pipelines/adapt.mk chains every command; a second make does nothing" {
    run make -s -f "$ROOT/pipelines/adapt.mk" BIN="$BIN" DATA="$D/data" CKPT="$D/dino.mpt" RUN="$TMP/run" \
        SRC_STEPS=3 ADAPT_STEPS=2 BATCH=4 EMB=8 LAMBDA=0.1 BANK_EVERY=1
    assert_success
    for f in source.mpt pl/list.txt pl.json protos.mpt selftrain.mpt mpa.mpt bank.mpt \
             eval-source.json eval-selftrain.json eval-mpa.json summary.json; do
        [ -s "$TMP/run/$f" ] || { echo "missing $f"; false; }
    done
    run $PY -c 'import json,sys; s = json.load(open(sys.argv[1])); \
        print(sorted(s), all(0 <= v["miou"] <= 1 for v in s.values()))' "$TMP/run/summary.json"
    assert_output "['mpa', 'selftrain', 'source_on_source', 'source_only'] True"
    run make -f "$ROOT/pipelines/adapt.mk" BIN="$BIN" DATA="$D/data" CKPT="$D/dino.mpt" RUN="$TMP/run" \
        SRC_STEPS=3 ADAPT_STEPS=2 BATCH=4 EMB=8 LAMBDA=0.1 BANK_EVERY=1
    assert_success
    assert_output --partial "Nothing to be done"
}

@test "--head dmlp: train-source writes its blocks and meta, eval, prototypes and a resume read it" {
    run "$BIN/mpa-adapt" train-source --ckpt "$D/dino.mpt" --num-classes 3 --head dmlp --dmlp-blocks 2 \
        --list "$D/data/src-train.txt" --steps 3 --batch-size 4 --emb-chans 8 --log "$TMP/log.jsonl" \
        -q -o "$TMP/dm.mpt"
    assert_success
    run show "$TMP/dm.mpt"
    assert_line "decoder/dmlp/0/dw/weight <f4 [8, 9]"
    assert_line "decoder/dmlp/1/offset/weight <f4 [3, 8]"
    assert_line "decoder/dmlp/1/fc1/weight <f4 [32, 8]"
    assert_line "decoder/dmlp/1/fc2/weight <f4 [8, 32]"
    assert_line "decoder/pred/weight <f4 [3, 8]"
    refute_line --partial "decoder/dmlp/2/"
    assert_output --partial '"head": "dmlp"'
    assert_output --partial '"dmlp_blocks": 2'
    run "$BIN/mpa-adapt" eval --model "$TMP/dm.mpt" --list "$D/data/tgt-test.txt" -q
    assert_success
    run $PY -c 'import json,sys; r = json.loads(sys.argv[1]); \
        assert r["tiles"] == 6 and 0 <= r["miou"] <= 1; print("ok")' "$output"
    assert_output "ok"
    run "$BIN/mpa-adapt" prototypes --model "$TMP/dm.mpt" --source "$D/data/src-train.txt" \
        --target "$D/data/src-train.txt" -q -o "$TMP/p.mpt"
    assert_success
    run "$BIN/mpa-adapt" train-source --model "$TMP/dm.mpt" --list "$D/data/src-train.txt" --steps 1 \
        --batch-size 4 -q -o "$TMP/dm2.mpt"
    assert_success
    run show "$TMP/dm2.mpt"
    assert_output --partial '"head": "dmlp"'
    # the same bytes on 1 and 2 threads, at a size where the ops run in parallel
    for th in 1 2; do
        OMP_NUM_THREADS=$th "$BIN/mpa-adapt" train-source --ckpt "$D/dino.mpt" --num-classes 3 \
            --head dmlp --list "$D/data/src-train.txt" --steps 2 --batch-size 8 -q -o "$TMP/t$th.mpt"
    done
    cmp "$TMP/t1.mpt" "$TMP/t2.mpt"
    # the plain model of setup_file records its head too
    run show "$D/seg.mpt"
    assert_output --partial '"head": "plain"'
    refute_output --partial "decoder/dmlp/"
}

@test "--head: bad combinations and a head that is not the model's are refused" {
    run "$BIN/mpa-adapt" train-source --ckpt "$D/dino.mpt" --num-classes 3 --dmlp-blocks 2 \
        --list "$D/data/src-train.txt" -o "$TMP/x.mpt"
    assert_failure 2
    assert_output --partial "--dmlp-blocks needs --head dmlp"
    run "$BIN/mpa-adapt" train-source --ckpt "$D/dino.mpt" --num-classes 3 --head mlp \
        --list "$D/data/src-train.txt" -o "$TMP/x.mpt"
    assert_failure 2
    assert_output --partial "head 'mlp' is not plain or dmlp"
    run "$BIN/mpa-adapt" train-source --ckpt "$D/dino.mpt" --num-classes 3 --head dmlp --dmlp-blocks 0 \
        --list "$D/data/src-train.txt" -o "$TMP/x.mpt"
    assert_failure 2
    "$BIN/mpa-adapt" train-source --ckpt "$D/dino.mpt" --num-classes 3 --head dmlp --dmlp-blocks 1 \
        --list "$D/data/src-train.txt" --steps 1 --batch-size 4 --emb-chans 8 -q -o "$TMP/dm.mpt"
    run "$BIN/mpa-adapt" eval --model "$TMP/dm.mpt" --head plain --list "$D/data/tgt-test.txt" -q
    assert_failure 1
    assert_output --partial "the model has a dmlp head (1 block); --head plain asks for another"
    run "$BIN/mpa-adapt" eval --model "$D/seg.mpt" --head dmlp --list "$D/data/tgt-test.txt" -q
    assert_failure 1
    assert_output --partial "the model has a plain head"
    # dmlp tensors under a meta that says plain
    $PY - "$TMP/dm.mpt" "$TMP/lie.mpt" <<'PY'
import sys, msgpack
m = msgpack.unpackb(open(sys.argv[1], "rb").read(), raw=False)
m["meta"]["seg"]["head"] = "plain"
open(sys.argv[2], "wb").write(msgpack.packb(m, use_bin_type=True))
PY
    run "$BIN/mpa-adapt" eval --model "$TMP/lie.mpt" --list "$D/data/tgt-test.txt" -q
    assert_failure 1
    assert_output --partial 'tensor "decoder/dmlp/0/ln1/weight" belongs to a dmlp head'
    [ ! -e "$TMP/x.mpt" ]
}
