#!/usr/bin/env bash
# make demo: the main job on the bundled data.  For now: per-band statistics
# of the bundled Landsat 7 ETM+ scene, as JSON and as the stats message the
# trainer's augmentation reads, with a short table on the terminal.
set -euo pipefail
cd "$(dirname "$0")/.."
out=demo-out
mkdir -p "$out"
scene=tests/data/L7_ETMs.tif

echo "== tif-stats on $scene"
bin/tif-stats -q -p 2,98 --hist 32 -o "$out/l7-stats.mpt" "$scene" > "$out/l7-stats.json"
/usr/bin/python3 - "$out/l7-stats.json" "$out/l7-stats.mpt" <<'PY'
import json, sys, msgpack, numpy as np
stats = json.load(open(sys.argv[1]))
print(f"{'band':6} {'count':>8} {'mean':>9} {'std':>9} {'min':>6} {'max':>6} {'p2':>6} {'p98':>6}")
for name, b in stats["bands"].items():
    p = b["percentiles"]
    print(f"{name:6} {b['count']:8d} {b['mean']:9.3f} {b['std']:9.3f} {b['min']:6g} {b['max']:6g} {p['2']:6g} {p['98']:6g}")
msg = next(iter(msgpack.Unpacker(open(sys.argv[2], "rb"), raw=False, max_buffer_size=2**31)))
mean = np.frombuffer(msg["tensors"]["mean"]["data"], dtype=msg["tensors"]["mean"]["dtype"])
print(f"stats message: kind={msg['kind']}, bands={msg['meta']['bands']}, mean[0]={mean[0]:.6f}")
PY
echo "wrote $out/l7-stats.json and $out/l7-stats.mpt"
