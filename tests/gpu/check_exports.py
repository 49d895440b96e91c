#!/usr/bin/env python3
"""The interop exports, checked with the libraries they are for (run where transformers, torch and timm are
installed, e.g. the GPU machine; everything runs on the CPU):

  python3 tests/gpu/check_exports.py --loom build/loom --vocab data/gpt2

1. `loom export-hf`: a tiny GPT with GPT-2's vocabulary, trained by `loom train` on a text prepared by
   `loom prepare` from one file, exported; transformers.GPT2LMHeadModel.from_pretrained(folder) and
   AutoTokenizer.from_pretrained(folder) load it, and its greedy continuation of a prompt equals
   `loom sample --temperature 0`'s.
2. `loom export-timm` (skipped, saying so, without timm): a tiny DeiT (distilled) trained on synthetic images,
   exported; timm.create_model(config["architecture"], **config["model_args"]) loads model.safetensors with
   strict=True, and its validation loss and accuracy on the same images equal the ones `loom train` reported.
Prints one PASS/FAIL line per check and exits non-zero on any failure.
"""
import argparse
import json
import os
import random
import re
import struct
import subprocess
import sys
import tempfile

failures = 0


def report(ok, what):
    global failures
    print(("PASS " if ok else "FAIL ") + what, flush=True)
    failures += 0 if ok else 1


def loom(binary, *args):
    r = subprocess.run([binary, *args], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"loom {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r.stdout


def check_hf(binary, vocab, work):
    import torch
    from transformers import AutoTokenizer, GPT2LMHeadModel

    lines = [f"The kernel schedules task {i % 7} on CPU {i % 3} when the timer fires." for i in range(600)]
    with open(os.path.join(work, "text.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    loom(binary, "prepare", "--vocab", vocab, "--out", os.path.join(work, "tokens"), os.path.join(work, "text.txt"))
    config = os.path.join(work, "gpt.yaml")
    with open(config, "w") as f:
        f.write(f"""model: {{kind: gpt, n_layer: 2, d_model: 64, n_head: 4, vocab_size: 50257, max_seq_len: 64}}
data: {{train: "{work}/tokens/train_*.bin", val: "{work}/tokens/val_*.bin", batch_size: 8, seq_len: 64,
       tokenizer: "{vocab}"}}
optim: {{lr: 3.0e-3, warmup_steps: 10}}
train: {{max_steps: 150, device: cpu, progress: false, log_every: 50, out_dir: "{work}/gpt"}}
""")
    loom(binary, "train", config)
    checkpoint = os.path.join(work, "gpt", "ckpt_00000150")
    folder = os.path.join(work, "hf")
    loom(binary, "export-hf", "--checkpoint", checkpoint, "--out", folder)
    model = GPT2LMHeadModel.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    report(model.config.n_layer == 2 and model.config.n_embd == 64, "export-hf: GPT2LMHeadModel.from_pretrained loads")
    prompt = "The kernel schedules"
    ours = loom(binary, "sample", "--checkpoint", checkpoint, "--prompt", prompt, "--tokens", "16",
                "--temperature", "0").rstrip("\n")
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=16, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    theirs = tokenizer.decode(out[0])
    report(ours == theirs, f"export-hf: greedy continuation equals loom sample's\n  loom:         {ours!r}\n"
                           f"  transformers: {theirs!r}")


def write_idx(path, magic, dims, data):
    with open(path, "wb") as f:
        f.write(struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims) + bytes(data))


def check_timm(binary, work):
    try:
        import timm
        import torch
        from safetensors.torch import load_file
    except ImportError as e:
        print(f"SKIP export-timm: {e} (install timm to check it)")
        return
    rng = random.Random(5)
    n, side = 256, 16
    pixels, labels = [], []
    for i in range(n):  # a bright 8x8 square in the quadrant named by the label, over noise
        label = i % 4
        qy, qx = divmod(label, 2)
        for y in range(side):
            for x in range(side):
                bright = qy * 8 <= y < qy * 8 + 8 and qx * 8 <= x < qx * 8 + 8
                pixels.append(min(255, (160 if bright else 40) + rng.randrange(60)))
        labels.append(label)
    write_idx(os.path.join(work, "images.idx"), 0x803, [n, side, side], pixels)
    write_idx(os.path.join(work, "labels.idx"), 0x801, [n], labels)
    config = os.path.join(work, "vit.yaml")
    with open(config, "w") as f:
        f.write(f"""model: {{kind: vit, n_layer: 2, d_model: 32, n_head: 2, mlp_dim: 64, image_size: 16, patch_size: 4,
        num_classes: 4, distilled: true}}
data: {{train: "{work}/images.idx", train_labels: "{work}/labels.idx", val: "{work}/images.idx",
       val_labels: "{work}/labels.idx", batch_size: 32, crop_padding: 0, horizontal_flip: false,
       mean: [0.5], std: [0.25]}}
optim: {{lr: 3.0e-3, warmup_steps: 10, weight_decay: 0.0}}
train: {{max_steps: 150, device: cpu, progress: false, log_every: 50, val_batches: 100, out_dir: "{work}/vit"}}
""")
    done = loom(binary, "train", config)
    m = re.search(r"val loss ([0-9.e+-]+), val accuracy ([0-9.e+-]+)", done)
    val_loss, val_accuracy = float(m.group(1)), float(m.group(2))
    folder = os.path.join(work, "timm")
    loom(binary, "export-timm", "--checkpoint", os.path.join(work, "vit", "ckpt_00000150"), "--out", folder)
    with open(os.path.join(folder, "config.json")) as f:
        cfg = json.load(f)
    model = timm.create_model(cfg["architecture"], pretrained=False, **cfg["model_args"])
    missing, unexpected = model.load_state_dict(load_file(os.path.join(folder, "model.safetensors")), strict=True)
    report(not missing and not unexpected, f"export-timm: {cfg['architecture']} loads with strict=True")
    model.eval()
    x = (torch.tensor(pixels, dtype=torch.float32).view(n, 1, side, side) / 255 - 0.5) / 0.25
    y = torch.tensor(labels)
    with torch.no_grad():
        logits = model(x)  # a distilled model in eval mode: the mean of both heads
    loss = torch.nn.functional.cross_entropy(logits, y).item()
    accuracy = (logits.argmax(1) == y).float().mean().item()
    report(abs(loss - val_loss) <= 1e-4 * max(1.0, val_loss) and abs(accuracy - val_accuracy) <= 1.0 / n,
           f"export-timm: timm's val loss {loss:.6f} / accuracy {accuracy:.4f} equal loom's {val_loss:.6f} / "
           f"{val_accuracy:.4f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loom", default="build/loom")
    parser.add_argument("--vocab", default="data/gpt2", help="folder with GPT-2's encoder.json and vocab.bpe")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="loom-exports-") as work:
        check_hf(os.path.abspath(args.loom), os.path.abspath(args.vocab), work)
        check_timm(os.path.abspath(args.loom), work)
    print("check_exports: " + ("all passed" if failures == 0 else f"{failures} failed"))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
