"""The numpy peer of bench/paste-aug.sh: the same AEL operations as
paste-aug, written the way a numpy user would, reading and writing the
same 'sample' messages.

    paste_aug_numpy.py gen OUT.mpt N C H W CLASSES SEED   synthetic samples
    paste_aug_numpy.py copy-paste IN.mpt CONF REPEATS     prints the median seconds
    paste_aug_numpy.py cutmix IN.mpt CONF REPEATS

CONF is a comma-separated list of confidences.  Timings cover decoding the
input, the augmentation and encoding the output (to memory), not the
interpreter start-up."""
import sys
import time

import msgpack
import numpy as np


def tensor(a):
    return {"dtype": a.dtype.str, "shape": list(a.shape), "data": a.tobytes()}


def array(t):
    return np.frombuffer(t["data"], dtype=t["dtype"]).reshape(t["shape"])


def gen(path, n, c, h, w, classes, seed):
    """SAR-like speckled intensities over a land-cover map: blocks of random
    classes, rectangles ("buildings") of class 1, an ignore border."""
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        for i in range(n):
            g = 8
            coarse = rng.integers(0, classes, (h // g + 1, w // g + 1))
            lab = np.kron(coarse, np.ones((g, g), int))[:h, :w].astype("u1")
            for _ in range(max(1, h * w // 4096)):
                y, x = rng.integers(0, h - 4), rng.integers(0, w - 4)
                lab[y:y + rng.integers(2, 12), x:x + rng.integers(2, 12)] = 1
            lab[:2] = 255
            mean = 50 + 20 * lab.astype("f4")
            img = (mean[None] * rng.gamma(4.0, 0.25, (c, h, w))).astype("<f4")
            f.write(msgpack.packb({"v": 1, "kind": "sample", "meta": {"files": ["g%d" % i]},
                                   "tensors": {"image": tensor(img), "label": tensor(lab)}}))


def read(path):
    with open(path, "rb") as f:
        out = []
        for m in msgpack.Unpacker(f, raw=False, max_buffer_size=2**31):
            t = m["tensors"]
            out.append((array(t["image"]).astype(np.float32), array(t["label"])))
        return out


def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def pack(img, lab, mask):
    return msgpack.packb({"v": 1, "kind": "sample", "meta": {},
                          "tensors": {"image": tensor(img.astype("<f4")), "label": tensor(lab),
                                      "mask": tensor(mask.astype("u1"))}})


def lin(n_in, n_out):
    s = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, None)
    i0 = np.minimum(s.astype(int), n_in - 1)
    return i0, np.minimum(i0 + 1, n_in - 1), (s - i0).astype(np.float32)


def bilinear(img, h2, w2):
    _, h, w = img.shape
    y0, y1, fy = lin(h, h2)
    x0, x1, fx = lin(w, w2)
    r0, r1 = img[:, y0], img[:, y1]
    top = r0[:, :, x0] + fx * (r0[:, :, x1] - r0[:, :, x0])
    bot = r1[:, :, x0] + fx * (r1[:, :, x1] - r1[:, :, x0])
    return top + fy[:, None] * (bot - top)


def nearest(lab, h2, w2):
    h, w = lab.shape
    sy = np.minimum((np.arange(h2) * h / h2).astype(int), h - 1)
    sx = np.minimum((np.arange(w2) * w / w2).astype(int), w - 1)
    return lab[sy][:, sx]


def copy_paste(samples, conf, seed=0, prob=1.0, smin=0.1, smax=2.0, num_cat=3):
    probs = softmax(np.sqrt(1 - conf))
    classes = np.arange(len(conf))
    out = []
    for i, (img, lab) in enumerate(samples):
        rng = np.random.default_rng((seed, i))
        C, H, W = img.shape
        if rng.random() >= prob:
            out.append(pack(img, lab, np.zeros(lab.shape, bool)))
            continue
        j = rng.integers(0, len(samples) - 1)
        j += j >= i
        pimg, plab = samples[j]
        s = rng.uniform(smin, smax)
        rh, rw = max(1, int(np.round(H * s))), max(1, int(np.round(W * s)))
        pimg, plab = bilinear(pimg, rh, rw), nearest(plab, rh, rw)
        if rng.random() < 0.5:
            pimg, plab = pimg[:, :, ::-1], plab[:, ::-1]
        ph, pw = max(rh, H), max(rw, W)
        if ph > rh or pw > rw:
            pimg = np.pad(pimg, ((0, 0), (0, ph - rh), (0, pw - rw)))
            plab = np.pad(plab, ((0, ph - rh), (0, pw - rw)), constant_values=255)
        oy, ox = rng.integers(0, ph - H + 1), rng.integers(0, pw - W + 1)
        pimg, plab = pimg[:, oy:oy + H, ox:ox + W], plab[oy:oy + H, ox:ox + W]
        q = np.unique(rng.choice(classes, num_cat, p=probs))
        alpha = np.isin(plab, q)
        out.append(pack(np.where(alpha[None], pimg, img), np.where(alpha, plab, lab), alpha))
    return out


def components(m):
    """8-connected components of a boolean map by min-label propagation with
    pointer jumping; returns (areas, boxes [n, 4])."""
    H, W = m.shape
    big = H * W
    ids = np.where(m, np.arange(H * W).reshape(H, W), big)
    while True:
        p = np.pad(ids, 1, constant_values=big)
        nb = ids
        for dy in range(3):
            for dx in range(3):
                nb = np.minimum(nb, p[dy:dy + H, dx:dx + W])
        nb = np.where(m, nb, big)
        flat = nb.ravel()
        ok = flat < big
        flat[ok] = flat[flat[ok]]
        if (nb == ids).all():
            break
        ids = nb
    ys, xs = np.nonzero(m)
    roots, comp, areas = np.unique(ids[m], return_inverse=True, return_counts=True)
    n = len(roots)
    boxes = np.stack([np.full(n, H), np.full(n, W), np.zeros(n, int), np.zeros(n, int)], 1)
    np.minimum.at(boxes[:, 0], comp, ys)
    np.minimum.at(boxes[:, 1], comp, xs)
    np.maximum.at(boxes[:, 2], comp, ys + 1)
    np.maximum.at(boxes[:, 3], comp, xs + 1)
    return areas, boxes


def init_cutmix(rng, h, w):
    yp = np.exp(rng.random() * np.log(0.5))
    sh, sw = int(np.round(yp * h)), int(np.round(0.5 / yp * w))
    py, px = int(np.round((h - sh) * rng.random())), int(np.round((w - sw) * rng.random()))
    return py, px, py + sh, px + sw


def cutmix(samples, conf, seed=0, thresh=1e-4, thresh2=1e-4):
    k = len(conf)
    probs = softmax(1 - conf)
    present = np.array([np.bincount(lab.ravel(), minlength=256)[:k] >= max(1, thresh2 * lab.size)
                        for _, lab in samples])
    out = []
    for i, (img, lab) in enumerate(samples):
        rng = np.random.default_rng((seed, i, 10))
        cls = rng.choice(k, p=probs)
        where = np.nonzero(present[:, cls])[0]
        j = rng.choice(where) if len(where) else rng.integers(0, len(samples))
        simg, slab = samples[j]
        H, W = lab.shape
        areas, boxes = components(slab == cls)
        boxes = boxes[areas > thresh * H * W]
        y0, x0, y1, x1 = boxes[rng.integers(0, len(boxes))] if len(boxes) else init_cutmix(rng, H, W)
        oimg, olab = img.copy(), lab.copy()
        mask = np.zeros(lab.shape, bool)
        mask[y0:y1, x0:x1] = True
        oimg[:, y0:y1, x0:x1] = simg[:, y0:y1, x0:x1]
        olab[y0:y1, x0:x1] = slab[y0:y1, x0:x1]
        out.append(pack(oimg, olab, mask))
    return out


def timed(op, path, conf, repeats):
    conf = np.array([float(v) for v in conf.split(",")])
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        samples = read(path)
        blob = b"".join(op(samples, conf))
        times.append(time.perf_counter() - t0)
        assert len(blob) > 0
    return float(np.median(times))


if __name__ == "__main__":
    cmd, a = sys.argv[1], sys.argv[2:]
    if cmd == "gen":
        gen(a[0], *(int(v) for v in a[1:]))
    else:
        op = {"copy-paste": copy_paste, "cutmix": cutmix}[cmd]
        print("%.6f" % timed(op, a[0], a[1], int(a[2])))
