"""Helpers for tests/cli/dino-mpi.bats (msgpack + numpy only).

  concat OUT A B...             message i of OUT = message i of A, B, ... with their
                                "global" and "local" tensors concatenated along the
                                batch axis (one process's view of the ranks' batches)
  close A B PREFIX TOL          the tensors of A named PREFIX... (all of a role, or
                                "center"), as one vector, within TOL of B's:
                                max |a - b| <= TOL max |b|; prints the ratio, exit 1 if over
"""
import sys

import msgpack
import numpy as np


def load(path):
    return list(msgpack.Unpacker(open(path, "rb"), raw=False, max_buffer_size=2**31))


def arr(t):
    return np.frombuffer(t["data"], dtype=t["dtype"]).reshape(t["shape"])


def put(a, dtype):
    a = np.ascontiguousarray(a, dtype=dtype)
    return {"dtype": dtype, "shape": list(a.shape), "data": a.tobytes()}


def concat(out, paths):
    streams = [load(p) for p in paths]
    n = min(len(s) for s in streams)
    assert n > 0 and all(len(s) == n for s in streams), [len(s) for s in streams]
    with open(out, "wb") as f:
        for i in range(n):
            m = dict(streams[0][i])
            m["tensors"] = dict(m["tensors"])
            for name in ("global", "local"):
                if name in m["tensors"]:
                    dt = m["tensors"][name]["dtype"]
                    parts = [arr(s[i]["tensors"][name]) for s in streams]
                    m["tensors"][name] = put(np.concatenate(parts, axis=0), dt)
            f.write(msgpack.packb(m, use_bin_type=True))


def close(a, b, prefix, tol):
    ta, tb = load(a)[0]["tensors"], load(b)[0]["tensors"]
    names = [k for k in ta if k.startswith(prefix)]
    assert names, "no tensor named %s..." % prefix
    x = np.concatenate([arr(ta[k]).astype(np.float64).ravel() for k in names])
    y = np.concatenate([arr(tb[k]).astype(np.float64).ravel() for k in names])
    worst = np.abs(x - y).max() / max(np.abs(y).max(), 1e-30)
    print("%d tensors %s*: max |a - b| / max |b| = %.3g" % (len(names), prefix, worst))
    return worst <= tol


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "concat":
        concat(sys.argv[2], sys.argv[3:])
    elif cmd == "close":
        sys.exit(0 if close(sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5])) else 1)
    else:
        sys.exit("unknown command " + cmd)
