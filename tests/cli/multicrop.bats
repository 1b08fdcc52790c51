#!/usr/bin/env bats
# multicrop: normal use on the real Landsat scene, reproducibility, every
# bad input.  The stats message and every check of the output are made
# with numpy (tests/cli/multicrop_tool.py), independently of the C code.
load helpers

MCT="$BATS_TEST_DIRNAME/multicrop_tool.py"
# small views keep the ASan run short
SMALL=(--global-size 48 --local-size 24 --local-crops-number 3 --batch-size 2 --threads 2)
NOAUG=(--jitter-prob 0 --collapse-prob 0 0 0 --blur-prob 0 0 0 --solarize-prob 0 0 0)

# stats.mpt of the bundled scene (6 bands), values divided by $1 (default 1)
stats_l7() {
    gdal_translate -q -of ENVI "$DATA/L7_ETMs.tif" "$TMP/l7.raw"
    "$PY" "$MCT" stats "$TMP/l7.raw" "$TMP/stats.mpt" "${1:-1}"
}

# n differently named copies of the scene: $TMP/s1.tif ...
copies() {
    for i in $(seq "$1"); do cp "$DATA/L7_ETMs.tif" "$TMP/s$i.tif"; done
}

@test "multicrop: --help lists every option, --version" {
    run "$BIN/multicrop" --help
    assert_success
    for o in --stats --list --bands --scale --output --dtype --batch-size --epochs --rank --world \
             --seed --threads --skip-bad --preview --rgb-bands --recipe --global-crops-scale \
             --local-crops-number --ssr-prob --solarize-threshold --blur-prob --jitter-bands; do
        assert_output --partial -- "$o"
    done
    run "$BIN/multicrop" --version
    assert_success
    assert_output --partial "multicrop (geodino)"
}

@test "multicrop: batches of the real scene have the documented shapes" {
    stats_l7 255
    copies 5
    run "$BIN/multicrop" --stats "$TMP/stats.mpt" "${SMALL[@]}" -o "$TMP/out.mpt" "$TMP"/s?.tif
    assert_success
    run "$PY" "$MCT" check "$TMP/out.mpt" 2 3 6 48 24 2
    assert_success
    assert_output "5"
    run "$PY" "$MCT" dump "$TMP/out.mpt"
    assert_success
    assert_line --index 0 --regexp '^batch 0 0 <f4 '
    assert_line --index 2 --regexp '^batch 0 2 <f4 [^ ]+$'
}

@test "multicrop: the dino and s2 recipes give their sizes; flags override them" {
    stats_l7 255
    run "$BIN/multicrop" --stats "$TMP/stats.mpt" --recipe s2 --batch-size 1 -o "$TMP/s2.mpt" \
        "$DATA/L7_ETMs.tif"
    assert_success
    run "$PY" "$MCT" check "$TMP/s2.mpt" 2 6 6 120 56
    assert_success
    run "$BIN/multicrop" --stats "$TMP/stats.mpt" --local-size 32 --recipe dino --batch-size 1 \
        -o "$TMP/d.mpt" "$DATA/L7_ETMs.tif"
    assert_success
    run "$PY" "$MCT" check "$TMP/d.mpt" 2 8 6 224 32
    assert_success
    run "$BIN/multicrop" --stats "$TMP/stats.mpt" "${SMALL[@]}" --interp bicubic -o "$TMP/c.mpt" \
        "$DATA/L7_ETMs.tif"
    assert_success
    run "$PY" "$MCT" check "$TMP/c.mpt" 2 3 6 48 24
    assert_output "1"
}

# The whole scene as one un-augmented view, normalized with STATS: every
# band must come out with mean ~0 and std ~1.
assert_scene_normalizes() {
    run "$BIN/multicrop" --stats "$TMP/stats.mpt" "${NOAUG[@]}" --global-crops-scale 1 1 \
        --global-size 352 --global-crops-number 1 --local-crops-number 0 --batch-size 1 \
        -o "$TMP/out.mpt" "$DATA/L7_ETMs.tif"
    assert_success
    run "$PY" "$MCT" normcheck "$TMP/out.mpt"
    assert_success
    [ "${#lines[@]}" -eq 6 ]
    for l in "${lines[@]}"; do
        read -r m s <<<"$l"
        awk -v m="$m" -v s="$s" 'BEGIN { exit !(m > -0.02 && m < 0.02 && s > 0.97 && s < 1.01) }' \
            || fail "band mean/std $l"
    done
}

@test "multicrop: normalized views have mean ~0 and std ~1 per band over the scene" {
    stats_l7
    assert_scene_normalizes "$TMP/stats.mpt"
}

