"""Prints Loom's flash-attention TFLOP/s beside the PyTorch SDPA peers, cell by cell, with ratios.

usage: python3 compare.py LOOM_JSONS PEER_JSONS
  Each argument is one JSON written with --json by flash_bench / attention.py, or several separated by commas
  (rounds of run.sh with ROUNDS > 1): every number is then the median over the files, and "/cudnn range" gives the
  lowest and highest ratio of round i's Loom to round i's cuDNN, so a reader sees how far single rounds move.
  Backends named "loom@..." (flash_bench variants, e.g. --fwd-blocks) get a table of their own after the main one.
"""
import json, statistics, sys


def load(arg):
    return [json.load(open(p)) for p in arg.split(",") if p]


loom_runs, peer_runs = load(sys.argv[1]), load(sys.argv[2])
print(f"loom card: {loom_runs[0]['card']} | peer card: {peer_runs[0]['card']} | rounds: {len(loom_runs)} loom, "
      f"{len(peer_runs)} peer")
key = lambda r: (r["d"], bool(r["causal"]), r["seqlen"])


def index(runs):
    """[{backend: {cell: row}}] per run."""
    out = []
    for run in runs:
        by = {}
        for r in run["rows"]:
            if "d" in r:  # --pairs rows (pruned head dims) have no peer
                by.setdefault(r["backend"], {})[key(r)] = r
        out.append(by)
    return out


loom_ix, peer_ix = index(loom_runs), index(peer_runs)
all_ix = loom_ix + peer_ix
nan = float("nan")


def med(backend, cell, field):
    vals = [ix[backend][cell][field] for ix in all_ix if cell in ix.get(backend, {})]
    return statistics.median(vals) if vals else nan


def ratio_range(backend, cell):
    rs = [li[backend][cell]["fwd_bwd"] / pi["cudnn"][cell]["fwd_bwd"] for li, pi in zip(loom_ix, peer_ix)
          if cell in li.get(backend, {}) and cell in pi.get("cudnn", {})]
    return (min(rs), max(rs)) if rs else (nan, nan)


cells = sorted({c for ix in loom_ix for c in ix.get("loom", {})})
print(f"{'d':>4} {'causal':>6} {'seq':>6} | {'loom f+b':>8} {'det f+b':>7} {'fa2 f+b':>7} {'cudnn':>6} | "
      f"{'/fa2':>5} {'/cudnn':>6} {'/cudnn range':>12} | {'fwd':>4} {'fa2':>4} {'bwd':>4} {'fa2':>4}")
for c in cells:
    lf, fa, cu = med("loom", c, "fwd_bwd"), med("flash", c, "fwd_bwd"), med("cudnn", c, "fwd_bwd")
    lo, hi = ratio_range("loom", c)
    print(f"{c[0]:4} {int(c[1]):6} {c[2]:6} | {lf:8.0f} {med('loom-det', c, 'fwd_bwd'):7.0f} {fa:7.0f} {cu:6.0f} | "
          f"{lf / fa:5.2f} {lf / cu:6.2f} {lo:5.2f}-{hi:<5.2f}  | {med('loom', c, 'fwd'):4.0f} "
          f"{med('flash', c, 'fwd'):4.0f} {med('loom', c, 'bwd'):4.0f} {med('flash', c, 'bwd'):4.0f}")

variants = sorted({b for ix in loom_ix for b in ix if b.startswith("loom@")})
if variants:
    print("\nvariants (flash_bench), median TFLOP/s fwd / bwd / f+b and f+b over cuDNN; 'loom' is the default")
    print(f"{'d':>4} {'causal':>6} {'seq':>6} | " + " | ".join(f"{b:>26}" for b in ["loom"] + variants))
    for c in cells:
        parts = []
        for b in ["loom"] + variants:
            f, w, fb = med(b, c, "fwd"), med(b, c, "bwd"), med(b, c, "fwd_bwd")
            parts.append(f"{f:5.0f} {w:5.0f} {fb:5.0f} {fb / med('cudnn', c, 'fwd_bwd'):6.2f}".rjust(26))
        print(f"{c[0]:4} {int(c[1]):6} {c[2]:6} | " + " | ".join(parts))
