"""Prints Loom's flash-attention TFLOP/s beside the PyTorch SDPA peers, cell by cell, with ratios.

usage: python3 compare.py LOOM_JSON PEER_JSON   (both written with --json by flash_bench / attention.py)
"""
import json, sys

loom, peer = (json.load(open(p)) for p in sys.argv[1:3])
print(f"loom card: {loom['card']} | peer card: {peer['card']}")
key = lambda r: (r["d"], bool(r["causal"]), r["seqlen"])
by = {}
for r in loom["rows"] + peer["rows"]:
    if "d" not in r:  # --pairs rows (pruned head dims) have no peer
        continue
    by.setdefault(r["backend"], {})[key(r)] = r
cells = sorted({key(r) for r in loom["rows"] if "d" in r})
print(f"{'d':>4} {'causal':>6} {'seq':>6} | {'loom f+b':>8} {'det f+b':>7} {'fa2 f+b':>7} {'cudnn':>6} | "
      f"{'/fa2':>5} {'/cudnn':>6} | {'fwd':>4} {'fa2':>4} {'bwd':>4} {'fa2':>4}")
for c in cells:
    g = lambda b, f: by.get(b, {}).get(c, {}).get(f, float("nan"))
    lf, fa, cu = g("loom", "fwd_bwd"), g("flash", "fwd_bwd"), g("cudnn", "fwd_bwd")
    print(f"{c[0]:4} {int(c[1]):6} {c[2]:6} | {lf:8.0f} {g('loom-det', 'fwd_bwd'):7.0f} {fa:7.0f} {cu:6.0f} | "
          f"{lf / fa:5.2f} {lf / cu:6.2f} | {g('loom', 'fwd'):4.0f} {g('flash', 'fwd'):4.0f} "
          f"{g('loom', 'bwd'):4.0f} {g('flash', 'bwd'):4.0f}")
