#!/usr/bin/env python3
"""The model zoo's plan and its ratio table (issue 17): Loom beside llm.c, torch.compile, PyTorch eager / timm
and SDPA, all measured in one device call by bench/zoo.sh.

usage: zoo_compare.py --plan      the GPT shapes zoo.sh runs, one per line:
                                  NAME CONFIG LAYERS WIDTH HEADS BATCH LLMC_DESCRIPTOR ("-": llm.c lacks the shape)
       zoo_compare.py [--breakdown-json FILE] OUT_DIR...
                                  the Markdown table of what OUT_DIR holds (card.txt, stages.txt, loom_*.json,
                                  llmc_*.log, compile_*.json, eager_*.json, attention_*.json, *.mem, variants.txt,
                                  ncu_*.json, torchprof_*.json); given the OUT_DIRs of several calls (ZOO split over
                                  them), one table of them all, each run taken from the call that ran it; then the
                                  kernel-time breakdown per model (bench/zoo_breakdown.py), also written to FILE

Throughput: Loom is the median of its timed steps (loom_train_bench); llm.c the median step time of its last 10
steps (its printed tok/s is a moving average that still carries the slow first steps of a short run); the
PyTorch peers the mean of their timed steps, compile time excluded. Memory: Loom and PyTorch report their
allocators' peaks (ratio "Loom/compile"); llm.c reports none of its own beyond its start, so Loom and llm.c are
compared by the card's used memory sampled with nvidia-smi while each ran (*.mem; context included for both).
A run that is missing shows as "not run (why)", never as a number.
"""
import json
import os
import re
import statistics
import sys

import zoo_breakdown
from stage_outputs import load_json, read, stage_results

T = 1024
# name, label, config, layers, width, heads, batch, llm.c descriptor ("-": llm.c has no such shape)
GPT = [
    ("gpt124m", "GPT-2 124M", "configs/gpt2_124m.yaml", 12, 768, 12, 16, "d12"),
    ("gpt350m", "GPT-2 350M", "configs/gpt2_350m.yaml", 24, 1024, 16, 8, "d24"),
    ("gpt774m", "GPT-2 774M", "configs/gpt2_124m.yaml", 36, 1280, 20, 8, "d36"),
    ("gpt1p3b", "GPT 1.3B", "configs/gpt_1p3b.yaml", 24, 2048, 16, 8, "-"),
    ("gpt1p5b", "GPT-2 1.5B", "configs/gpt2_124m.yaml", 48, 1600, 25, 8, "d48"),
    ("gpt2p7b", "GPT 2.7B", "configs/gpt2_124m.yaml", 32, 2560, 32, 4, "-"),
]
DEIT = [("deit_b", "DeiT-B", 128, 1.5, 1.1), ("deit_s", "DeiT-S", 128, None, None)]  # bars: × eager, × compiled
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12}  # dense bf16, SXM (../shared/baselines/README.md)
BAR_LLMC, BAR_COMPILE, BAR_MEMORY = 1.0, 1.10, 1.1


class Session:
    """What the zoo.sh calls left in their OUT_DIRs: each stage's files are read from the last call that ran it."""

    def __init__(self, outs):
        cards = [(read(os.path.join(o, "card.txt"), "") or "card unknown").strip() for o in outs]
        self.card = "\n".join(cards) if len(outs) == 1 else \
            "\n".join(f"call {i + 1}: {' · '.join(c.splitlines())}" for i, c in enumerate(cards))
        self.dry = "dry run" in self.card
        self.stages, self.dir, self.last = {}, {}, outs[-1]
        self.variants, self.breakdown_skipped = {}, []  # VARIANTS: name -> overrides; why a call had no breakdown
        for out in outs:
            for name, result in stage_results(out).items():
                self.stages[name], self.dir[name] = result, out
            for line in read(os.path.join(out, "variants.txt"), "").splitlines():
                name, _, overrides = line.partition(" ")
                self.variants[name] = overrides
            skipped = read(os.path.join(out, "breakdown_skipped.txt"))
            if skipped:
                self.breakdown_skipped.append(skipped.strip())

    def path(self, name):
        """NAME (STAGE.json, STAGE.log, STAGE.mem) in the OUT_DIR of the call that ran STAGE."""
        return os.path.join(self.dir.get(name.rsplit(".", 1)[0], self.last), name)

    def why_missing(self, stage):
        """Why STAGE left no number."""
        if stage not in self.stages:
            return "not run (not in ZOO)"
        rc, _ = self.stages[stage]
        if rc == 125:
            return "not run (deadline)"
        if rc in (124, 137):
            return "not run (stage timed out)"
        if rc == 0:
            return "not run (dry run)" if self.dry else "not run (no output)"
        lines = [line.strip() for line in read(self.path(stage + ".log"), "").splitlines() if line.strip()]
        if any("out of memory" in line.lower() for line in lines):
            return f"not run (rc {rc}: out of memory)"
        last = lines[-1].replace("|", "/")[:60] if lines else "no log"
        return f"not run (rc {rc}: {last})"

    def result(self, stage, ext):
        """STAGE's JSON (ext "json") or log text (ext "log") when it exited 0 in the call that ran it, else None (an
        OUT_DIR used twice may hold a file of an earlier call)."""
        if self.stages.get(stage, (None,))[0] != 0:
            return None
        path = self.path(f"{stage}.{ext}")
        return load_json(path) if ext == "json" else read(path)

    def smi_gib(self, stage):
        text = read(self.path(stage + ".mem"), "").strip()
        return int(text) / 1024 if text.isdigit() else None

    def peak_flops(self):
        return next((v for k, v in PEAK_FLOPS.items() if k in self.card), None)


