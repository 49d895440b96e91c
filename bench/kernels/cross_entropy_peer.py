"""PyTorch peer of loom_cross_entropy_bench: the loss and the logits' gradient of one batch, median of
CUDA-event-timed calls, on random bf16 logits of the same shape (nanoGPT's padded vocabulary: every column is a
class).

Modes: eager_bf16 = F.cross_entropy on the bf16 logits + backward; eager_f32 = on logits.float() (what autocast
does: cross_entropy runs in f32) + backward; compile = the f32 variant under torch.compile (the fused kernels
of a compiled nanoGPT step).

usage: python3 cross_entropy_peer.py [--rows 16384] [--padded 50304] [--modes eager_bf16 eager_f32 compile]
                                     [--reps 20] [--warmup 5] [--json FILE]
"""
import argparse, json
import torch
import torch.nn.functional as F

from peer_timing import median_ms


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=16384)
    p.add_argument("--padded", type=int, default=50304)
    p.add_argument("--modes", nargs="+", default=["eager_bf16", "eager_f32", "compile"])
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--json")
    a = p.parse_args()
    prop = torch.cuda.get_device_properties(0)
    print(f"{prop.name}, torch {torch.__version__}, {a.rows} x {a.padded} bf16 logits")
    logits = (torch.rand(a.rows, a.padded, device="cuda") * 12 - 6).to(torch.bfloat16).requires_grad_()
    targets = torch.randint(0, a.padded, (a.rows,), device="cuda")
    f32_loss = lambda z: F.cross_entropy(z.float(), targets)
    losses = {"eager_bf16": lambda z: F.cross_entropy(z, targets), "eager_f32": f32_loss,
              "compile": torch.compile(f32_loss)}
    rows = []
    for mode in a.modes:
        loss_fn = losses[mode]

        def step():
            logits.grad = None
            loss_fn(logits).backward()
        us = median_ms(step, a.warmup, a.reps) * 1e3
        print(f"{mode:10} {us:9.1f} us", flush=True)
        rows.append({"mode": mode, "us": us})
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"card": f"{prop.name}, torch {torch.__version__}", "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
