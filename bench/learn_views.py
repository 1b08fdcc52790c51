#!/work/venv-torch/bin/python
"""Do the views of a tile look more alike to the network than tiles do?

    learn_views.py CKPT.mpt BATCHES.mpt

For the first `batch` message of BATCHES.mpt (multicrop output), the
teacher of CKPT.mpt (a dino-step checkpoint) embeds the first two global
views of every sample; prints, for the CLS features and for the head's
logits, the variance between samples (of the two views' mean) against the
variance between the two views of one sample, and their ratio.  DINO can
only sharpen onto what the views share: a ratio near 1 leaves it nothing
to start from (bench/results-learn.md, section 2).  Uses bench/learn_torch.py's
model; needs torch and timm (/work/venv-torch/bin/python).
"""
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import learn_torch as lt  # noqa: E402


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: learn_views.py CKPT.mpt BATCHES.mpt")
    ck = next(lt.read_messages(sys.argv[1]))
    net = lt.Net(ck["meta"]["config"])
    lt.load_state(net, ck["tensors"], "teacher/")
    msg = next(m for m in lt.read_messages(sys.argv[2]) if m.get("kind") == "batch")
    g = torch.from_numpy(lt.to_np(msg["tensors"]["global"]).astype(np.float32))
    with torch.no_grad():
        feats = [net.features(g[:, v]) for v in range(2)]
        logits = net([g[:, 0], g[:, 1]]).chunk(2)
    for name, (a, b) in (("CLS features", feats), ("logits", logits)):
        a, b = a.double(), b.double()
        m = (a + b) / 2
        between = ((m - m.mean(0)) ** 2).sum(1).mean().item()
        within = (((a - b) / 2) ** 2).sum(1).mean().item()
        print("%s: between samples %.3g, between views %.3g, ratio %.2f" %
              (name, between, within, between / within))


if __name__ == "__main__":
    main()
