// The shape of a model, GPT or ViT/DeiT: everything needed to build it and lay out its parameters. One struct
// for both kinds (the fields of the other kind stay zero), so the run, checkpoints, export and pruning see one
// description of a model whatever its kind.
//
// A checkpoint carries its model's shape as JSON (model.json, written by the trainer; see
// model_shape_to_json), so resume, sampling, export and model.init_from build the model the checkpoint holds,
// whatever widths pruning left, without the YAML repeating them.
//
// Errors: throw loom::Error naming the config field or the JSON file and key. Threads: no state.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/config.pb.h"
#include "trainer/models/widths.h"

namespace loom {

struct ModelShape {
  std::string kind;  // "gpt" or "vit"
  int64_t d_model = 0;
  std::vector<BlockWidths> blocks;
  double ln_eps = 1e-5, init_std = 0.02;
  // GPT: vocabulary (and its padded size, a multiple of 128 rows for the output GEMM), learned positions.
  int64_t vocab = 0, padded_vocab = 0, max_seq = 0;
  // ViT / DeiT: square images of in_channels planes cut into patch_size² patches; class (+ distillation) token.
  int64_t image_size = 0, patch_size = 0, in_channels = 0, num_classes = 0;
  bool distilled = false;

  bool is_gpt() const { return kind == "gpt"; }
  bool is_vit() const { return kind == "vit"; }
  int64_t n_layer() const { return static_cast<int64_t>(blocks.size()); }
  int64_t patches() const { return (image_size / patch_size) * (image_size / patch_size); }
  int64_t patch_dim() const { return in_channels * patch_size * patch_size; }
  int64_t prefix_tokens() const { return distilled ? 2 : 1; }
  int64_t tokens() const { return patches() + prefix_tokens(); }
  bool operator==(const ModelShape&) const = default;
};

int64_t pad_vocab(int64_t vocab);

// Resolves the shape from the config (defaults: ln_eps 1e-5 for GPT, 1e-6 for ViT). model.n_layer, d_model and
// n_head must be present here (a checkpoint's shape fills them in through reconcile_model_shape instead).
// Throws loom::Error naming the field on missing or invalid values.
ModelShape model_shape_from_config(const config::ModelConfig& model);

// The shape as JSON ({"format": "loom-model-1", "kind": ..., "blocks": [{heads, qk_head_dim, v_head_dim,
// mlp_dim, attention_scale}, ...], ...}); model_shape_from_json reads it back to an equal shape.
nlohmann::json model_shape_to_json(const ModelShape& shape);
// Validates every key (presence, type, range); errors name `source` (e.g. ".../model.json") and the key.
ModelShape model_shape_from_json(const nlohmann::json& json, const std::string& source);

// The shape of a run that starts from a checkpoint whose shape is `saved` (read from `source`): every field the
// config sets must agree with it (else loom::Error "model.d_model is 64 in the config but 48 in <source>"),
// and the fields it leaves out are taken from `saved`. Model-level widths (n_head, head_dim, mlp_dim) are
// compared with every block that model.blocks does not override; derived defaults (d_model / n_head,
// 4 · d_model) are not compared.
ModelShape reconcile_model_shape(const config::ModelConfig& model, const ModelShape& saved, const std::string& source);

// A model config section that describes `shape` exactly (per-block widths and attention scales spelled out),
// for export: model_shape_from_config(model_config_of_shape(s)) == s.
config::ModelConfig model_config_of_shape(const ModelShape& shape);

}  // namespace loom