@test "multicrop: with tif-stats' message (--scale 255) the views normalize to ~0/~1" {
    "$BIN/tif-stats" --scale 255 -o "$TMP/stats.mpt" "$DATA/L7_ETMs.tif" >/dev/null
    assert_scene_normalizes "$TMP/stats.mpt"
}

@test "multicrop: the stats' scale is honoured: /255 stats give the same views" {
    stats_l7
    mv "$TMP/stats.mpt" "$TMP/s1.mpt"
    stats_l7 255
    for s in s1 stats; do
        "$BIN/multicrop" --stats "$TMP/$s.mpt" "${SMALL[@]}" "${NOAUG[@]}" -o "$TMP/$s.out" \
            "$DATA/L7_ETMs.tif"
    done
    run "$PY" -c "
import sys; sys.path.insert(0, '$BATS_TEST_DIRNAME')
import numpy as np, multicrop_tool as t
a = [x['global'][1] for _, x in t.arrays('$TMP/s1.out')]
b = [x['global'][1] for _, x in t.arrays('$TMP/stats.out')]
print(np.abs(a[0] - b[0]).max() < 1e-4)"
    assert_output "True"
}

@test "multicrop: same seed, same bytes for 1 and 2 threads; another seed differs" {
    stats_l7 255
    copies 4
    "$BIN/multicrop" --stats "$TMP/stats.mpt" "${SMALL[@]}" --recipe s2 --global-size 48 \
        --local-size 24 --threads 1 --seed 7 "$TMP"/s?.tif >"$TMP/t1.mpt"
    "$BIN/multicrop" --stats "$TMP/stats.mpt" "${SMALL[@]}" --recipe s2 --global-size 48 \
        --local-size 24 --threads 2 --seed 7 "$TMP"/s?.tif >"$TMP/t2.mpt"
    "$BIN/multicrop" --stats "$TMP/stats.mpt" "${SMALL[@]}" --recipe s2 --global-size 48 \
        --local-size 24 --threads 2 --seed 8 "$TMP"/s?.tif >"$TMP/t3.mpt"
    cmp "$TMP/t1.mpt" "$TMP/t2.mpt"
    run cmp -s "$TMP/t1.mpt" "$TMP/t3.mpt"
    assert_failure
}

@test "multicrop: f16 and bf16 output agree with f32 to their precision" {
    stats_l7 255
    for d in f32 f16 bf16; do
        "$BIN/multicrop" --stats "$TMP/stats.mpt" "${SMALL[@]}" --dtype $d -o "$TMP/$d.mpt" \
            "$DATA/L7_ETMs.tif"
    done
    run "$PY" -c "
import sys; sys.path.insert(0, '$BATS_TEST_DIRNAME')
import numpy as np, multicrop_tool as t
get = lambda d: [x for _, x in t.arrays('$TMP/%s.mpt' % d)][0]
a, h, b = get('f32'), get('f16'), get('bf16')
print(h['global'][0], b['global'][0])
for x, tol in ((h, 2**-11), (b, 2**-8)):
    for k in ('global', 'local'):
        err = np.abs(x[k][1] - a[k][1]) / np.maximum(np.abs(a[k][1]), 2**-14)
        assert err.max() <= tol * 1.0001, (k, err.max())
print('ok')"
    assert_success
    assert_line --index 0 "<f2 bf16"
    assert_line --index 1 "ok"
}

@test "multicrop: each epoch holds every sample once, in a new order" {
    stats_l7 255
    copies 4
    run "$BIN/multicrop" --stats "$TMP/stats.mpt" "${SMALL[@]}" --batch-size 4 --epochs 5 \
        -o "$TMP/out.mpt" "$TMP"/s?.tif
    assert_success
    run "$PY" "$MCT" dump "$TMP/out.mpt"
    assert_success
    [ "${#lines[@]}" -eq 5 ]
    for e in 0 1 2 3 4; do
        assert_line --index $e --regexp "^batch $e 0 <f4 "
        sorted=$(echo "${lines[$e]}" | cut -d' ' -f5- | tr ' ' '\n' | sort | tr '\n' ' ')
        [ "$sorted" = "$TMP/s1.tif $TMP/s2.tif $TMP/s3.tif $TMP/s4.tif " ]
    done
    orders=$(printf '%s\n' "${lines[@]}" | cut -d' ' -f5- | sort -u | wc -l)
    [ "$orders" -gt 1 ]
}

