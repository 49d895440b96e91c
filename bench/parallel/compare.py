"""Scaling table from the runs of bench/parallel/run.sh (directories named single_b<B> or
dp<D>_tp<T>[_sp][_c<tiles>]_b<B>, B = sequences per data rank), from the median over steps 11..end of each run's
metrics.jsonl (the first steps warm up the allocator and cuBLASLt's heuristics).

scaling = tokens/s / (GPUs x tokens/s of the one-GPU run): for data parallelism with the one-GPU batch per rank
that is weak scaling (the usual DP measure), for tensor parallelism (ranks share one batch) strong scaling.
exposed = communication the computation waited for, as a share of the step.
loss Δ = the largest relative loss difference over all steps against the data-parallel-only run (or the
one-GPU run) with the same global batch: layouts must agree within bf16 tolerance."""
import json, os, re, statistics, sys

runs_dir = sys.argv[1]

def load(run):
    path = os.path.join(runs_dir, run, "metrics.jsonl")
    if not os.path.exists(path):
        return None
    rows = (json.loads(line) for line in open(path))
    return [r for r in rows if "event" not in r]  # step records only (a resume adds an event line)

def layout(run):
    m = re.match(r"single_b(\d+)$", run)
    if m:
        return 1, 1, False, int(m.group(1))
    m = re.match(r"dp(\d+)_tp(\d+)(_sp)?(?:_c\d+)?_b(\d+)$", run)
    return int(m.group(1)), int(m.group(2)), bool(m.group(3)), int(m.group(4))

runs = {run: load(run) for run in sorted(os.listdir(runs_dir)) if load(run)}
single = next((rows for run, rows in runs.items() if run.startswith("single")), None)
med = lambda rows, f: statistics.median(f(r) for r in ([r for r in rows if r["step"] > 10] or rows))
single_tok = med(single, lambda r: r["tokens_per_s"]) if single else float("nan")

def reference_for(run):
    d, t, sp, b = layout(run)
    for other, rows in runs.items():
        od, ot, osp, ob = layout(other)
        if other != run and ot == 1 and od * ob == d * b:
            return other, rows
    return None, None

print(f"{'run':18} {'GPUs':>4} {'global B':>8} {'ms/step':>8} {'tok/s':>10} {'MFU':>6} {'scaling':>7} {'comm ms':>8}"
      f" {'exposed':>8} {'exp %':>6} {'fwd':>6} {'bwd':>6} {'opt':>6}  loss Δ (vs)")
for run, rows in runs.items():
    d, t, sp, b = layout(run)
    tok = med(rows, lambda r: r["tokens_per_s"])
    ms = med(rows, lambda r: r["ms_per_step"])
    tm = lambda key: med(rows, lambda r: r["time_ms"].get(key, 0))
    ref_name, ref = reference_for(run)
    delta = ""
    if ref:
        ref_loss = {r["step"]: r["loss"] for r in ref}
        diffs = [abs(r["loss"] - ref_loss[r["step"]]) / abs(ref_loss[r["step"]]) for r in rows if r["step"] in ref_loss]
        delta = f"{max(diffs):.2e} ({ref_name}, final loss {rows[-1]['loss']:.3f})" if diffs else ""
    print(f"{run:18} {d*t:>4} {d*b:>8} {ms:>8.1f} {tok:>10,.0f} {100*med(rows, lambda r: r['mfu']):>5.1f}%"
          f" {tok / (d * t * single_tok):>7.3f} {tm('communication'):>8.2f} {tm('exposed_communication'):>8.2f}"
          f" {100 * tm('exposed_communication') / ms:>5.1f}% {tm('forward'):>6.1f} {tm('backward'):>6.1f}"
          f" {tm('optimizer'):>6.1f}  {delta}")
