// Reading weights into a model from a safetensors file of any supported layout: this project's own (what
// checkpoints and `loom export` write), Hugging Face GPT-2, or timm ViT/DeiT.
//
// Errors: throw loom::Error naming the file and the tensor or metadata key. Threads: no state.
#pragma once
#include <optional>
#include <string>

#include "core/safetensors.h"
#include "trainer/models/model_shape.h"

namespace loom {

// The model shape a file written by this project carries in its "loom_model" metadata (checkpoints'
// model.safetensors, `loom export`), or nullopt for files without one (Hugging Face, timm, older checkpoints).
// Throws naming `path` when the metadata is present but invalid.
std::optional<ModelShape> shape_in_file(const safetensors::File& file, const std::string& path);

// The tensors of `file` in our names and shapes for a model of `shape`: Hugging Face GPT-2 names ("h.0." or
// "transformer.h.0.") are converted for GPT, timm shapes (3-D cls_token / pos_embed, 4-D patch weights) for
// ViT; our own layout is returned as is. Whether every parameter is present with its shape is checked when
// the model loads them (ParameterStore::load_named).
NamedTensors to_own_layout(const ModelShape& shape, const NamedTensors& tensors);

// Throws unless every block of `shape` has the same heads, q/k and v head dims equal to d_model / heads, the same
// MLP width and the default attention scale 1/sqrt(head dim): what `format` ("Hugging Face GPT-2", "timm ViT")
// can represent. The error names `source`, the first block that differs, and `loom export`, which writes any
// widths.
void check_uniform_blocks(const ModelShape& shape, const std::string& source, const std::string& format);

}  // namespace loom
