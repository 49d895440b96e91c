// Conversion between this framework's ViT/DeiT parameters and timm's names and shapes.
//
// The names are the same (the transformer block already uses timm's); only shapes differ:
//   cls_token, dist_token   ours [1, D]        timm [1, 1, D]
//   pos_embed               ours [T, D]        timm [1, T, D]
//   patch_embed.proj.weight ours [D, C·P·P]    timm [D, C, P, P] (the same memory order)
// so a conversion is a reshape. Errors name the tensor and both shapes.
#pragma once
#include <nlohmann/json.hpp>

#include "core/config.pb.h"
#include "core/safetensors.h"
#include "trainer/models/vit.h"

namespace loom {

NamedTensors export_timm_vit(const NamedTensors& ours, const ModelShape& shape);

// Throws naming `source` unless timm's VisionTransformer can build `shape`: uniform blocks
// (check_uniform_blocks), an MLP width that timm's mlp_ratio reproduces (it builds int(d_model × mlp_ratio)
// neurons) and LayerNorm epsilon 1e-6 (timm's ViT norm layer).
void check_timm_vit_representable(const ModelShape& shape, const std::string& source);

// The config.json of timm's Hugging Face Hub format for `shape` (`architecture` a registered ViT or
// DeiT-distilled name, `model_args` with the widths that override it, `pretrained_cfg` with the input size and
// `data`'s normalisation), so `timm.create_model(config["architecture"], **config["model_args"])` builds the
// model the exported model.safetensors loads into (timm versions that read local folders:
// `timm.create_model("local-dir:DIR")`).
nlohmann::json timm_vit_config(const ModelShape& shape, const config::DataConfig& data);

NamedTensors import_timm_vit(const NamedTensors& timm, const ModelShape& shape);

}  // namespace loom
