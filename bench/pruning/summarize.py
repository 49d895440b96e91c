#!/usr/bin/env python3
"""The summary table of bench/pruning/device_session.sh: what, card, measured, ratio, acceptance.

usage: summarize.py a|b OUT_DIR WORK_DIR
Reads what the session left in OUT_DIR (card.txt, stages.txt, *_bench.json, *.metrics.jsonl) and the stage
logs in WORK_DIR; prints a Markdown table. A missing input (a stage that failed or was skipped for time) shows
as a row saying so, never as a number.
"""
import json
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from stage_outputs import load_json, read, stage_results  # noqa: E402


def records(path):
    text = read(path, "")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def last(recs, key):
    for r in reversed(recs):
        if key in r:
            return r[key]
    return None


def target_ratio(work, stage):
    """The final latency target over the unpruned prediction, from the pruning run's log line."""
    m = re.search(r"pruning: predicted ([\d.e+-]+) ms .*target ([\d.e+-]+) ms", read(os.path.join(work, stage + ".log"), ""))
    return float(m.group(2)) / float(m.group(1)) if m else float("nan")


def parameters(work, stage):
    m = re.search(r"model, (\d+) parameters", read(os.path.join(work, stage + ".log"), ""))
    return int(m.group(1)) if m else None


def main():
    part, out, work = sys.argv[1], sys.argv[2], sys.argv[3]
    card = read(os.path.join(out, "card.txt"), "?").splitlines()[0].split(",")[0].strip()
    stages = stage_results(out)
    rows = []

    def row(what, measured, ratio="", verdict=""):
        rows.append((what, card, measured, ratio, verdict))

    def missing(what, stage):
        rc, seconds = stages.get(stage, (None, None))
        why = "not run (time)" if rc is None else f"stage {stage} exited {rc} after {seconds} s"
        row(what, why)

    if part == "a":
        table = load_json(os.path.join(out, "deit_b_table.json"))
        if table:
            points = len(table["block_ms"])
            row(f"DeiT-B block latency table ({table['mode']}, B{table['batch']}, {table['dtype']}, {points} block "
                f"shapes + {len(table['fixed_ms'])} fixed parts)", f"built in {stages['deit_b_table'][1]} s")
        else:
            missing("DeiT-B latency table", "deit_b_table")
        bench = load_json(os.path.join(out, "deit_b_bench.json"))
        if bench:
            for s in bench["shapes"]:
                r = s["measured_over_predicted"]
                row(f"predicted vs measured {bench['mode']} step: {s['name']} (predicted "
                    f"{s['predicted_ratio']:.3f} of unpruned)",
                    f"{s['measured_ms']:.2f} ms measured, {s['predicted_ms']:.2f} ms predicted", f"{r:.3f}",
                    "ok" if abs(r - 1) <= 0.10 else "off by more than 10 %")
            for mode, what in (("training", "training step"), ("inference", "forward only")):
                sp = bench.get("speedup", {}).get(mode)
                if sp:
                    row(f"DeiT-B pruned to a {target_ratio(work, 'deit_b_prune'):.2f} target vs unpruned, {what} "
                        f"(B{bench['batch']})",
                        f"{sp['unpruned_ms']:.2f} ms -> {sp['pruned_ms']:.2f} ms", f"{sp['speedup']:.3f}x",
                        "ok" if sp["speedup"] >= 1.8 else "below 1.8x")
        else:
            missing("DeiT-B predictions and speed-up", "deit_b_bench")
        full = parameters(work, "deit_b_prune")
        kept = re.findall(r"\| params (\d+) \|", read(os.path.join(work, "deit_b_prune.log"), ""))
        if full and kept:
            row("DeiT-B parameters, unpruned -> pruned", f"{full:,} -> {int(kept[-1]):,}", f"{int(kept[-1]) / full:.3f}")
    else:
        base = records(os.path.join(out, "deit_s_base.metrics.jsonl"))
        pruned = records(os.path.join(out, "deit_s_pruned.metrics.jsonl"))
        control = records(os.path.join(out, "deit_s_control.metrics.jsonl"))
        a0, a1, a2 = last(base, "val_accuracy"), last(pruned, "val_accuracy"), last(control, "val_accuracy")
        steps = lambda recs: recs[-1]["step"] if recs else 0
        if a0 is not None:
            row(f"DeiT-S on Fashion-MNIST-224, unpruned ({steps(base)} steps), test accuracy", f"{100 * a0:.2f} %")
        else:
            missing("DeiT-S unpruned", "deit_s_base")
        if a1 is not None and a0 is not None:
            p = last(pruned, "prune") or {}
            drop = 100 * (a0 - a1)
            row(f"DeiT-S pruned to {target_ratio(work, 'deit_s_prune'):.2f} (predicted "
                f"{p.get('latency_ratio', float('nan')):.3f}, "
                f"{p.get('parameters', 0):,} parameters) + fine-tuned, {steps(pruned)} steps, test accuracy",
                f"{100 * a1:.2f} %", f"drop {drop:.2f} points", "ok" if drop <= 1 else "drop above 1 point")
        else:
            missing("DeiT-S pruned + fine-tuned", "deit_s_prune")
        if a2 is not None:
            row(f"DeiT-S control: unpruned trained the same {steps(control)} extra steps, test accuracy",
                f"{100 * a2:.2f} %", f"pruned - control {100 * (a1 - a2):+.2f} points" if a1 is not None else "")
        g0 = last(records(os.path.join(out, "gpt2_base.metrics.jsonl")), "val_loss")
        g_pruned = records(os.path.join(out, "gpt2_pruned.metrics.jsonl"))
        g1, g2 = last(g_pruned, "val_loss"), last(records(os.path.join(out, "gpt2_control.metrics.jsonl")), "val_loss")
        if g0 is not None:
            row("GPT-2 124M on linux-doc, unpruned, validation loss", f"{g0:.4f}")
        else:
            missing("GPT-2 unpruned", "gpt2_base")
        if g1 is not None and g0 is not None:
            p = last(g_pruned, "prune") or {}
            row(f"GPT-2 124M pruned to {target_ratio(work, 'gpt2_prune'):.2f} (predicted "
                f"{p.get('latency_ratio', float('nan')):.3f}, "
                f"{p.get('parameters', 0):,} parameters) + fine-tuned, validation loss", f"{g1:.4f}",
                f"change {g1 - g0:+.4f}")
        else:
            missing("GPT-2 pruned + fine-tuned", "gpt2_prune")
        if g2 is not None:
            row("GPT-2 control: unpruned trained the same extra steps, validation loss", f"{g2:.4f}",
                f"pruned - control {g1 - g2:+.4f}" if g1 is not None else "")
        for m, name in (("deit_s", "DeiT-S"), ("gpt2", "GPT-2 124M")):
            bench = load_json(os.path.join(out, f"{m}_bench.json"))
            for mode, what in (("training", "training step"), ("inference", "forward only")):
                sp = (bench or {}).get("speedup", {}).get(mode)
                if sp:
                    row(f"{name} pruned vs unpruned, {what}", f"{sp['unpruned_ms']:.2f} ms -> {sp['pruned_ms']:.2f} ms",
                        f"{sp['speedup']:.3f}x")
    print("| what | card | measured | ratio | acceptance |")
    print("|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(str(c) for c in r) + " |")
    print()
    print("stages (wall s): " + ", ".join(f"{k} {v[1]}" + ("" if v[0] == 0 else f" (rc {v[0]})")
                                        for k, v in stages.items()))


if __name__ == "__main__":
    main()