def llmc_run(log, batch):
    """tok/s from the median step time of the last 10 steps of an llm.c log, and its reported memory (GiB)."""
    ms = [float(m.group(1)) for m in re.finditer(r"^step\s+\d+/\d+ \|.*\| ([\d.]+) ms \|", log, re.M)]
    if len(ms) < 10:
        return None
    mem = re.search(r"device memory usage: (\d+) MiB", log)
    return {"tok_per_s": batch * T / (statistics.median(ms[-10:]) / 1e3),
            "peak_gib": int(mem.group(1)) / 1024 if mem else None}


def peer_row(s, stage, mode):
    j = s.result(stage, "json")
    rows = [r for r in (j or {}).get("rows", []) if r.get("mode") == mode]
    return rows[0] if rows else None


def number(x, unit_digits=0):
    return f"{x:,.{unit_digits}f}"


def ratio(a, b):
    return a / b if a is not None and b else None


def verdict(r, bar):
    if r is None:
        return "—"
    if bar is None:
        return f"{r:.2f}×"
    return f"{r:.2f}× {'pass' if r >= bar else 'FAIL'}"


def memory_verdict(r):
    return "—" if r is None else f"{r:.2f}× {'pass' if r <= BAR_MEMORY else 'FAIL'}"


def gpt_table(s):
    print("| model | B | Loom tok/s | llm.c | torch.compile | eager | Loom/llm.c (≥1.0) | Loom/compile (≥1.10) | "
          "Loom/eager | mem Loom/compile (≤1.1) | mem Loom/llm.c, nvidia-smi (≤1.1) | Loom MFU (hand count, ≤1 %) |"
          + "".join(f" Loom {v}: tok/s (×Loom), peak GiB (×Loom) |" for v in s.variants))
    print("|---|---|---|---|---|---|---|---|---|---|---|---|" + "---|" * len(s.variants))
    details, peak = [], s.peak_flops()
    for name, label, _, layers, width, heads, batch, desc in GPT:
        loom = s.result(f"loom_{name}", "json")
        llmc = llmc_run(s.result(f"llmc_{name}", "log") or "", batch) if desc != "-" else None
        comp, eager = peer_row(s, f"compile_{name}", "compile"), peer_row(s, f"eager_{name}", "eager")
        lt = loom["tok_per_s"] if loom else None
        cell = lambda run, stage: number(run["tok_per_s"]) if run else s.why_missing(stage)
        llmc_cell = "— (no such shape)" if desc == "-" else cell(llmc, f"llmc_{name}")
        mfu = "—"
        if loom and peak:
            tok = loom["samples_per_s"] * T
            hand = (6 * loom["params"] + 12 * layers * width * T) * tok / peak
            off = abs(loom["mfu"] / hand - 1)
            mfu = f"{100 * loom['mfu']:.1f} % ({100 * hand:.1f} %) {'pass' if off <= 0.01 else 'FAIL'}"
        elif loom:
            mfu = f"{100 * loom['mfu']:.1f} % (no hand count: card not H100/H200)"
        smi_loom, smi_llmc = (s.smi_gib(f"loom_{name}"), s.smi_gib(f"llmc_{name}")) if loom and llmc else (None, None)
        print(f"| {label} ({layers}×{width}, {heads} heads) | {loom['batch'] if loom else batch} | "
              f"{cell(loom, f'loom_{name}')} | {llmc_cell} | "
              f"{cell(comp, f'compile_{name}')} | {cell(eager, f'eager_{name}')} | "
              f"{verdict(ratio(lt, llmc and llmc['tok_per_s']), BAR_LLMC if desc != '-' else None)} | "
              f"{verdict(ratio(lt, comp and comp['tok_per_s']), BAR_COMPILE)} | "
              f"{verdict(ratio(lt, eager and eager['tok_per_s']), None)} | "
              f"{memory_verdict(ratio(loom and loom['peak_gib'], comp and comp['peak_gib']))} | "
              f"{memory_verdict(ratio(smi_loom, smi_llmc))} | {mfu} |"
              + "".join(f" {variant_cell(s, v, name, loom)} |" for v in s.variants))
        gib = lambda x: "—" if x is None else f"{x:.1f}"
        if loom or llmc or comp or eager:
            details.append(f"- {label}: Loom {gib(loom and loom['peak_gib'])} GiB (smi {gib(smi_loom)}), "
                           f"llm.c {gib(llmc and llmc['peak_gib'])} GiB at start (smi {gib(smi_llmc)}), "
                           f"compile {gib(comp and comp['peak_gib'])}, eager {gib(eager and eager['peak_gib'])} GiB")
    return details


