"""Prints Loom's kernel times beside the PyTorch peers' (the JSON files bench/kernels/run.sh writes to OUTDIR),
with speedups (peer time / Loom time: > 1 means Loom is faster) and Loom's share of its bandwidth floor
(%floor = the floor's time at peak DRAM bandwidth / Loom's time).

usage: python3 compare.py OUTDIR
"""
import json, os, sys

out = sys.argv[1]


def load(name):
    path = os.path.join(out, name)
    return json.load(open(path)) if os.path.exists(path) else None


loom, peer = load("loom_layernorm.json"), load("peer_layernorm.json")
if loom and peer:
    print(f"LayerNorm | loom: {loom['card']} | peer: {peer['card']} | dtype {loom['dtype']}")
    theirs = {r["width"]: r for r in peer["rows"]}
    peak = loom["peak_bytes_per_s"]
    print(f"{'C':>6} {'rows':>6} | {'loom fwd':>8} {'torch':>8} {'speedup':>7} {'%floor':>6} | "
          f"{'loom bwd':>8} {'torch':>8} {'speedup':>7} {'%floor':>6}   (us)")
    for r in loom["rows"]:
        t = theirs.get(r["width"], {})
        cells = []
        for d in ("fwd", "bwd"):
            ours, other = r[f"{d}_us"], t.get(f"{d}_us", float("nan"))
            floor_us = r[f"{d}_bytes"] / peak * 1e6
            cells.append(f"{ours:8.1f} {other:8.1f} {other / ours:7.2f} {100 * floor_us / ours:6.1f}")
        print(f"{r['width']:6} {r['rows']:6} | {cells[0]} | {cells[1]}")
    print("(Loom's backward accumulates into dx, reading it too; PyTorch's writes dx. Floors count Loom's bytes.)")

loom, peer = load("loom_cross_entropy.json"), load("peer_cross_entropy.json")
if loom and peer:
    floor_us = loom["bytes"] / loom["peak_bytes_per_s"] * 1e6
    print(f"\ncross-entropy N={loom['rows']} Vp={loom['padded']} {loom['dtype']} | loom: {loom['card']} | "
          f"peer: {peer['card']}")
    print(f"loom {loom['us']:9.1f} us  (%floor {100 * floor_us / loom['us']:.1f})")
    for r in peer["rows"]:
        print(f"{r['mode']:10} {r['us']:9.1f} us  speedup {r['us'] / loom['us']:.2f}")
