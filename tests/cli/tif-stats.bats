#!/usr/bin/env bats
# tif-stats: agreement with GDAL on real files, options, and every bad input.

load helpers

L7=$DATA/L7_ETMs.tif

@test "matches gdalinfo -stats on the bundled Landsat scene" {
    run bash -c "'$BIN/tif-stats' '$L7' | '$ROOT/tests/cli/compare_gdal.py' '$L7'"
    assert_success
    assert_output --partial "6 bands agree with gdalinfo"
}

@test "matches gdalinfo -stats on other real TIFFs (RGBA, 16x16 tiles)" {
    run bash -c "'$BIN/tif-stats' '$DATA/python.tiff' | '$ROOT/tests/cli/compare_gdal.py' '$DATA/python.tiff'"
    assert_success
}

@test "matches gdalinfo -stats on every sample type and layout" {
    for opts in "-ot UInt16 -scale 0 255 0 65535 -co TILED=YES" \
                "-ot Int16 -scale 0 255 -32768 32767 -co INTERLEAVE=BAND" \
                "-ot Int32 -scale 0 255 -2000000000 2000000000" \
                "-ot Float32 -scale 0 255 0 1 -co COMPRESS=DEFLATE -co PREDICTOR=3" \
                "-ot Float64 -scale 0 255 -1 1 -co TILED=YES -co COMPRESS=LZW" \
                "-a_nodata 47" \
                "-b 1 -b 2 -b 3 -co COMPRESS=JPEG -co PHOTOMETRIC=YCBCR"; do
        gdal_translate -q $opts "$L7" "$TMP/v.tif"
        run bash -c "'$BIN/tif-stats' '$TMP/v.tif' | '$ROOT/tests/cli/compare_gdal.py' '$TMP/v.tif'"
        [ "$status" -eq 0 ] || { echo "variant: $opts"; echo "$output"; return 1; }
    done
}

@test "--scale divides every statistic, as gdalinfo's values / 10000" {
    gdal_translate -q -ot UInt16 -scale 0 255 0 10000 "$L7" "$TMP/s2.tif"
    run bash -c "'$BIN/tif-stats' --scale 10000 '$TMP/s2.tif' | '$ROOT/tests/cli/compare_gdal.py' '$TMP/s2.tif' 10000"
    assert_success
}

@test "statistics over several files equal numpy over their concatenation" {
    gdal_translate -q -srcwin 0 0 200 352 "$L7" "$TMP/a.tif"
    gdal_translate -q -srcwin 200 0 149 352 -ot Float32 -scale 0 255 0 255.5 "$L7" "$TMP/b.tif"
    run bash -c "'$BIN/tif-stats' -p 2,50,98 '$TMP/a.tif' '$TMP/b.tif' > '$TMP/out.json' && $PY - '$TMP' <<'PY'
import json, sys, numpy as np
from osgeo import gdal
d = sys.argv[1]
ours = json.load(open(d + '/out.json'))
a = gdal.Open(d + '/a.tif').ReadAsArray().astype(np.float64).reshape(6, -1)
b = gdal.Open(d + '/b.tif').ReadAsArray().astype(np.float64).reshape(6, -1)
x = np.concatenate([a, b], axis=1)
assert ours['files'] == 2
for k, band in enumerate(ours['bands'].values()):
    v = x[k]
    assert band['count'] == v.size, (band['count'], v.size)
    for key, want in (('mean', v.mean()), ('std', v.std()), ('min', v.min()), ('max', v.max())):
        assert abs(band[key] - want) <= 1e-9 * abs(want), (k, key, band[key], want)
    for p in (2, 50, 98):
        want = np.percentile(v, p)
        got = band['percentiles'][str(p)]
        assert got == want, (k, p, got, want)
print('ok')
PY"
    assert_success
    assert_output "ok"
}