def variant_cell(s, variant, name, loom):
    """A VARIANTS run of Loom: tok/s and allocator peak, each with its ratio to the default Loom run."""
    stage = f"loom_{variant}_{name}"
    run = s.result(stage, "json")
    if not run:
        return s.why_missing(stage)
    times = lambda r: "" if r is None else f" ({r:.2f}×)"
    return (f"{number(run['tok_per_s'])}{times(ratio(run['tok_per_s'], loom and loom['tok_per_s']))}, "
            f"{run['peak_gib']:.1f}{times(ratio(run['peak_gib'], loom and loom['peak_gib']))}")


def breakdown_section(s):
    """Per model with a breakdown stage in OUT_DIR: one step's kernel time by class, Loom beside its peer. Returns
    {model: {"loom": summary, "peer": summary, "peer_label"}} of the models with both sides."""
    models = [(name, label, "torch.compile") for name, label, *_ in GPT] + \
        [(name, label, "timm eager") for name, label, *_ in DEIT]  # the peers zoo.sh profiles
    ran = [m for m in models if f"ncu_{m[0]}" in s.stages or f"torchprof_{m[0]}" in s.stages]
    if not ran and not s.breakdown_skipped:
        return {}
    print("\n## Kernel time of one training step by class\n\nLoom: Nsight Compute (gpu__time_duration, no clock or "
          "cache control, one step after 3 warm-ups); peer: torch.profiler (its unchanged script, one step after its "
          "3 warm-ups). Ratios are Loom's time over the peer's (above 1: Loom spends longer). Classes: "
          "bench/zoo_breakdown.py.")
    for line in s.breakdown_skipped:
        print(f"\n{line}")
    result = {}
    for name, label, peer_label in ran:
        loom, peer = s.result(f"ncu_{name}", "json"), s.result(f"torchprof_{name}", "json")
        print(f"\n### {label}: Loom vs {peer_label}\n")
        if not loom or not peer:
            missing = [f"{side}: {s.why_missing(stage)}" for side, run, stage in
                       (("Loom", loom, f"ncu_{name}"), ("peer", peer, f"torchprof_{name}")) if not run]
            print("; ".join(missing))
            continue
        print("\n".join(zoo_breakdown.table(loom["kernels"], peer["kernels"], "Loom", peer_label)))
        result[name] = {"loom": zoo_breakdown.summarise(loom["kernels"]), "peer_label": peer_label,
                        "peer": zoo_breakdown.summarise(peer["kernels"])}
    return result


