// Conversion between this framework's ViT/DeiT parameters and timm's names and shapes.
//
// The names are the same (the transformer block already uses timm's); only shapes differ:
//   cls_token, dist_token   ours [1, D]        timm [1, 1, D]
//   pos_embed               ours [T, D]        timm [1, T, D]
//   patch_embed.proj.weight ours [D, C·P·P]    timm [D, C, P, P] (the same memory order)
// so a conversion is a reshape. Errors name the tensor and both shapes.
#pragma once
#include "core/safetensors.h"
#include "trainer/models/vit.h"

namespace loom {

NamedTensors export_timm_vit(const NamedTensors& ours, const ModelShape& shape);
NamedTensors import_timm_vit(const NamedTensors& timm, const ModelShape& shape);

}  // namespace loom
