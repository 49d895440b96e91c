// Conversion between our GPT parameter layout and Hugging Face GPT-2's (the `gpt2` checkpoints on the Hub).
//
// Ours (W are [out, in], as y = x W^T + b):           Hugging Face GPT-2 (Conv1D weights are [in, out]):
//   wte.weight                [Vp, C] (Vp: padded)      wte.weight          [V, C]
//   wpe.weight                [maxT, C]                 wpe.weight          [maxT, C]
//   blocks.{i}.norm1.weight|bias  [C]                   h.{i}.ln_1.weight|bias
//   blocks.{i}.attn.qkv.weight    [3C, C]               h.{i}.attn.c_attn.weight  [C, 3C]   (transposed)
//   blocks.{i}.attn.qkv.bias      [3C]                  h.{i}.attn.c_attn.bias    [3C]
//   blocks.{i}.attn.proj.weight   [C, C]                h.{i}.attn.c_proj.weight  [C, C]    (transposed)
//   blocks.{i}.attn.proj.bias     [C]                   h.{i}.attn.c_proj.bias
//   blocks.{i}.norm2.weight|bias  [C]                   h.{i}.ln_2.weight|bias
//   blocks.{i}.mlp.fc1.weight     [M, C]                h.{i}.mlp.c_fc.weight     [C, M]    (transposed)
//   blocks.{i}.mlp.fc1.bias       [M]                   h.{i}.mlp.c_fc.bias
//   blocks.{i}.mlp.fc2.weight     [C, M]                h.{i}.mlp.c_proj.weight   [M, C]    (transposed)
//   blocks.{i}.mlp.fc2.bias       [C]                   h.{i}.mlp.c_proj.bias
//   norm.weight|bias              [C]                   ln_f.weight|bias
// Both lay out the fused QKV rows as [q heads | k heads | v heads], each head contiguous, so only the
// transposes differ. Hugging Face GPT-2 has equal head widths (3C QKV rows); M may differ per block here.
//
// Errors: throw loom::Error naming the tensor (missing, unexpected, wrong shape). Inputs are not modified.
// Threads: no state; concurrent calls are fine.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "core/safetensors.h"
#include "trainer/models/model_shape.h"

namespace loom {

// Throws unless `shape` is a GPT that Hugging Face GPT-2 can represent: every block with the same heads, q/k and
// v head dims equal to d_model / heads, the same MLP width and the default scale 1/sqrt(head dim). The error
// names the first block that differs and points to `loom export` (this project's safetensors and a YAML model
// section), which represents any widths. `source` names the checkpoint in the message.
void check_hf_gpt2_representable(const ModelShape& shape, const std::string& source);

// The config.json transformers reads for `shape` (GPT2Config: vocabulary, positions, widths, LayerNorm epsilon,
// the tanh GELU, tied embeddings, no dropout), so that GPT2LMHeadModel.from_pretrained(folder) loads a folder
// holding it and export_hf_gpt2's weights as model.safetensors. `shape` must pass check_hf_gpt2_representable.
nlohmann::json hf_gpt2_config(const ModelShape& shape);

// Our parameters -> Hugging Face names (no "transformer." prefix, no lm_head: it is tied to wte), as new
// F32 CPU tensors: the padded wte rows beyond `vocab` are dropped and Linear weights transposed to [in, out].
// Every one of our GPT parameter names must be present, and no others.
NamedTensors export_hf_gpt2(const NamedTensors& ours, int64_t vocab);

// Hugging Face tensors (any float dtype; each name with or without the "transformer." prefix) -> our names
// and layout, as new F32 CPU tensors in our canonical order (wte, wpe, blocks.0.norm1.weight, ..., norm.bias).
// wte is padded with zero rows up to `padded_vocab` (>= V). Ignored: the attention-mask buffers
// h.{i}.attn.bias / h.{i}.attn.masked_bias, and lm_head.weight once checked to equal wte (untied heads are
// an error). Any other name is an error.
NamedTensors import_hf_gpt2(const NamedTensors& hf, int64_t padded_vocab);

// import_hf_gpt2 of a safetensors file (e.g. the Hub's gpt2/model.safetensors); errors also name the file.
NamedTensors load_hf_gpt2(const std::string& path, int64_t padded_vocab);
// export_hf_gpt2 written as a safetensors file with metadata {"format": "pt"}, loadable by transformers.
void save_hf_gpt2(const std::string& path, const NamedTensors& ours, int64_t vocab);

}  // namespace loom