@test "histogram counts equal numpy.histogram" {
    run bash -c "'$BIN/tif-stats' --hist 16 '$L7' > '$TMP/h.json' && $PY - '$TMP/h.json' '$L7' <<'PY'
import json, sys, numpy as np
from osgeo import gdal
ours = json.load(open(sys.argv[1]))
a = gdal.Open(sys.argv[2]).ReadAsArray().astype(np.float64)
for k, band in enumerate(ours['bands'].values()):
    counts, _ = np.histogram(a[k], bins=16, range=(a[k].min(), a[k].max()))
    assert band['histogram']['counts'] == counts.tolist(), k
print('ok')
PY"
    assert_success
    assert_output "ok"
}

@test "output does not depend on the number of threads" {
    for i in 1 2 3 4 5 6 7; do
        gdal_translate -q -srcwin $((i * 20)) $((i * 10)) 150 170 -ot Float32 -scale 0 255 0 0.731 "$L7" "$TMP/t$i.tif"
    done
    "$BIN/tif-stats" -j 1 -p 1,99 --hist 8 "$TMP"/t*.tif > "$TMP/one.json"
    "$BIN/tif-stats" -j 2 -p 1,99 --hist 8 "$TMP"/t*.tif > "$TMP/two.json"
    "$BIN/tif-stats" -j 5 -p 1,99 --hist 8 "$TMP"/t*.tif > "$TMP/five.json"
    cmp "$TMP/one.json" "$TMP/two.json"
    cmp "$TMP/one.json" "$TMP/five.json"
}

@test "-o writes a stats message that Python reads with FORMAT.md's snippet" {
    run "$BIN/tif-stats" -q -p 2,98 -o "$TMP/stats.mpt" "$L7"
    assert_success
    run $PY - "$TMP/stats.mpt" <<'PY'
import sys, msgpack, numpy as np
msgs = []
for msg in msgpack.Unpacker(open(sys.argv[1], "rb"), raw=False, max_buffer_size=2**31):
    t = {name: np.frombuffer(x["data"], dtype=x["dtype"]).reshape(x["shape"])
         for name, x in msg["tensors"].items()}
    msgs.append((msg, t))
assert len(msgs) == 1
msg, t = msgs[0]
assert msg["v"] == 1 and msg["kind"] == "stats"
assert msg["meta"]["bands"] == ["B1", "B2", "B3", "B4", "B5", "B6"]
assert msg["meta"]["scale"] == 1.0 and msg["meta"]["nodata"] is None
assert t["mean"].shape == (6,) and t["count"][0] == 122848
assert abs(t["mean"][0] - 79.147719132587) < 1e-9
assert abs(t["std"][0] - 14.694064257216) < 1e-9
assert t["percentiles"].shape == (6, 2) and t["percentiles"][0].tolist() == [58.0, 108.0]
print("ok")
PY
    assert_success
    assert_output "ok"
}

@test "-o - writes the message to stdout and no JSON" {
    run bash -c "'$BIN/tif-stats' -o - '$L7' | $PY -c 'import sys, msgpack; m = msgpack.unpackb(sys.stdin.buffer.read()); print(m[\"kind\"])'"
    assert_success
    assert_output "stats"
}

@test "inputs from --list and from stdin, bands by name and index" {
    printf '# a comment\n\n%s\n' "$L7" > "$TMP/list.txt"
    run bash -c "'$BIN/tif-stats' --list '$TMP/list.txt' --bands B4,2 | $PY -c 'import json, sys; d = json.load(sys.stdin); print(list(d[\"bands\"]), d[\"bands\"][\"B2\"][\"max\"])'"
    assert_success
    assert_output "['B4', 'B2'] 255"
    run bash -c "echo '$L7' | '$BIN/tif-stats' | $PY -c 'import json, sys; print(json.load(sys.stdin)[\"files\"])'"
    assert_success
    assert_output "1"
}

