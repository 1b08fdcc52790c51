#!/usr/bin/env bats
# paste-aug: the AEL bank, adaptive copy-paste and cutmix, end to end.
load helpers

PA_DATA="$BATS_TEST_DIRNAME/paste_aug_data.py"
pydata() { "$PY" "$PA_DATA" "$@"; }
conf() { "$PY" -c "
import msgpack, numpy as np, sys
m = msgpack.unpackb(open(sys.argv[1], 'rb').read(), raw=False)
c = np.frombuffer(m['tensors']['confidence']['data'], '<f8')
print(m['kind'], m['meta']['updates'], m['meta']['momentum'], ' '.join('%.12g' % v for v in c))" "$1"; }

@test "paste-aug: --help, --version, usage errors exit 2 with one line" {
    run "$BIN/paste-aug" --help
    assert_success
    assert_output --partial "copy-paste"
    run "$BIN/paste-aug" --version
    assert_success
    assert_output --partial "paste-aug (geodino)"
    run "$BIN/paste-aug"
    assert_failure 2
    run "$BIN/paste-aug" frobnicate
    assert_failure 2
    assert_line --index 0 "paste-aug: unknown command 'frobnicate' (expected bank, copy-paste or cutmix)"
    run "$BIN/paste-aug" copy-paste --bank x --nonsense
    assert_failure 2
    assert_line --index 0 --partial "paste-aug: invalid option '--nonsense'"
    run "$BIN/paste-aug" copy-paste --bank x --prob 1.5
    assert_failure 2
    assert_line --index 0 --partial "--prob"
    run "$BIN/paste-aug" bank init -o "$TMP/b.mpt"
    assert_failure 2
}

@test "paste-aug bank: init with a value and at random, reproducibly" {
    run "$BIN/paste-aug" bank init --classes 3 --value 0.25 -o "$TMP/b.mpt"
    assert_success
    run conf "$TMP/b.mpt"
    assert_output "bank 0 0.999 0.25 0.25 0.25"
    "$BIN/paste-aug" bank init --classes 19 --seed 4 -o "$TMP/r1.mpt"
    "$BIN/paste-aug" bank init --classes 19 --seed 4 -o "$TMP/r2.mpt"
    "$BIN/paste-aug" bank init --classes 19 --seed 5 -o "$TMP/r3.mpt"
    cmp "$TMP/r1.mpt" "$TMP/r2.mpt"
    run cmp -s "$TMP/r1.mpt" "$TMP/r3.mpt"
    assert_failure
    run "$PY" -c "
import msgpack, numpy as np
c = np.frombuffer(msgpack.unpackb(open('$TMP/r1.mpt','rb').read())['tensors']['confidence']['data'], '<f8')
assert c.shape == (19,) and (c >= 0).all() and (c < 1).all() and len(set(c)) == 19
print('ok')"
    assert_output "ok"
}

@test "paste-aug bank update: momentum arithmetic from JSON and from a message" {
    "$BIN/paste-aug" bank init --classes 4 --value 0.5 --momentum 0.9 -o "$TMP/b.mpt"
    echo '[0.9, 0.1, null, 1]' > "$TMP/m.json"
    run "$BIN/paste-aug" bank update --bank "$TMP/b.mpt" --means "$TMP/m.json"
    assert_success
    run conf "$TMP/b.mpt"
    # 0.9 * 0.5 + 0.1 * m: 0.54 0.46 0.45 (absent) 0.55
    assert_output "bank 1 0.9 0.54 0.46 0.45 0.55"
    echo '{"means": {"2": 0.3}}' > "$TMP/m2.json"
    "$BIN/paste-aug" bank update --bank "$TMP/b.mpt" --means "$TMP/m2.json" --momentum 0.5 -o "$TMP/b2.mpt"
    run conf "$TMP/b2.mpt"
    assert_output "bank 2 0.5 0.27 0.23 0.375 0.275"
    # the means as a message (a trainer writes this)
    "$PY" -c "
import msgpack, numpy as np
a = np.array([1, 0, 0.5, 0.25], '<f4')
open('$TMP/m.mpt','wb').write(msgpack.packb({'v':1,'kind':'stats','meta':{},'tensors':{'means':{'dtype':'<f4','shape':[4],'data':a.tobytes()}}}))"
    "$BIN/paste-aug" bank update --bank "$TMP/b.mpt" --means "$TMP/m.mpt"
    run conf "$TMP/b.mpt"
    run "$PY" -c "
import numpy as np
c = np.array([0.54, 0.46, 0.45, 0.55]) * 0.9 + 0.1 * np.array([1, 0, 0.5, 0.25])
print('bank 2 0.9 ' + ' '.join('%.12g' % v for v in c))"
    expected=$output
    run conf "$TMP/b.mpt"
    assert_output "$expected"
}

@test "paste-aug bank update: bad means are rejected and the bank is kept" {
    "$BIN/paste-aug" bank init --classes 3 --value 0.5 -o "$TMP/b.mpt"
    cp "$TMP/b.mpt" "$TMP/orig.mpt"
    echo '[0.9, 0.1]' > "$TMP/short.json"
    run "$BIN/paste-aug" bank update --bank "$TMP/b.mpt" --means "$TMP/short.json"
    assert_failure 1
    assert_output "paste-aug: bank update: $TMP/short.json: array has 2 values, the bank has 3 classes"
    echo '[0.9, 1.5, 0]' > "$TMP/big.json"
    run "$BIN/paste-aug" bank update --bank "$TMP/b.mpt" --means "$TMP/big.json"
    assert_failure 1
    assert_output --partial "class 1: mean confidence 1.5 is not in [0, 1]"
    printf '\x81\xa1v' > "$TMP/trunc.mpt"
    run "$BIN/paste-aug" bank update --bank "$TMP/b.mpt" --means "$TMP/trunc.mpt"
    assert_failure 1
    assert_output --regexp '^paste-aug: bank update: .*trunc.mpt'
    run "$BIN/paste-aug" bank update --bank "$TMP/nope.mpt" --means "$TMP/big.json"
    assert_failure 1
    cmp "$TMP/b.mpt" "$TMP/orig.mpt"
}

@test "paste-aug copy-paste: exact alpha composition without resize, flip or crop" {
    pydata samples "$TMP/in.mpt" 6 3 24 32 1
    pydata bank "$TMP/bank.mpt" 0.1,0.5,0.9,0.3
    run "$BIN/paste-aug" copy-paste --bank "$TMP/bank.mpt" --input "$TMP/in.mpt" -o "$TMP/out.mpt" \
        --prob 1 --resize 1 1 --flip-prob 0 --num-cat 2
    assert_success
    run pydata check-copy-paste "$TMP/in.mpt" "$TMP/out.mpt"
    assert_success
    assert_output --partial "ok 6"
    # from standard input to standard output, the same bytes
    "$BIN/paste-aug" copy-paste --bank "$TMP/bank.mpt" --prob 1 --resize 1 1 --flip-prob 0 \
        --num-cat 2 < "$TMP/in.mpt" > "$TMP/out2.mpt"
    cmp "$TMP/out.mpt" "$TMP/out2.mpt"
}

@test "paste-aug copy-paste: the ignore index is never pasted, under random geometry" {
    pydata samples "$TMP/in.mpt" 8 2 40 36 2
    pydata bank "$TMP/bank.mpt" 0.2,0.2,0.2,0.2
    run "$BIN/paste-aug" copy-paste --bank "$TMP/bank.mpt" --input "$TMP/in.mpt" -o "$TMP/out.mpt" \
        --prob 1 --resize 0.3 3 --num-cat 4
    assert_success
    run pydata check-ignore "$TMP/in.mpt" "$TMP/out.mpt"
    assert_success
    assert_output "ok"
}

@test "paste-aug: same seed, same bytes, for any --threads; another seed differs" {
    pydata samples "$TMP/in.mpt" 20 3 30 30 3
    pydata bank "$TMP/bank.mpt" 0.1,0.5,0.9,0.3
    for op in copy-paste cutmix; do
        "$BIN/paste-aug" $op --bank "$TMP/bank.mpt" --input "$TMP/in.mpt" --seed 7 --threads 1 -o "$TMP/a.mpt"
        "$BIN/paste-aug" $op --bank "$TMP/bank.mpt" --input "$TMP/in.mpt" --seed 7 --threads 3 -o "$TMP/b.mpt"
        "$BIN/paste-aug" $op --bank "$TMP/bank.mpt" --input "$TMP/in.mpt" --seed 8 --threads 2 -o "$TMP/c.mpt"
        cmp "$TMP/a.mpt" "$TMP/b.mpt"
        run cmp -s "$TMP/a.mpt" "$TMP/c.mpt"
        assert_failure
    done
}

@test "paste-aug copy-paste: --exclude keeps classes out of the query" {
    pydata samples "$TMP/in.mpt" 30 1 16 16 4
    pydata bank "$TMP/bank.mpt" 0,0,0,0
    "$BIN/paste-aug" copy-paste --bank "$TMP/bank.mpt" --input "$TMP/in.mpt" -o "$TMP/out.mpt" \
        --prob 1 --num-cat 5 --exclude 0,2
    run "$PY" -c "
import msgpack
q = set()
for m in msgpack.Unpacker(open('$TMP/out.mpt','rb'), raw=False): q |= set(m['meta']['query_classes'])
print(sorted(q))"
    assert_output "[1, 3]"
    run "$BIN/paste-aug" copy-paste --bank "$TMP/bank.mpt" --input "$TMP/in.mpt" -o "$TMP/x.mpt" --exclude 0,1,2,3
    assert_failure 2
    assert_output --partial "no class left to draw"
}

@test "paste-aug: band and size mismatches are rejected, or resized with --resize-to-base" {
    pydata samples "$TMP/a.mpt" 1 3 20 20 5
    pydata samples "$TMP/b.mpt" 1 4 20 20 6
    pydata samples "$TMP/c.mpt" 1 3 10 12 7
    pydata bank "$TMP/bank.mpt" 0.5,0.5,0.5,0.5
    run "$BIN/paste-aug" copy-paste --bank "$TMP/bank.mpt" --input "$TMP/a.mpt" --paste-input "$TMP/b.mpt" \
        --prob 1 -o "$TMP/o.mpt"
    assert_failure 1
    assert_output "paste-aug: sample 0 (s0): paste sample 0 has 4 bands, the base has 3"
    [ ! -e "$TMP/o.mpt" ]
    run "$BIN/paste-aug" copy-paste --bank "$TMP/bank.mpt" --input "$TMP/a.mpt" --paste-input "$TMP/c.mpt" \
        --prob 1 -o "$TMP/o.mpt"
    assert_failure 1
    assert_output "paste-aug: sample 0 (s0): paste sample 0 is 10x12, the base is 20x20 (use --resize-to-base)"
    run "$BIN/paste-aug" copy-paste --bank "$TMP/bank.mpt" --input "$TMP/a.mpt" --paste-input "$TMP/c.mpt" \
        --prob 1 --resize-to-base -o "$TMP/o.mpt"
    assert_success
    cat "$TMP/a.mpt" "$TMP/c.mpt" > "$TMP/ac.mpt"
    run "$BIN/paste-aug" cutmix --bank "$TMP/bank.mpt" --input "$TMP/ac.mpt" -o "$TMP/o.mpt"
    assert_failure 1
    assert_output --partial "(use --resize-to-base)"
    run "$BIN/paste-aug" cutmix --bank "$TMP/bank.mpt" --input "$TMP/ac.mpt" --resize-to-base -o "$TMP/o.mpt"
    assert_success
}

@test "paste-aug: malformed input messages get a clear error" {
    pydata bank "$TMP/bank.mpt" 0.5,0.5
    pydata samples "$TMP/in.mpt" 2 1 8 8 1
    head -c 300 "$TMP/in.mpt" > "$TMP/trunc.mpt"
    run "$BIN/paste-aug" copy-paste --bank "$TMP/bank.mpt" --input "$TMP/trunc.mpt" -o "$TMP/o.mpt"
    assert_failure 1
    assert_output --regexp "^paste-aug: .*trunc.mpt"
    run "$BIN/paste-aug" copy-paste --bank "$TMP/in.mpt" --input "$TMP/in.mpt" -o "$TMP/o.mpt"
    assert_failure 1
    assert_output --partial "bank"
    run "$BIN/paste-aug" cutmix --bank "$TMP/bank.mpt" --input "$TMP/bank.mpt" -o "$TMP/o.mpt"
    assert_failure 1
    assert_output --partial 'kind is "bank", expected "sample"'
}

@test "paste-aug cutmix: box of the drawn class component, mixed exactly" {
    pydata drawn "$TMP/in.mpt"
    pydata bank "$TMP/bank.mpt" 0.5,0.1,0.6,0.2
    run "$BIN/paste-aug" cutmix --bank "$TMP/bank.mpt" --input "$TMP/in.mpt" -o "$TMP/out.mpt" --area-thresh 0
    assert_success
    run pydata check-cutmix "$TMP/in.mpt" "$TMP/out.mpt"
    assert_success
    # class 1 only (everything else excluded): present in image 0 alone, so
    # both samples take the box (1,1)-(4,4) of image 0
    "$BIN/paste-aug" cutmix --bank "$TMP/bank.mpt" --input "$TMP/in.mpt" -o "$TMP/out1.mpt" --exclude 0,2,3
    run "$PY" -c "
import msgpack
for m in msgpack.Unpacker(open('$TMP/out1.mpt','rb'), raw=False):
    print(m['meta']['class'], m['meta']['source'], m['meta']['box'], m['meta']['component'])"
    assert_output "1 0 [1, 1, 4, 4] True
1 0 [1, 1, 4, 4] True"
    run pydata check-cutmix "$TMP/in.mpt" "$TMP/out1.mpt"
    assert_success
    # a threshold above every component: a random init_cutmix box of half the image
    "$BIN/paste-aug" cutmix --bank "$TMP/bank.mpt" --input "$TMP/in.mpt" -o "$TMP/out2.mpt" \
        --exclude 0,2,3 --area-thresh 0.5
    run "$PY" -c "
import msgpack
for m in msgpack.Unpacker(open('$TMP/out2.mpt','rb'), raw=False):
    y0, x0, y1, x1 = m['meta']['box']
    assert not m['meta']['component'] and 4 <= y1 - y0 <= 8 and 5 <= x1 - x0 <= 10, m['meta']
    assert abs((y1 - y0) * (x1 - x0) - 40) <= 9, m['meta']
print('ok')"
    assert_output "ok"
    run pydata check-cutmix "$TMP/in.mpt" "$TMP/out2.mpt"
    assert_success
}

@test "paste-aug: --out-dir TIFF pairs read back with --list on the real Landsat scene" {
    # a label map for the scene (352 rows, 349 columns): written by paste-aug itself from a message
    "$PY" -c "
import msgpack, numpy as np
lab = np.zeros((352, 349), 'u1'); lab[100:200, 50:150] = 1; lab[300:, 300:] = 2; lab[:20] = 255
img = np.zeros((1, 352, 349), '<f4')
t = lambda a: {'dtype': a.dtype.str, 'shape': list(a.shape), 'data': a.tobytes()}
open('$TMP/l.mpt','wb').write(msgpack.packb({'v':1,'kind':'sample','meta':{},'tensors':{'image':t(img),'label':t(lab)}}))"
    "$BIN/paste-aug" bank init --classes 3 --value 0.5 -o "$TMP/bank.mpt"
    run "$BIN/paste-aug" copy-paste --bank "$TMP/bank.mpt" --input "$TMP/l.mpt" --out-dir "$TMP/lab" --prob 0
    assert_success
    [ -s "$TMP/lab/000000_label.tif" ]
    printf '%s %s\n' "$DATA/L7_ETMs.tif" "$TMP/lab/000000_label.tif" > "$TMP/list.txt"
    printf '%s %s\n' "$DATA/L7_ETMs.tif" "$TMP/lab/000000_label.tif" >> "$TMP/list.txt"
    run "$BIN/paste-aug" copy-paste --bank "$TMP/bank.mpt" --list "$TMP/list.txt" --prob 1 \
        --resize 1 1 --flip-prob 0 -o "$TMP/out.mpt" --out-dir "$TMP/od" --preview "$TMP/p.png"
    assert_success
    run "$PY" -c "
import msgpack, numpy as np
ms = list(msgpack.Unpacker(open('$TMP/out.mpt','rb'), raw=False))
img = np.frombuffer(ms[0]['tensors']['image']['data'], '<f4').reshape(ms[0]['tensors']['image']['shape'])
lab = np.frombuffer(ms[0]['tensors']['label']['data'], 'u1').reshape(352, 349)
assert img.shape == (6, 352, 349) and img.min() >= 0 and img.max() <= 255 and img.std() > 1
assert (lab[:20] == 255).all() and (lab[100:200, 50:150] == 1).all()
print(ms[0]['meta']['files'][0].endswith('L7_ETMs.tif'))"
    assert_output "True"
    [ -s "$TMP/od/000001_image.tif" ] && [ -s "$TMP/od/000001_label.tif" ]
    # the pairs read back: same pixels as the messages
    printf '%s %s\n' "$TMP/od/000000_image.tif" "$TMP/od/000000_label.tif" "$TMP/od/000001_image.tif" \
        "$TMP/od/000001_label.tif" > "$TMP/back.txt"
    "$BIN/paste-aug" copy-paste --bank "$TMP/bank.mpt" --list "$TMP/back.txt" --prob 0 -o "$TMP/back.mpt"
    run pydata equal-images "$TMP/out.mpt" "$TMP/back.mpt"
    assert_output "ok"
    # the preview: a PNG of 4 panels and 3 gaps side by side
    run "$PY" -c "
import struct
b = open('$TMP/p.png','rb').read(32)
assert b[:8] == b'\x89PNG\r\n\x1a\n'
print(struct.unpack('>II', b[16:24]))"
    assert_output "(1408, 352)"
}

@test "paste-aug --list: a label of another size and a bad line are clear errors" {
    "$BIN/paste-aug" bank init --classes 3 --value 0.5 -o "$TMP/bank.mpt"
    printf '%s %s\n' "$DATA/L7_ETMs.tif" "$DATA/python.tiff" > "$TMP/list.txt"
    run "$BIN/paste-aug" copy-paste --bank "$TMP/bank.mpt" --list "$TMP/list.txt" -o "$TMP/o.mpt"
    assert_failure 1
    assert_output --regexp "^paste-aug: .*list.txt: line 1: "
    printf '%s\n' "$DATA/L7_ETMs.tif" > "$TMP/list2.txt"
    run "$BIN/paste-aug" copy-paste --bank "$TMP/bank.mpt" --list "$TMP/list2.txt" -o "$TMP/o.mpt"
    assert_failure 1
    assert_output --partial "expected 'IMAGE LABEL'"
}

@test "paste-aug: --preview-index past the input and two uses of stdin are refused" {
    pydata samples "$TMP/in.mpt" 2 1 8 8 1
    pydata bank "$TMP/bank.mpt" 0.5,0.5
    run "$BIN/paste-aug" copy-paste --bank "$TMP/bank.mpt" --input "$TMP/in.mpt" -o "$TMP/o.mpt" \
        --preview "$TMP/p.png" --preview-index 2
    assert_failure 1
    assert_output "paste-aug: --preview-index 2: the input has 2 samples"
    run "$BIN/paste-aug" copy-paste --bank "$TMP/bank.mpt" --paste-input - -o "$TMP/o.mpt" < "$TMP/in.mpt"
    assert_failure 2
    assert_line --index 0 "paste-aug: --paste-input -: standard input already holds the base samples"
}

@test "paste-aug: drawn classes follow softmax((1-c)^0.5) (copy-paste) and softmax(1-c) (cutmix)" {
    pydata samples "$TMP/in.mpt" 3000 1 4 4 9
    pydata bank "$TMP/bank.mpt" 0.05,0.3,0.6,0.9,0.2
    "$BIN/paste-aug" copy-paste --bank "$TMP/bank.mpt" --input "$TMP/in.mpt" -o "$TMP/cp.mpt" \
        --prob 1 --num-cat 1 --exclude 4 --seed 11
    "$BIN/paste-aug" cutmix --bank "$TMP/bank.mpt" --input "$TMP/in.mpt" -o "$TMP/cm.mpt" \
        --exclude 4 --seed 11
    run "$PY" -c "
import msgpack, numpy as np
c = np.array([0.05, 0.3, 0.6, 0.9])
def chi2(key, score):
    p = np.exp(score) / np.exp(score).sum()
    got = [m['meta'][key] for m in msgpack.Unpacker(open('$TMP/' + ('cp' if key == 'query_classes' else 'cm') + '.mpt', 'rb'), raw=False)]
    got = [g[0] if isinstance(g, list) else g for g in got]
    obs = np.bincount(got, minlength=5)
    assert obs[4] == 0, obs
    e = p * len(got)
    return ((obs[:4] - e) ** 2 / e).sum()
# 3 degrees of freedom: P(chi2 > 16.27) = 0.001
a, b = chi2('query_classes', np.sqrt(1 - c)), chi2('class', 1 - c)
print(a < 16.27, b < 16.27, '%.2f %.2f' % (a, b))"
    assert_output --regexp "^True True "
}

@test "paste-aug --list --bands picks the image bands" {
    "$PY" -c "
import msgpack, numpy as np
lab = (np.arange(352 * 349) % 3).astype('u1').reshape(352, 349)
t = lambda a: {'dtype': a.dtype.str, 'shape': list(a.shape), 'data': a.tobytes()}
open('$TMP/l.mpt','wb').write(msgpack.packb({'v':1,'kind':'sample','meta':{},'tensors':{'image':t(np.zeros((1, 352, 349), '<f4')),'label':t(lab)}}))"
    "$BIN/paste-aug" bank init --classes 3 -o "$TMP/bank.mpt"
    "$BIN/paste-aug" copy-paste --bank "$TMP/bank.mpt" --input "$TMP/l.mpt" --out-dir "$TMP/lab" --prob 0
    printf '%s %s\n' "$DATA/L7_ETMs.tif" "$TMP/lab/000000_label.tif" > "$TMP/list.txt"
    "$BIN/paste-aug" copy-paste --bank "$TMP/bank.mpt" --list "$TMP/list.txt" --prob 0 -o "$TMP/all.mpt"
    "$BIN/paste-aug" copy-paste --bank "$TMP/bank.mpt" --list "$TMP/list.txt" --prob 0 --bands 4,3,2 -o "$TMP/sel.mpt"
    run "$PY" -c "
import msgpack, numpy as np
def img(p):
    m = next(iter(msgpack.Unpacker(open(p, 'rb'), raw=False)))['tensors']
    return np.frombuffer(m['image']['data'], '<f4').reshape(m['image']['shape']), np.frombuffer(m['label']['data'], 'u1')
a, la = img('$TMP/all.mpt'); s, ls = img('$TMP/sel.mpt')
assert s.shape == (3, 352, 349) and (s == a[[3, 2, 1]]).all() and (la == ls).all()
assert (la == np.arange(352 * 349) % 3).all()
print('ok')"
    assert_output "ok"
}