@test "multicrop: --rank/--world give disjoint equal shares" {
    stats_l7 255
    copies 5
    for r in 0 1; do
        "$BIN/multicrop" --stats "$TMP/stats.mpt" "${SMALL[@]}" --batch-size 8 --world 2 \
            --rank $r -o "$TMP/r$r.mpt" "$TMP"/s?.tif
        "$PY" "$MCT" dump "$TMP/r$r.mpt" | cut -d' ' -f5- | tr ' ' '\n' >"$TMP/r$r.txt"
    done
    [ "$(wc -l <"$TMP/r0.txt")" -eq 2 ]
    [ "$(wc -l <"$TMP/r1.txt")" -eq 2 ]
    [ -z "$(comm -12 <(sort "$TMP/r0.txt") <(sort "$TMP/r1.txt"))" ]
    run "$BIN/multicrop" --stats "$TMP/stats.mpt" --world 2 --rank 2 "$TMP/s1.tif"
    assert_failure 2
    assert_output --partial "--rank 2"
}

@test "multicrop: inputs from --list and from stdin" {
    stats_l7 255
    copies 3
    printf '%s\n' "# samples" "$TMP/s1.tif" "" "$TMP/s2.tif" >"$TMP/list.txt"
    run "$BIN/multicrop" --stats "$TMP/stats.mpt" "${SMALL[@]}" --list "$TMP/list.txt" -o "$TMP/a.mpt"
    assert_success
    run "$PY" "$MCT" check "$TMP/a.mpt" 2 3 6 48 24
    assert_output "2"
    printf '%s\n' "$TMP/s1.tif" "$TMP/s2.tif" "$TMP/s3.tif" |
        "$BIN/multicrop" --stats "$TMP/stats.mpt" "${SMALL[@]}" -o "$TMP/b.mpt"
    run "$PY" "$MCT" check "$TMP/b.mpt" 2 3 6 48 24
    assert_output "3"
}

@test "multicrop: a closed stdout ends it quietly with status 0" {
    stats_l7 255
    run bash -c "'$BIN/multicrop' --stats '$TMP/stats.mpt' ${SMALL[*]} --epochs 0 \
        '$DATA/L7_ETMs.tif' 2>'$TMP/err' | head -c 100 >/dev/null; echo \${PIPESTATUS[0]}"
    assert_output "0"
    [ ! -s "$TMP/err" ]
}

@test "multicrop: --preview writes a PNG contact sheet of the views" {
    stats_l7 255
    copies 3
    run "$BIN/multicrop" --stats "$TMP/stats.mpt" "${SMALL[@]}" --batch-size 3 --preview-samples 2 \
        --preview "$TMP/sheet.png" --rgb-bands 3,2,1 -o "$TMP/out.mpt" "$TMP"/s?.tif
    assert_success
    # width 2 + 2*(48+2) + 3*(24+2), height 2 + 2*(48+2), from the PNG header
    run "$PY" -c "
import struct; d = open('$TMP/sheet.png', 'rb').read(24)
assert d[:8] == b'\x89PNG\r\n\x1a\n'; print(*struct.unpack('>II', d[16:24]))"
    assert_output "180 102"
    run "$BIN/multicrop" --stats "$TMP/stats.mpt" --rgb-bands 7,2,1 --preview "$TMP/x.png" \
        "$TMP/s1.tif"
    assert_failure 2
    assert_output --partial "--rgb-bands"
}

@test "multicrop: a missing sample is an error naming it; -o keeps the old file" {
    stats_l7 255
    echo old >"$TMP/out.mpt"
    run "$BIN/multicrop" --stats "$TMP/stats.mpt" "${SMALL[@]}" -o "$TMP/out.mpt" \
        "$DATA/L7_ETMs.tif" "$TMP/missing.tif"
    assert_failure 1
    assert_output --regexp "^multicrop: .*missing.tif: "
    [ "$(cat "$TMP/out.mpt")" = old ]
}

@test "multicrop: a sample with another band count than the stats is an error" {
    "$PY" -c "
import sys; sys.path.insert(0, '$BATS_TEST_DIRNAME')
import multicrop_tool as t, numpy as np
" # numpy present
    gdal_translate -q -of ENVI "$DATA/L7_ETMs.tif" "$TMP/l7.raw"
    gdal_translate -q -of ENVI -b 1 -b 2 -b 3 "$DATA/L7_ETMs.tif" "$TMP/rgb.raw"
    "$PY" "$MCT" stats "$TMP/rgb.raw" "$TMP/stats3.mpt"
    run "$BIN/multicrop" --stats "$TMP/stats3.mpt" "${SMALL[@]}" "$DATA/L7_ETMs.tif"
    assert_failure 1
    assert_output --partial "L7_ETMs.tif: 6 bands, the stats message has 3"
    run "$BIN/multicrop" --stats "$TMP/stats3.mpt" "${SMALL[@]}" --bands 1,2,3 -o "$TMP/o.mpt" \
        "$DATA/L7_ETMs.tif"
    assert_success
    run "$PY" "$MCT" check "$TMP/o.mpt" 2 3 3 48 24
    assert_output "1"
}

