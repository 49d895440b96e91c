"""PyTorch peer of loom_layernorm_bench: torch.nn.functional.layer_norm forward and backward on the same shapes
(random inputs in the same ranges, the same dtype), median of CUDA-event-timed calls.

The backward is timed alone: torch.autograd.grad of one recorded forward (retain_graph), giving dx, dw, db.
PyTorch writes dx (Loom's backend accumulates into it, reading it too) and reduces dw/db in a separate pass
that reads x and dout again.

usage: python3 layernorm_peer.py [--rows 16384] [--widths 768 ... 8192] [--dtype bf16] [--reps 20] [--warmup 5]
                                 [--json FILE]
"""
import argparse, json
import torch
import torch.nn.functional as F

from peer_timing import median_ms


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=16384)
    p.add_argument("--widths", type=int, nargs="+", default=[768, 1024, 1280, 1600, 2048, 2560, 4096, 8192])
    p.add_argument("--dtype", default="bf16", choices=["bf16", "f16", "f32"])
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--json")
    a = p.parse_args()
    dtype = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}[a.dtype]
    dev = torch.device("cuda")
    prop = torch.cuda.get_device_properties(0)
    print(f"{prop.name}, torch {torch.__version__}, dtype {a.dtype}, {a.rows} rows")
    print(f"{'C':>6} | {'fwd us':>8} | {'bwd us':>8}")
    rows = []
    for C in a.widths:
        x = (torch.rand(a.rows, C, device=dev) * 5 - 2).to(dtype).requires_grad_()
        w = (torch.rand(C, device=dev) + 0.5).to(dtype).requires_grad_()
        b = (torch.rand(C, device=dev) * 2 - 1).to(dtype).requires_grad_()
        dout = (torch.rand(a.rows, C, device=dev) * 2 - 1).to(dtype)
        with torch.no_grad():
            fwd_ms = median_ms(lambda: F.layer_norm(x, (C,), w, b, 1e-5), a.warmup, a.reps)
        y = F.layer_norm(x, (C,), w, b, 1e-5)
        bwd_ms = median_ms(lambda: torch.autograd.grad(y, (x, w, b), dout, retain_graph=True), a.warmup, a.reps)
        print(f"{C:6} | {fwd_ms * 1e3:8.1f} | {bwd_ms * 1e3:8.1f}", flush=True)
        rows.append({"width": C, "rows": a.rows, "fwd_us": fwd_ms * 1e3, "bwd_us": bwd_ms * 1e3})
        del x, w, b, dout, y
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"card": f"{prop.name}, torch {torch.__version__}", "dtype": a.dtype, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