@test "a band set directory: bands resampled to the finest grid" {
    mkdir "$TMP/patch"
    gdal_translate -q -b 1 "$L7" "$TMP/patch/p_B02.tif"
    gdal_translate -q -b 2 -outsize 50% 50% "$L7" "$TMP/patch/p_B05.tif"
    run bash -c "'$BIN/tif-stats' '$TMP/patch' | $PY -c 'import json, sys; d = json.load(sys.stdin); print(sorted(d[\"bands\"]), [b[\"count\"] for b in d[\"bands\"].values()])'"
    assert_success
    assert_output "['B02', 'B05'] [122848, 122848]"
}

@test "--nodata excludes a value" {
    run bash -c "'$BIN/tif-stats' --nodata 255 --bands 1 '$L7' | $PY -c 'import json, sys; b = json.load(sys.stdin)[\"bands\"][\"B1\"]; print(b[\"count\"] < 122848, b[\"max\"] < 255)'"
    assert_success
    assert_output "True True"
}

@test "a missing file: exit 1 and a message naming it" {
    run "$BIN/tif-stats" "$TMP/nope.tif"
    assert_failure 1
    assert_output --partial "tif-stats: $TMP/nope.tif: No such file or directory"
}

@test "not a TIFF: exit 1 and a clear message" {
    echo "hello" > "$TMP/text.tif"
    run "$BIN/tif-stats" "$TMP/text.tif"
    assert_failure 1
    assert_output --partial "tif-stats: $TMP/text.tif: not a readable TIFF"
}

@test "a truncated TIFF: exit 1, no crash" {
    head -c 200000 "$L7" > "$TMP/cut.tif"
    run "$BIN/tif-stats" "$TMP/cut.tif"
    assert_failure 1
    assert_output --partial "tif-stats: $TMP/cut.tif: "
}

@test "an empty file: exit 1" {
    : > "$TMP/empty.tif"
    run "$BIN/tif-stats" "$TMP/empty.tif"
    assert_failure 1
    assert_output --partial "empty file"
}

@test "mismatched band counts: exit 1 naming both files" {
    gdal_translate -q -b 1 -b 2 "$L7" "$TMP/two.tif"
    run "$BIN/tif-stats" "$L7" "$TMP/two.tif"
    assert_failure 1
    assert_output --partial "$TMP/two.tif: has 2 bands, but $L7 has 6"
}

@test "an empty list: usage error, exit 2" {
    : > "$TMP/empty.txt"
    run "$BIN/tif-stats" --list "$TMP/empty.txt"
    assert_failure 2
    assert_output --partial "no input files"
}

@test "bad options: usage errors, exit 2" {
    run "$BIN/tif-stats" --hist 0 "$L7"
    assert_failure 2
    assert_output --partial "--hist: 0 is out of range"
    run "$BIN/tif-stats" --percentiles 2,200 "$L7"
    assert_failure 2
    run "$BIN/tif-stats" --scale abc "$L7"
    assert_failure 2
    assert_output --partial "--scale: 'abc' is not a number"
    run "$BIN/tif-stats" --frobnicate "$L7"
    assert_failure 2
    run "$BIN/tif-stats" --bands B9 "$L7"
    assert_failure 1
    assert_output --partial "no band 'B9'"
}

@test "an unwritable -o: exit 1, and no partial file" {
    run "$BIN/tif-stats" -o /nonexistent/dir/stats.mpt "$L7"
    assert_failure 1
    assert_output --partial "/nonexistent/dir/stats.mpt"
}

@test "--help and --version" {
    run "$BIN/tif-stats" --help
    assert_success
    assert_output --partial "Usage: tif-stats"
    run "$BIN/tif-stats" --version
    assert_success
    assert_output --regexp "^tif-stats \(geodino\) [0-9]+\.[0-9]+\.[0-9]+$"
}

@test "--progress reports files, rate and ETA on stderr; --quiet and pipes are silent" {
    run bash -c "'$BIN/tif-stats' --progress '$L7' '$L7' 2>&1 >/dev/null"
    assert_success
    assert_output --partial "2/2 files"
    assert_output --partial "files/s, ETA"
    run bash -c "'$BIN/tif-stats' '$L7' 2>&1 >/dev/null"
    assert_success
    assert_output ""
}
