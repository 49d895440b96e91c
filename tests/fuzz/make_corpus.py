#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets into tests/fuzz/corpus/<target>/ (checked in; rerun after a
format change). Seeds are small valid inputs (and a few near-misses) that give libFuzzer a start inside each
format; the fuzzers' own finds go to build/fuzz/found/, never here. Needs protoc for the controller seeds."""
import gzip, json, os, shutil, struct, subprocess, sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fuzz", "corpus")


def put(target, name, data):
    os.makedirs(os.path.join(OUT, target), exist_ok=True)
    with open(os.path.join(OUT, target, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def config_seeds():
    for name in ("gpt_tiny.yaml", "vit_tiny_fmnist.yaml", "gpt_tiny_tp2_sp.yaml"):
        with open(os.path.join(ROOT, "configs", name)) as f:
            put("fuzz_config", name, f.read())
    put("fuzz_config", "blocks_and_overrides.yaml",
        "model: {kind: gpt, n_layer: 2, d_model: 16, n_head: 2, vocab_size: 64, max_seq_len: 8,\n"
        "        blocks: [{heads: 2}, {heads: 1, mlp_dim: 8}]}\n"
        "data: {train: 'x_*.bin', batch_size: 2, seq_len: 8, mean: [0.5], std: [.inf]}\n"
        "optim: {lr: 1e-3, beta2: .nan}\ntrain: {max_steps: 1e2, seed: 18446744073709551615}\n"
        "#overrides\noptim.lr=3e-4\nmodel.blocks[1].heads=2\nmodel.blocks.2.heads=1\ntrain.resume=\n")


def safetensors_file(tensors, metadata=None):
    header, data = {}, b""
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    if metadata is not None:
        header["__metadata__"] = metadata
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def safetensors_seeds():
    put("fuzz_safetensors", "two_tensors.safetensors", safetensors_file(
        {"w": ("F32", [2, 3], struct.pack("<6f", *range(6))), "b": ("BF16", [3], b"\x80\x3f" * 3)},
        {"format": "pt"}))
    put("fuzz_safetensors", "all_dtypes.safetensors", safetensors_file(
        {"f64": ("F64", [1], struct.pack("<d", 2.5)), "f16": ("F16", [2], b"\x00\x3c\x00\xc0"),
         "i32": ("I32", [2], struct.pack("<2i", -1, 7)), "u16": ("U16", [1, 1], b"\x05\x00"),
         "empty": ("F32", [0, 4], b""), "scalar": ("F32", [], struct.pack("<f", 1.0))}))


def shard(tokens, count=None, magic=20240520, version=1):
    header = [magic, version, len(tokens) if count is None else count] + [0] * 253
    return struct.pack("<256i", *header) + struct.pack("<%dH" % len(tokens), *tokens)


def shard_seeds():
    put("fuzz_token_shard", "small.bin", shard([50256, 464, 2068, 7586, 21831, 50256]))
    put("fuzz_token_shard", "empty.bin", shard([]))
    put("fuzz_token_shard", "out_of_vocab.bin", shard([1, 2, 50257, 65535]))
    put("fuzz_token_shard", "count_mismatch.bin", shard([1, 2, 3], count=5))


def idx_images(count, rows, cols, pixels):
    return struct.pack(">4I", 0x803, count, rows, cols) + bytes(pixels)


def idx_seeds():
    images = idx_images(2, 3, 4, range(24))
    labels = struct.pack(">2I", 0x801, 3) + bytes([0, 9, 4])
    put("fuzz_idx", "images_plain", b"\x00" + images)
    put("fuzz_idx", "labels_plain", b"\x01" + labels)
    put("fuzz_idx", "images_gzip_of_rest", b"\x02" + images)
    put("fuzz_idx", "labels_gzip_of_rest", b"\x03" + labels)
    put("fuzz_idx", "images_gz_file", b"\x00" + gzip.compress(images, mtime=0))
    put("fuzz_idx", "labels_gz_file", b"\x01" + gzip.compress(labels, mtime=0))
    put("fuzz_idx", "huge_header_gzip_of_rest", b"\x02" + idx_images(6000000, 28, 28, [0] * 784))


def state_seeds():
    config_yaml = "model:\n  kind: \"gpt\"\n  n_layer: 2\n  d_model: 16\n  n_head: 4\n"
    put("fuzz_checkpoint_state", "gpt.json", json.dumps(
        {"config_yaml": config_yaml, "data": {"train": {"epoch": 0, "index": 80}}, "data_parallel_size": 1,
         "format": "loom-checkpoint-1", "step": 20}, indent=2) + "\n")
    put("fuzz_checkpoint_state", "vit_rng.json", json.dumps(
        {"format": "loom-checkpoint-1", "step": 9223372036854775807, "rng": {"seed": 1337, "offset": 4096},
         "data": {"train": {"epoch": 3, "index": 0}}, "data_parallel_size": 2}) + "\n")
    put("fuzz_checkpoint_state", "duplicate_keys.json", '{"format": "loom-checkpoint-1", "step": 1, "step": 2}')


def tokenizer_text_seeds():
    put("fuzz_tokenizer_text", "english.txt", "Hello world! It's 2024, isn't it?\n\n  The  quick\tbrown fox.")
    put("fuzz_tokenizer_text", "unicode.txt", "caf\u00e9 \u65e5\u672c\u8a9e \U0001f600 \u0661\u0662 \u00a0x\u2028y")
    put("fuzz_tokenizer_text", "special.txt", "a<|endoftext|>b <|endoftext|><|endoftext|> <|endof")
    put("fuzz_tokenizer_text", "invalid_utf8.bin", b"ab\xff\xfe cd\xc3 \xe2\x82 ok \xf0\x9f\x98\x80\x80")


def bytes_to_unicode():
    """GPT-2's byte -> printable character table (encoder.py)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + \
        list(range(ord("\xae"), ord("\xff") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def tokenizer_file_seeds():
    table = bytes_to_unicode()
    symbols = [table[b] for b in range(256)]
    merges = [("h", "e"), ("l", "l"), ("he", "ll"), (table[32], "w")]
    vocab = symbols + [a + b for a, b in merges] + ["<|endoftext|>"]
    encoder = json.dumps({s: i for i, s in enumerate(vocab)}, ensure_ascii=False)
    bpe = "#version: 0.2\n" + "".join("%s %s\n" % m for m in merges)
    put("fuzz_tokenizer_files", "byte_level_with_merges", (encoder + "\0" + bpe).encode())
    tiny = json.dumps({"a": 0, "<|endoftext|>": 1})
    put("fuzz_tokenizer_files", "missing_bytes", (tiny + "\0#version: 0.2\n").encode())


CONTROLLER_SEEDS = [
    # (file, rpc byte, credentials byte, live-id byte, message type, text format)
    ("submit_admin", 0, 2, 0, "SubmitJobRequest",
     'world_size: 1 args: "train.max_steps=2" name: "fuzz" max_restarts: 0 config { model { kind: "gpt" '
     'n_layer: 1 d_model: 8 n_head: 2 vocab_size: 64 max_seq_len: 8 } data { train: "x_*.bin" batch_size: 1 '
     'seq_len: 8 } train { max_steps: 1 out_dir: "fuzz-out" } }'),
    ("register_live", 1, 3, 1, "RegisterRequest",
     'attempt: 1 rank: 0 world_size: 1 host: "h" pid: 12345 device: "cpu"'),
    ("heartbeat_live", 2, 3, 1, "HeartbeatRequest",
     'attempt: 1 rank: 0 step: 5 paused: false host_rss_bytes: 1000 step_times { total_ms: 3.5 }'),
    ("metrics_live", 3, 3, 1, "MetricsReport",
     'attempt: 1 rank: 0 step: 5 loss: 2.5 tokens_per_s: 100 lr: 0.001 grad_norm: 1.5'),
    ("control_pause", 4, 2, 1, "ControlRequest", 'action: PAUSE step: 10'),
    ("control_stop_job_token", 4, 3, 1, "ControlRequest", 'action: STOP'),
    ("status_admin", 5, 2, 1, "JobStatusRequest", ''),
    ("status_unknown", 5, 2, 0, "JobStatusRequest", 'job_id: "job-999"'),
    ("list_admin", 6, 2, 0, "ListJobsRequest", ''),
    ("register_no_token", 1, 0, 1, "RegisterRequest", 'attempt: 1 rank: 0 world_size: 1 pid: 1'),
]


def controller_seeds():
    for name, rpc, creds, live, message, text in CONTROLLER_SEEDS:
        wire = subprocess.run(["protoc", "-I", ROOT, "--encode=loom.controller." + message,
                               "launch/controller.proto"], input=text.encode(), cwd=ROOT, check=True,
                              capture_output=True).stdout
        put("fuzz_controller", name, bytes([rpc, creds, live]) + wire)


if __name__ == "__main__":
    shutil.rmtree(OUT, ignore_errors=True)
    for make in (config_seeds, safetensors_seeds, shard_seeds, idx_seeds, state_seeds, tokenizer_text_seeds,
                 tokenizer_file_seeds, controller_seeds):
        make()
    print("seed corpora written to", OUT, file=sys.stderr)
