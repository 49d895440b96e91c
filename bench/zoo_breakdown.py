#!/usr/bin/env python3
"""Kernel time of one training step by class, Loom beside its peer (issue 17), for bench/zoo.sh.

usage: zoo_breakdown.py ncu --ncu NCU --csv RAW.csv --json OUT.json -- COMMAND...
           runs COMMAND (loom_train_bench --profile-step ...) under Nsight Compute with one metric
           (gpu__time_duration.sum), no clock or cache control, capturing only the cudaProfilerStart/Stop range
           (the one profiled step); NCU's CSV goes to RAW.csv, the kernel list to OUT.json
       zoo_breakdown.py torch --label LABEL --trace RAW.json --json OUT.json [--warmup N] -- SCRIPT ARGS...
           runs the peer's own script (../shared/baselines/gpt2.py or deit.py, unchanged) in this process under
           torch.profiler and records exactly optimizer step N + 1 (the first after the script's N warm-up steps;
           the scripts do 3): every kernel launched after step N's optimizer update up to step N + 1's. The
           Chrome trace goes to RAW.json, the kernel list to OUT.json
       zoo_breakdown.py table LOOM.json PEER.json
           the Markdown table of two kernel lists

A kernel list (OUT.json) is {"source", "label", "command", "kernels": [[name, ms], ...]}, one entry per launch.
Names are normalised (return type and parameter list dropped, namespaces and template arguments kept) and
classified by the first of CLASSES whose pattern they contain (case-insensitive); bench/zoo_compare.py prints one
table per model with what zoo.sh left in its OUT_DIR.
"""
import argparse
import csv
import io
import json
import os
import re
import subprocess
import sys

# (class, pattern), first match wins. Order matters: cuDNN's and Loom's attention kernels carry "sm90_" and
# "softmax" in their names, Triton's fused kernels name every op they fused ("..._add_native_layer_norm_..."),
# and Loom's loss and LayerNorm kernels write "partials" like its bias-gradient reductions.
CLASSES = [
    ("attention", r"flash|fmha|attention|sdpa|cudnn|_heads_kernel|\bsoftmax_(forward|backward)_kernel"),
    # cuBLASLt's bias-gradient epilogue may run as its own kernel (epilogue::globalKernelBgradAB...): GEMM work.
    ("GEMM", r"gemm|cutlass|nvjet|xmma|sm90_|sm80_|cublas|splitk|gemv|triton_tem_|bgrad"),
    ("LayerNorm", r"layer_?norm|gammabeta"),
    ("cross-entropy", r"cross_entropy|softmax|nll_loss|distillation"),
    ("optimizer", r"adam|multi_tensor|optimizer"),
    ("embedding", r"embedding|add_position|index_?select|compute_grad_weight|radix_?sort|onesweep|segment"),
    ("reduction", r"sum_squares|partials|reduce_kernel|triton_red_|triton_per_|nonfinite|dot_rows"),
    ("elementwise", r"elementwise|triton_poi_|gelu|add|mul|scale|convert|copy|fill|zero|accumulate|cast"),
]
OTHER = "other"
CLASS_NAMES = [c for c, _ in CLASSES] + [OTHER]
_COMPILED = [(c, re.compile(p, re.IGNORECASE)) for c, p in CLASSES]
NCU_METRIC = "gpu__time_duration.sum"
NCU_UNIT_MS = {"ns": 1e-6, "nsecond": 1e-6, "us": 1e-3, "usecond": 1e-3, "ms": 1.0, "msecond": 1.0, "s": 1e3,
               "second": 1e3}


def normalise(name):
    """'void ns::k<T>(int, float*)' -> 'ns::k<T>': the parameter list (the last top-level parentheses) and a
    leading return type go; '(anonymous namespace)' inside the name stays."""
    name = name.strip()
    if name.endswith(")"):
        depth = 0
        for i in range(len(name) - 1, -1, -1):
            depth += {")": 1, "(": -1}.get(name[i], 0)
            if depth == 0:
                name = name[:i].rstrip()
                break
    return re.sub(r"^void\s+", "", name)