@test "multicrop: bad stats messages are errors naming the file" {
    run "$BIN/multicrop" --stats "$TMP/none.mpt" "$DATA/L7_ETMs.tif"
    assert_failure 1
    assert_output --partial "none.mpt"
    run "$BIN/multicrop" --stats "$DATA/L7_ETMs.tif" "$DATA/L7_ETMs.tif"
    assert_failure 1
    assert_output --regexp "^multicrop: .*L7_ETMs.tif: "
    "$PY" -c "
import msgpack, numpy as np
t = lambda a: {'dtype': '<f8', 'shape': [len(a)], 'data': np.array(a, '<f8').tobytes()}
open('$TMP/zero.mpt', 'wb').write(msgpack.packb({'v': 1, 'kind': 'stats', 'meta': {},
    'tensors': {'mean': t([1, 2]), 'std': t([1, 0])}}, use_bin_type=True))
open('$TMP/nostd.mpt', 'wb').write(msgpack.packb({'v': 1, 'kind': 'stats', 'meta': {},
    'tensors': {'mean': t([1, 2])}}, use_bin_type=True))"
    run "$BIN/multicrop" --stats "$TMP/zero.mpt" "$DATA/L7_ETMs.tif"
    assert_failure 1
    assert_output --partial "zero.mpt: band 2"
    "$PY" -c "
import msgpack, numpy as np
t = lambda a: {'dtype': '<f8', 'shape': [len(a)], 'data': np.array(a, '<f8').tobytes()}
open('$TMP/tiny.mpt', 'wb').write(msgpack.packb({'v': 1, 'kind': 'stats', 'meta': {},
    'tensors': {'mean': t([1] * 6), 'std': t([1, 1, 1e-60, 1, 1, 1])}}, use_bin_type=True))"
    run "$BIN/multicrop" --stats "$TMP/tiny.mpt" "$DATA/L7_ETMs.tif"
    assert_failure 1
    assert_output --partial "tiny.mpt: band 3"
    run "$BIN/multicrop" --stats "$TMP/nostd.mpt" "$DATA/L7_ETMs.tif"
    assert_failure 1
    assert_output --partial '"std"'
}

@test "multicrop: a sample that is not a raster is an error; --skip-bad goes on" {
    stats_l7 255
    copies 3
    echo "not a tiff" >"$TMP/s2.tif"
    run "$BIN/multicrop" --stats "$TMP/stats.mpt" "${SMALL[@]}" -o "$TMP/out.mpt" "$TMP"/s?.tif
    assert_failure 1
    assert_output --regexp "^multicrop: .*s2.tif: "
    run "$BIN/multicrop" --stats "$TMP/stats.mpt" "${SMALL[@]}" --skip-bad --epochs 2 \
        -o "$TMP/out.mpt" "$TMP"/s?.tif "$TMP/missing.tif"
    assert_success
    assert_output --partial "2 bad samples skipped"
    run "$PY" "$MCT" dump "$TMP/out.mpt"
    refute_output --partial "s2.tif"
    refute_output --partial "missing.tif"
    run "$PY" "$MCT" check "$TMP/out.mpt" 2 3 6 48 24 2
    assert_output "4"
    run "$BIN/multicrop" --stats "$TMP/stats.mpt" --skip-bad "$TMP/s2.tif" "$TMP/missing.tif"
    assert_failure 1
    assert_output --partial "no sample could be read"
}

