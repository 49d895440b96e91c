// The `loom` subcommands that read a checkpoint: sample, export (this project's layout), export-hf (Hugging
// Face GPT-2), export-timm (timm ViT / DeiT). Each writes what it says to stdout (or files) and throws
// loom::Error naming the checkpoint or file on bad input; `loom` prints it and exits 1.
// Thread-safety: one call at a time (they print to std::cout).
#pragma once
#include <cstdint>
#include <string>

namespace loom {

// Continues `prompt` (a new document when empty) by `tokens` tokens of a GPT checkpoint on the CPU; prints the
// prompt and the continuation.
int cmd_sample(const std::string& checkpoint, const std::string& prompt, int64_t tokens, double temperature,
               int64_t top_k, uint64_t seed);

// out_dir/model.safetensors (our names, the shape in its "loom_model" metadata) and out_dir/model.yaml, a
// `model:` section describing every width, with init_from pointing at the weights.
int cmd_export(const std::string& checkpoint, const std::string& out_dir);

// A folder that `transformers.GPT2LMHeadModel.from_pretrained(out_dir)` loads: model.safetensors (Hugging Face
// GPT-2 names, hf_gpt2.h), config.json (hf_gpt2_config) and, for GPT-2's vocabulary, the tokenizer's
// vocab.json and merges.txt (copied from the run's data.tokenizer folder) for AutoTokenizer.from_pretrained.
int cmd_export_hf(const std::string& checkpoint, const std::string& out_dir);

// A folder that timm loads: model.safetensors (timm names and shapes, timm_vit.h) and config.json (timm's
// Hub format: timm_vit_config).
int cmd_export_timm(const std::string& checkpoint, const std::string& out_dir);

}  // namespace loom