def classify(name):
    """The class of a kernel name (normalised or not): the first of CLASSES that matches, else "other"."""
    base = normalise(name)
    return next((c for c, rx in _COMPILED if rx.search(base)), OTHER)


def parse_ncu_csv(text):
    """[(kernel name, ms)] from `ncu --csv --print-units base --metrics gpu__time_duration.sum` output, one per
    profiled launch in launch order. The profiled program's own output before the header, and ncu's ==PROF==
    lines, are skipped; thousands separators are dropped. Raises ValueError when there is no CSV header or a
    duration has no known unit."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith('"ID","Process ID"')), None)
    if start is None:
        raise ValueError('no ncu CSV header ("ID","Process ID",...) in the output: no kernel was profiled')
    rows = csv.DictReader(io.StringIO("\n".join(line for line in lines[start:] if line.startswith('"'))))
    kernels = {}
    for row in rows:
        if row.get("Metric Name") != NCU_METRIC:
            continue
        unit = row.get("Metric Unit", "")
        if unit not in NCU_UNIT_MS:
            raise ValueError(f"ncu CSV: unknown unit {unit!r} for {NCU_METRIC} (launch ID {row['ID']})")
        value = float(row["Metric Value"].replace(",", ""))
        kernels[int(row["ID"])] = (normalise(row["Kernel Name"]), value * NCU_UNIT_MS[unit])
    return [kernels[i] for i in sorted(kernels)]


def parse_chrome_trace(trace):
    """[(kernel name, ms)] from a torch.profiler Chrome trace (its "kernel" events; memcpy and memset are not
    kernels, as under ncu)."""
    return [(normalise(e["name"]), e["dur"] / 1e3) for e in trace.get("traceEvents", [])
            if str(e.get("cat", "")).lower() == "kernel"]


def summarise(kernels):
    """{class: {"ms", "count", "top": [[name, ms] of its 3 longest-running names]}} for every class."""
    out = {c: {"ms": 0.0, "count": 0, "by_name": {}} for c in CLASS_NAMES}
    for name, ms in kernels:
        entry = out[classify(name)]
        entry["ms"] += ms
        entry["count"] += 1
        entry["by_name"][name] = entry["by_name"].get(name, 0.0) + ms
    for entry in out.values():
        entry["top"] = [[n, ms] for n, ms in sorted(entry.pop("by_name").items(), key=lambda kv: -kv[1])[:3]]
    return out


def table(loom, peer, loom_label="Loom", peer_label="peer"):
    """Markdown lines: per class, both sides' milliseconds, Loom/peer (above 1: Loom spends longer) and launch
    counts; then the longest-running "other" kernels of each side (what the patterns missed)."""
    a, b = summarise(loom), summarise(peer)
    lines = [f"| class | {loom_label} ms | {peer_label} ms | {loom_label}/{peer_label} | {loom_label} kernels | "
             f"{peer_label} kernels |", "|---|---:|---:|---:|---:|---:|"]
    ratio = lambda x, y: f"{x / y:.2f}×" if y > 0 else "—"
    for c in CLASS_NAMES:
        if a[c]["count"] or b[c]["count"]:
            lines.append(f"| {c} | {a[c]['ms']:.2f} | {b[c]['ms']:.2f} | {ratio(a[c]['ms'], b[c]['ms'])} | "
                         f"{a[c]['count']} | {b[c]['count']} |")
    ta, tb = sum(ms for _, ms in loom), sum(ms for _, ms in peer)
    lines.append(f"| **total** | **{ta:.2f}** | **{tb:.2f}** | **{ratio(ta, tb)}** | {len(loom)} | {len(peer)} |")
    for label, s in ((loom_label, a), (peer_label, b)):
        if s[OTHER]["top"]:
            names = ", ".join(f"`{n[:80]}` {ms:.2f} ms" for n, ms in s[OTHER]["top"])
            lines.append(f"\n{label} \"other\", longest: {names}")
    return lines


def write_kernels(path, source, label, command, kernels):
    with open(path, "w") as f:
        json.dump({"source": source, "label": label, "command": command, "kernels": kernels}, f)


def run_ncu(args):
    command = [args.ncu, "--profile-from-start", "off", "--clock-control", "none", "--cache-control", "none",
               "--metrics", NCU_METRIC, "--csv", "--print-units", "base", *args.command]
    print(" ".join(command), flush=True)
    with open(args.csv, "w") as raw:
        rc = subprocess.run(command, stdout=raw, stderr=subprocess.STDOUT).returncode  # ==ERROR== lines too
    text = open(args.csv).read()
    print("\n".join(line for line in text.splitlines() if not line.startswith('"')), flush=True)
    if rc != 0:
        errors = [line for line in text.splitlines() if line.startswith("==ERROR==")]
        sys.exit(f"zoo_breakdown.py: ncu exited with {rc}" + (f": {errors[0]}" if errors else ""))
    kernels = parse_ncu_csv(text)
    write_kernels(args.json, "Nsight Compute", args.label, args.command, kernels)
    print(f"{len(kernels)} kernels, {sum(ms for _, ms in kernels):.2f} ms")


def run_torch(args):
    """Runs the peer script as __main__ with a global optimizer-step hook driving the profiler's schedule."""
    import importlib
    import runpy
    import torch
    from torch.profiler import ProfilerActivity, profile, schedule

    if args.warmup < 1:
        sys.exit("zoo_breakdown.py: --warmup must be at least 1 (the profiler warms up on the last warm-up step)")
    script = os.path.abspath(args.command[0])
    sys.argv = [script, *args.command[1:]]
    sys.path.insert(0, os.path.dirname(script))
    traced = []
    with profile(activities=[ProfilerActivity.CUDA],  # kernels only: no CPU ops in a trace of thousands
                 schedule=schedule(wait=args.warmup - 1, warmup=1, active=1, repeat=1),
                 on_trace_ready=lambda p: (p.export_chrome_trace(args.trace), traced.append(True))) as prof:
        def after_optimizer_step(optimizer, *_):
            torch.cuda.synchronize()  # the step's kernels end inside its profiling window
            prof.step()
        # The submodule by import: torch.optim's namespace drops the name `optimizer` (torch 2.11).
        optimizer_module = importlib.import_module("torch.optim.optimizer")
        hook = optimizer_module.register_optimizer_step_post_hook(after_optimizer_step)
        try:
            runpy.run_path(script, run_name="__main__")
        finally:
            hook.remove()
    if not traced:
        sys.exit(f"zoo_breakdown.py: {script} made fewer than {args.warmup + 1} optimizer steps: nothing profiled")
    with open(args.trace) as f:
        kernels = parse_chrome_trace(json.load(f))
    write_kernels(args.json, "torch.profiler", args.label, args.command, kernels)
    print(f"{len(kernels)} kernels, {sum(ms for _, ms in kernels):.2f} ms")