def deit_table(s):
    print("\n| model | B | Loom img/s | timm eager | timm compiled | Loom/eager (bar) | Loom/compiled (bar) | "
          "mem Loom/compiled |")
    print("|---|---|---|---|---|---|---|---|")
    for name, label, batch, bar_eager, bar_compile in DEIT:
        loom = s.result(f"loom_{name}", "json")
        comp, eager = peer_row(s, f"compile_{name}", "compile"), peer_row(s, f"eager_{name}", "eager")
        li = loom["samples_per_s"] if loom else None
        cell = lambda run, stage, key: number(run[key]) if run else s.why_missing(stage)
        mem = ratio(loom and loom["peak_gib"], comp and comp["peak_gib"])
        bar = lambda b: f" (≥{b})" if b else ""
        print(f"| {label} | {loom['batch'] if loom else batch} | {cell(loom, f'loom_{name}', 'samples_per_s')} | "
              f"{cell(eager, f'eager_{name}', 'img_per_s')} | {cell(comp, f'compile_{name}', 'img_per_s')} | "
              f"{verdict(ratio(li, eager and eager['img_per_s']), bar_eager)}{bar(bar_eager)} | "
              f"{verdict(ratio(li, comp and comp['img_per_s']), bar_compile)}{bar(bar_compile)} | "
              f"{'—' if mem is None else f'{mem:.2f}×'} |")


def attention_table(s):
    """fwd+bwd TFLOP/s per cell; bars: ≥0.85× cuDNN at d128 s≥4k, ≥1.0× cuDNN at s≤1k."""
    loom, peer = s.result("attention_loom", "json"), s.result("attention_sdpa", "json")
    print("\n| attention d | causal | seq | Loom f+b TFLOP/s | SDPA cuDNN | SDPA flash (FA2) | Loom/cuDNN (bar) | "
          "Loom/FA2 |")
    print("|---|---|---|---|---|---|---|---|")
    if not loom:
        print(f"| all | | | {s.why_missing('attention_loom')} | | | | |")
        return
    by = {}
    for r in loom["rows"] + (peer or {}).get("rows", []):
        if "d" in r:
            by[(r["backend"], r["d"], bool(r["causal"]), r["seqlen"])] = r["fwd_bwd"]
    missing = s.why_missing("attention_sdpa")
    for _, d, causal, seq in sorted(k for k in by if k[0] == "loom"):
        lf = by[("loom", d, causal, seq)]
        cu, fa = by.get(("cudnn", d, causal, seq)), by.get(("flash", d, causal, seq))
        bar = 1.0 if seq <= 1024 else 0.85 if d == 128 and seq >= 4096 else None
        print(f"| {d} | {int(causal)} | {seq} | {lf:.0f} | {missing if cu is None else f'{cu:.0f}'} | "
              f"{missing if fa is None else f'{fa:.0f}'} | {verdict(ratio(lf, cu), bar)}"
              f"{f' (≥{bar})' if bar else ''} | {verdict(ratio(lf, fa), None)} |")


def main():
    if sys.argv[1:] == ["--plan"]:
        for name, _, config, layers, width, heads, batch, desc in GPT:
            print(name, config, layers, width, heads, batch, desc)
        return
    args, breakdown_json = sys.argv[1:], None
    if args[:1] == ["--breakdown-json"] and len(args) >= 2:
        breakdown_json, args = args[1], args[2:]
    if not args or args[0].startswith("-"):
        sys.exit("usage: zoo_compare.py --plan | [--breakdown-json FILE] OUT_DIR...")
    for out in args:
        if not os.path.isfile(os.path.join(out, "stages.txt")):
            sys.exit(f"zoo_compare.py: {out} has no stages.txt (not an OUT_DIR of bench/zoo.sh)")
    s = Session(args)
    if len(args) == 1:
        print(f"# Model zoo, one call: {' · '.join(s.card.splitlines())}\n")
    else:
        print(f"# Model zoo, {len(args)} calls on one machine kind (each row's runs from one call, eager "
              f"from the call that ran it)\n\n" + s.card.replace("\n", "  \n") + "\n")
    print(f"T = {T}. Ratios are Loom over the peer (higher is faster; memory: lower is smaller).\n")
    details = gpt_table(s)
    deit_table(s)
    attention_table(s)
    if s.variants:
        print("\nVariants (Loom with these overrides): " + "; ".join(f"{v}: {o}" for v, o in s.variants.items()))
    if details:
        print("\nPeak memory (allocator peaks; smi: the card's used memory while the run ran, context included):")
        print("\n".join(details))
    breakdown = breakdown_section(s)
    if breakdown_json:
        with open(breakdown_json, "w") as f:
            json.dump(breakdown, f, indent=1)
    if s.stages:
        print("\nStages (rc, seconds):", ", ".join(f"{k} {rc} {sec:.0f}" for k, (rc, sec) in s.stages.items()))


if __name__ == "__main__":
    main()
