"""Prints Loom's kernel times beside the PyTorch peer's, width by width, with ratios (peer time / Loom time, so
> 1 means Loom is faster) and Loom's share of its bandwidth floor.

usage: python3 compare.py LOOM_JSON PEER_JSON   (written with --json by loom_layernorm_bench / layernorm_peer.py)
"""
import json, sys

loom, peer = (json.load(open(p)) for p in sys.argv[1:3])
print(f"loom: {loom['card']} | peer: {peer['card']} | dtype {loom['dtype']}")
theirs = {r["width"]: r for r in peer["rows"]}
peak = loom["peak_bytes_per_s"]
print(f"{'C':>6} {'rows':>6} | {'loom fwd':>8} {'torch':>8} {'speedup':>7} {'%floor':>6} | "
      f"{'loom bwd':>8} {'torch':>8} {'speedup':>7} {'%floor':>6}   (us; %floor = floor time at peak / time)")
for r in loom["rows"]:
    t = theirs.get(r["width"], {})
    cells = []
    for d in ("fwd", "bwd"):
        ours, other = r[f"{d}_us"], t.get(f"{d}_us", float("nan"))
        floor_us = r[f"{d}_bytes"] / peak * 1e6
        cells.append(f"{ours:8.1f} {other:8.1f} {other / ours:7.2f} {100 * floor_us / ours:6.1f}")
    print(f"{r['width']:6} {r['rows']:6} | {cells[0]} | {cells[1]}")
