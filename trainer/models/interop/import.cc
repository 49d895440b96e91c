#include "trainer/models/interop/import.h"

#include "core/error.h"
#include "trainer/models/interop/hf_gpt2.h"
#include "trainer/models/interop/timm_vit.h"

namespace loom {

std::optional<ModelShape> shape_in_file(const safetensors::File& file, const std::string& path) {
  const auto it = file.metadata.find("loom_model");
  if (it == file.metadata.end()) return std::nullopt;
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(it->second);
  } catch (const nlohmann::json::exception& e) {
    fail(path, ": metadata \"loom_model\" is not valid JSON: ", e.what());
  }
  return model_shape_from_json(json, path + " (metadata \"loom_model\")");
}

namespace {

bool looks_like_hf_gpt2(const NamedTensors& tensors) {
  for (const auto& [name, t] : tensors)
    if (name.rfind("h.0.", 0) == 0 || name.rfind("transformer.h.0.", 0) == 0) return true;
  return false;
}

bool looks_like_timm(const NamedTensors& tensors) {
  for (const auto& [name, t] : tensors) {
    if ((name == "cls_token" || name == "dist_token" || name == "pos_embed") && t.ndim() == 3) return true;
    if (name == "patch_embed.proj.weight" && t.ndim() == 4) return true;
  }
  return false;
}

}  // namespace

NamedTensors to_own_layout(const ModelShape& shape, const NamedTensors& tensors) {
  if (shape.is_gpt() && looks_like_hf_gpt2(tensors)) return import_hf_gpt2(tensors, shape.padded_vocab);
  if (shape.is_vit() && looks_like_timm(tensors)) return import_timm_vit(tensors, shape);
  return tensors;
}

}  // namespace loom
