"""Prints Loom's training throughput beside the PyTorch peers' (JSON files written by bench/train/run.sh)."""
import json, os, sys

out = sys.argv[1]
def load(name):
    path = os.path.join(out, name)
    return json.load(open(path)) if os.path.exists(path) else None

rows = []
for model, unit in [("gpt2_124m", "tok/s"), ("gpt2_350m", "tok/s"), ("deit_s", "img/s"), ("deit_b", "img/s")]:
    ours, peer = load(f"loom_{model}.json"), load(f"peer_{model}.json")
    if not ours or not peer:
        continue
    key = "tok_per_s" if unit == "tok/s" else "samples_per_s"
    peer_key = "tok_per_s" if unit == "tok/s" else "img_per_s"
    modes = {r["mode"]: r for r in peer["rows"]}
    line = f"{model:10} {unit}: loom {ours[key]:>10,.0f} (MFU {ours['mfu']*100:4.1f}%, {ours['peak_gib']:.1f} GiB)"
    for mode in ("eager", "compile"):
        if mode in modes:
            r = modes[mode]
            line += f" | {mode} {r[peer_key]:>10,.0f} ({r['peak_gib']:.1f} GiB) ratio {ours[key] / r[peer_key]:.2f}x"
    rows.append(line)
print("card:", (load("peer_gpt2_124m.json") or load("peer_deit_b.json") or {}).get("card", "?"))
print("\n".join(rows))
