"""Synthetic inputs and checks for the paste-aug CLI tests (tests/cli/paste-aug.bats).

    paste_aug_data.py samples OUT.mpt N C H W [SEED]   random images, labels 0..3 with 255 patches
    paste_aug_data.py drawn OUT.mpt                     two hand-drawn 8x10 maps for cutmix
    paste_aug_data.py bank OUT.mpt v0,v1,...            a bank message
    paste_aug_data.py check-copy-paste IN.mpt OUT.mpt   exact composition (no resize/flip/crop)
    paste_aug_data.py check-ignore IN.mpt OUT.mpt       ignore never pasted (any geometry)
    paste_aug_data.py check-cutmix IN.mpt OUT.mpt       box = bounding box of the class component
    paste_aug_data.py equal-images A.mpt B.mpt          same images and labels, in order
Every expected value is recomputed here with numpy from the inputs."""
import sys

import msgpack
import numpy as np


def tensor(a):
    return {"dtype": a.dtype.str, "shape": list(a.shape), "data": a.tobytes()}


def array(t):
    return np.frombuffer(t["data"], dtype=t["dtype"]).reshape(t["shape"])


def read(path):
    with open(path, "rb") as f:
        return list(msgpack.Unpacker(f, raw=False, max_buffer_size=2**31))


def write_samples(path, samples):
    with open(path, "wb") as f:
        for i, (img, lab) in enumerate(samples):
            f.write(msgpack.packb({"v": 1, "kind": "sample", "meta": {"files": ["s%d" % i]},
                                   "tensors": {"image": tensor(img), "label": tensor(lab)}}))


def samples(path, n, c, h, w, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        img = rng.normal(100, 30, (c, h, w)).astype("<f4")
        lab = rng.integers(0, 4, (h, w)).astype("u1")
        y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
        lab[y:y + h // 3, x:x + w // 3] = 255
        out.append((img, lab))
    write_samples(path, out)


DRAWN = [
    ["..........",
     ".11.......",
     ".111......",
     "..1...22..",
     "......22..",
     "..........",
     "...3......",
     ".........."],
    ["2222222222",
     "2222222222",
     "2.......22",
     "2..33...22",
     "2..33...22",
     "2.......22",
     "2222222222",
     "2222222222"],
]


def drawn(path):
    out = []
    for k, rows in enumerate(DRAWN):
        lab = np.array([[0 if ch == "." else int(ch) for ch in r] for r in rows], dtype="u1")
        img = (np.arange(2 * lab.size, dtype="<f4").reshape(2, *lab.shape) + 1000 * k)
        out.append((img, lab))
    write_samples(path, out)


def bank(path, values):
    conf = np.array([float(v) for v in values.split(",")], dtype="<f8")
    with open(path, "wb") as f:
        f.write(msgpack.packb({"v": 1, "kind": "bank", "meta": {"momentum": 0.9, "updates": 0},
                               "tensors": {"confidence": tensor(conf)}}))


def check_copy_paste(inp, outp):
    ins, outs = read(inp), read(outp)
    assert len(ins) == len(outs), (len(ins), len(outs))
    pasted = 0
    for i, m in enumerate(outs):
        base = ins[i]["tensors"]
        img0, lab0 = array(base["image"]), array(base["label"])
        img, lab, mask = (array(m["tensors"][k]) for k in ("image", "label", "mask"))
        assert img.dtype == np.float32 and lab.dtype == np.uint8 and img.shape == img0.shape
        if not m["meta"]["applied"]:
            assert (img == img0).all() and (lab == lab0).all() and not mask.any()
            continue
        src = ins[m["meta"]["source"]]["tensors"]
        img1, lab1 = array(src["image"]), array(src["label"])
        q = m["meta"]["query_classes"]
        alpha = np.isin(lab1, q) & (lab1 != 255)
        assert (mask == alpha).all(), i
        assert (img == np.where(alpha[None], img1, img0)).all(), i
        assert (lab == np.where(alpha, lab1, lab0)).all(), i
        assert m["meta"]["pixels"] == alpha.sum()
        pasted += alpha.sum()
    assert pasted > 0
    print("ok", len(outs), pasted)


def check_ignore(inp, outp):
    ins, outs = read(inp), read(outp)
    for i, m in enumerate(outs):
        lab0 = array(ins[i]["tensors"]["label"])
        lab, mask = array(m["tensors"]["label"]), array(m["tensors"]["mask"])
        assert not (mask.astype(bool) & (lab == 255)).any(), i
        assert ((lab == 255) <= (lab0 == 255)).all(), i
        assert (lab[mask == 0] == lab0[mask == 0]).all(), i
    print("ok")


def check_cutmix(inp, outp):
    ins, outs = read(inp), read(outp)
    for i, m in enumerate(outs):
        meta = m["meta"]
        src = ins[meta["source"]]["tensors"]
        base = ins[i]["tensors"]
        y0, x0, y1, x1 = meta["box"]
        if meta["component"]:
            ys, xs = np.nonzero(array(src["label"]) == meta["class"])
            # the drawn maps hold one component per class
            assert [y0, x0, y1, x1] == [ys.min(), xs.min(), ys.max() + 1, xs.max() + 1], meta
        inside = np.zeros(array(base["label"]).shape, bool)
        inside[y0:y1, x0:x1] = True
        for k in ("image", "label"):
            want = np.where(inside, array(src[k]), array(base[k]))
            assert (array(m["tensors"][k]) == want).all(), (i, k)
        assert (array(m["tensors"]["mask"]) == inside).all()
    print("ok", [(m["meta"]["class"], m["meta"]["source"], m["meta"]["box"]) for m in outs])


def equal_images(a, b):
    ma, mb = read(a), read(b)
    assert len(ma) == len(mb)
    for x, y in zip(ma, mb):
        for k in ("image", "label"):
            assert (array(x["tensors"][k]) == array(y["tensors"][k])).all(), k
    print("ok")


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "samples":
        samples(args[0], *(int(a) for a in args[1:]))
    elif cmd == "drawn":
        drawn(args[0])
    elif cmd == "bank":
        bank(args[0], args[1])
    else:
        {"check-copy-paste": check_copy_paste, "check-ignore": check_ignore,
         "check-cutmix": check_cutmix, "equal-images": equal_images}[cmd](*args)