def load_kernels(path):
    with open(path) as f:
        return [(name, ms) for name, ms in json.load(f)["kernels"]]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    ncu = sub.add_parser("ncu", help="Loom's step under Nsight Compute")
    ncu.add_argument("--ncu", required=True, help="the ncu executable")
    ncu.add_argument("--csv", required=True, help="where ncu's CSV goes")
    torch_mode = sub.add_parser("torch", help="the peer's step under torch.profiler")
    torch_mode.add_argument("--trace", required=True, help="where the Chrome trace goes")
    torch_mode.add_argument("--warmup", type=int, default=3, help="optimizer steps before the profiled one")
    for p in (ncu, torch_mode):
        p.add_argument("--json", required=True, help="the kernel list")
        p.add_argument("--label", default="Loom" if p is ncu else "peer", help="the side's name in tables")
        p.add_argument("command", nargs="+", help="after --: what to run")
    tab = sub.add_parser("table", help="Markdown table of two kernel lists")
    tab.add_argument("loom")
    tab.add_argument("peer")
    args = ap.parse_args()
    if args.mode == "ncu":
        run_ncu(args)
    elif args.mode == "torch":
        run_torch(args)
    else:
        with open(args.peer) as f:
            peer_label = json.load(f).get("label", "peer")
        print("\n".join(table(load_kernels(args.loom), load_kernels(args.peer), "Loom", peer_label)))


if __name__ == "__main__":
    main()