@test "multicrop: --jitter-bands all scales every band of a view by one factor; each by its own" {
    stats_l7 255
    copies 2
    # whole-scene views without geometry changes, so that plain and
    # jittered views differ by the jitter alone
    GEO=(--global-crops-scale 1 1 --aspect-ratio 1 1 --flip-prob 0 --local-crops-number 0
         --global-size 32 --collapse-prob 0 0 0 --blur-prob 0 0 0 --solarize-prob 0 0 0 --seed 3)
    "$BIN/multicrop" --stats "$TMP/stats.mpt" "${GEO[@]}" --jitter-prob 0 -o "$TMP/plain.mpt" "$TMP"/s?.tif
    for what in "--brightness 0.5 --contrast 0" "--brightness 0 --contrast 0.5"; do
        "$BIN/multicrop" --stats "$TMP/stats.mpt" "${GEO[@]}" --jitter-prob 1 $what \
            --jitter-bands all -o "$TMP/all.mpt" "$TMP"/s?.tif
        "$BIN/multicrop" --stats "$TMP/stats.mpt" "${GEO[@]}" --jitter-prob 1 $what \
            -o "$TMP/each.mpt" "$TMP"/s?.tif
        run "$PY" "$MCT" jitter "$TMP/stats.mpt" "$TMP/plain.mpt" "$TMP/all.mpt"
        assert_success
        read -r spread moved <<< "$output"
        # one factor for all bands (to float32 rounding), and not 1
        "$PY" -c "import sys; sys.exit(not ($spread < 1e-3 and $moved > 0.05))" || fail "all, $what: $output"
        run "$PY" "$MCT" jitter "$TMP/stats.mpt" "$TMP/plain.mpt" "$TMP/each.mpt"
        assert_success
        read -r spread moved <<< "$output"
        "$PY" -c "import sys; sys.exit(not $spread > 0.05)" || fail "each, $what: $output"
    done
    run "$BIN/multicrop" --stats "$TMP/stats.mpt" --jitter-bands some "$TMP/s1.tif"
    assert_failure 2
    assert_output --partial "--jitter-bands"
}

@test "multicrop: bad options are usage errors (exit 2)" {
    stats_l7 255
    f="$DATA/L7_ETMs.tif"
    for args in "--dtype f64" "--global-crops-scale 0.9 0.1" "--global-crops-scale 0.5" \
                "--batch-size 0" "--threads x" "--recipe imagenet" "--no-such-option" \
                "--blur-prob 1,2,0" "--collapse-prob 0.1,0.2" "--epochs -1" "--global-size 0" \
                "--interp nearest" "--seed" "--skip-bad=yes"; do
        run "$BIN/multicrop" --stats "$TMP/stats.mpt" $args "$f"
        [ "$status" -eq 2 ] || fail "$args: status $status"
        [[ "${lines[0]}" == multicrop:* ]] || fail "$args: ${lines[0]}"
    done
    run "$BIN/multicrop" "$f"
    assert_failure 2
    assert_output --partial "--stats is required"
    run "$BIN/multicrop" --stats "$TMP/stats.mpt" </dev/null
    assert_failure 2
    assert_output --partial "no input samples"
}

@test "multicrop: -o naming a FIFO writes into it and leaves it a FIFO" {
    # (renaming a temporary file over it would replace the FIFO, or /dev/null)
    stats_l7 255
    mkfifo "$TMP/fifo"
    cat "$TMP/fifo" >"$TMP/got" &
    run "$BIN/multicrop" --stats "$TMP/stats.mpt" "${SMALL[@]}" -o "$TMP/fifo" "$DATA/L7_ETMs.tif"
    wait
    assert_success
    [ -p "$TMP/fifo" ]
    run "$PY" "$MCT" check "$TMP/got" 2 3 6 48 24
    assert_output "1"
    run "$BIN/multicrop" --stats "$TMP/stats.mpt" -o "$TMP" "$DATA/L7_ETMs.tif"
    assert_failure 1
    assert_output --partial "is a directory"
    run "$BIN/multicrop" --stats "$TMP/stats.mpt" --preview "$TMP/fifo" -o "$TMP/x.mpt" \
        "$DATA/L7_ETMs.tif"
    assert_failure 2
    assert_output --partial "not a regular file"
    [ -p "$TMP/fifo" ]
}

@test "multicrop: band sets (a directory, a comma-separated list) are samples" {
    mkdir "$TMP/p1"
    for b in 1 2 3; do
        gdal_translate -q -b $b "$DATA/L7_ETMs.tif" "$TMP/p1/p1_B0$b.tif"
    done
    gdal_translate -q -of ENVI -b 1 -b 2 -b 3 "$DATA/L7_ETMs.tif" "$TMP/rgb.raw"
    "$PY" "$MCT" stats "$TMP/rgb.raw" "$TMP/stats3.mpt" 255
    run "$BIN/multicrop" --stats "$TMP/stats3.mpt" "${SMALL[@]}" -o "$TMP/o.mpt" "$TMP/p1" \
        "$TMP/p1/p1_B01.tif,$TMP/p1/p1_B02.tif,$TMP/p1/p1_B03.tif"
    assert_success
    run "$PY" "$MCT" check "$TMP/o.mpt" 2 3 3 48 24
    assert_output "2"
}
