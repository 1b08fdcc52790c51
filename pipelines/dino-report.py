#!/usr/bin/python3
"""The summary of a pipelines/dino.mk run, as JSON on stdout, and RUN/curves.tsv.

    dino-report.py RUN

Per epoch: the mean loss, teacher entropy, teacher batch-mean entropy and KL
of its logged steps, the last lr and momentum, and the teacher's k-NN top-1
(20-NN, or the first k reported) where it was evaluated.  Also the band-stats
baseline and the configuration.  Standard library only.
"""
import glob
import json
import os
import sys

run = sys.argv[1]


def knn_top1(path):
    r = json.load(open(path))["results"]
    by_k = {x["k"]: x for x in r}
    x = by_k.get(20, r[0])
    return {"k": x["k"], "top1": x["top1"], "top5": x.get("top5"),
            "all": {str(y["k"]): y["top1"] for y in r}}


config = {}
for line in open(os.path.join(run, "config.mk")):
    k, _, v = line.partition(" = ")
    config[k.strip()] = v.rstrip("\n")

epochs = []
for path in sorted(glob.glob(os.path.join(run, "log", "epoch-[0-9][0-9][0-9].jsonl"))):
    e = int(os.path.basename(path)[6:9])
    rows = [json.loads(l) for l in open(path) if l.strip()]
    if not rows:
        continue
    mean = lambda key: sum(r[key] for r in rows) / len(rows)
    epochs.append({"epoch": e, "steps": rows[-1]["step"], "loss": mean("loss"),
                   "teacher_entropy": mean("teacher_entropy"),
                   "teacher_mean_entropy": mean("teacher_mean_entropy"), "kl": mean("kl"),
                   "lr": rows[-1]["lr"], "momentum": rows[-1]["momentum"],
                   "samples_per_s": sum(r["samples_per_s"] for r in rows[1:]) / max(1, len(rows) - 1)})
knn = {}
for path in sorted(glob.glob(os.path.join(run, "knn", "epoch-[0-9][0-9][0-9].json"))):
    knn[int(os.path.basename(path)[6:9])] = knn_top1(path)
for row in epochs:
    if row["epoch"] in knn:
        row["knn_top1"] = knn[row["epoch"]]["top1"]

summary = {"run": run, "config": config, "epochs": epochs,
           "knn": {f"{e:03d}": v for e, v in sorted(knn.items())}}
if knn:
    first, last = min(knn), max(knn)
    summary["knn_init_top1"] = knn[first]["top1"] if first == 0 else None
    summary["knn_final_top1"] = knn[last]["top1"]
    summary["knn_final_epoch"] = last
    summary["knn_best_top1"] = max(v["top1"] for v in knn.values())
bs = os.path.join(run, "knn", "band-stats.json")
if os.path.exists(bs):
    summary["band_stats_top1"] = knn_top1(bs)["top1"]

with open(os.path.join(run, "curves.tsv"), "w") as f:
    f.write("# epoch\tloss\tteacher_entropy\tknn_top1\n")
    if 0 in knn:
        f.write(f"0\tNaN\tNaN\t{knn[0]['top1']}\n")
    for row in epochs:
        f.write(f"{row['epoch']}\t{row['loss']}\t{row['teacher_entropy']}\t{row.get('knn_top1', 'NaN')}\n")
json.dump(summary, sys.stdout, indent=1)
print()
