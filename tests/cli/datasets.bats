#!/usr/bin/env bats
# The evaluation sets: the real Landsat land-cover tiles and the synthetic
# texture set (pipelines/), and the band-statistics baseline on them.

load helpers

@test "synthetic set: seeded, balanced, and band statistics cannot solve it" {
    $PY "$ROOT/pipelines/synthetic-textures.py" "$TMP/a" --seed 3 --train 60 --test 30 > /dev/null
    $PY "$ROOT/pipelines/synthetic-textures.py" "$TMP/b" --seed 3 --train 60 --test 30 > /dev/null
    $PY "$ROOT/pipelines/synthetic-textures.py" "$TMP/c" --seed 4 --train 60 --test 30 > /dev/null
    (cd "$TMP/a" && find . -name '*.tif' | sort | xargs md5sum) > "$TMP/a.md5"
    (cd "$TMP/b" && find . -name '*.tif' | sort | xargs md5sum) > "$TMP/b.md5"
    (cd "$TMP/c" && find . -name '*.tif' | sort | xargs md5sum) > "$TMP/c.md5"
    cmp "$TMP/a.md5" "$TMP/b.md5"
    run cmp -s "$TMP/a.md5" "$TMP/c.md5"
    assert_failure
    [ "$(wc -l < "$TMP/a/train.txt")" -eq 360 ]
    [ "$(wc -l < "$TMP/a/test.txt")" -eq 180 ]
    for s in train test; do
        $PY "$ROOT/pipelines/band-stats-features.py" "$TMP/a/$s.txt" "$TMP/$s.mpt" --classes "$TMP/a/classes.txt"
    done
    run "$BIN/knn-eval" --train "$TMP/train.mpt" --test "$TMP/test.mpt" -k 20 --json -
    assert_success
    # six classes: chance is 16.7%; the baseline must stay near it
    run $PY -c "import json, sys; r = json.load(open(sys.argv[1]))['results'][0]; print(r['top1'] < 30)" <(printf '%s' "$output")
    assert_output "True"
}

@test "synthetic set: every band has the same mean and std in both mixtures" {
    $PY "$ROOT/pipelines/synthetic-textures.py" "$TMP/s" --seed 1 --train 80 --test 1 > /dev/null
    run $PY - "$TMP/s/train.txt" <<'PY'
import sys, numpy as np
from osgeo import gdal
per = {}
for line in open(sys.argv[1]):
    p, l = line.rsplit(None, 1)
    x = gdal.Open(p).ReadAsArray().astype(float).reshape(6, -1) / 10000
    per.setdefault(int(l) % 2, []).append(np.concatenate([x.mean(1), x.std(1)]))
a, b = (np.array(per[k]).mean(0) for k in (0, 1))
assert np.all(np.abs(a - b) < 0.01), (a, b)
print("ok")
PY
    assert_success
    assert_output "ok"
}

@test "Landsat set: labels follow the index rule and train/test share no pixel" {
    $PY "$ROOT/pipelines/l7-landcover.py" "$TMP/l7" > "$TMP/summary.txt"
    run $PY - "$TMP/l7" "$DATA/L7_ETMs.tif" <<'PY'
import os, re, sys, numpy as np
from osgeo import gdal
out, scene = sys.argv[1], sys.argv[2]
a = gdal.Open(scene).ReadAsArray().astype(float)
g, r, n = a[1], a[2], a[3]
water = (g - n) / (g + n + 1e-9) > 0.4
veg = ~water & ((n - r) / (n + r + 1e-9) > 0.2)
cls = np.where(water, 0, np.where(veg, 1, 2))
masks = {}
for split in ("train", "test"):
    m = np.zeros(cls.shape, bool)
    for line in open(os.path.join(out, split + ".txt")):
        path, label = line.rsplit(None, 1)
        y, x = map(int, re.search(r"r(\d+)_c(\d+)", path).groups())
        t = gdal.Open(path).ReadAsArray()
        assert t.shape == (6, 24, 24) and (t == a[:, y:y + 24, x:x + 24]).all(), path
        votes = np.bincount(cls[y:y + 24, x:x + 24].ravel(), minlength=3)
        assert int(label) == int(np.argmax(votes)), (path, label, votes)
        m[y:y + 24, x:x + 24] = True
    masks[split] = m
assert not (masks["train"] & masks["test"]).any(), "a pixel is in both sets"
print("ok")
PY
    assert_success
    assert_output "ok"
    # every class in both sets
    run $PY -c "import json, sys; c = json.load(open(sys.argv[1]))['counts']; print(min(c['train']) > 20 and min(c['test']) > 20)" "$TMP/l7/summary.json"
    assert_output "True"
}
