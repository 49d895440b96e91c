#include "trainer/models/interop/import.h"

#include <cmath>

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

void check_uniform_blocks(const ModelShape& s, const std::string& source, const std::string& format) {
  const int64_t heads = s.blocks.empty() ? 0 : s.blocks[0].heads;
  for (size_t i = 0; i < s.blocks.size(); ++i) {
    const BlockWidths& b = s.blocks[i];
    const bool even = heads > 0 && b.heads == heads && s.d_model % heads == 0 && b.qk_dim == s.d_model / heads &&
                      b.v_dim == b.qk_dim && b.mlp_dim == s.blocks[0].mlp_dim &&
                      b.scale() == 1.0 / std::sqrt(static_cast<double>(b.qk_dim));
    if (!even)
      fail(source, ": ", format, " cannot represent per-block widths: block ", i, " has ", b.heads,
           " heads of q/k dim ", b.qk_dim, " and v dim ", b.v_dim, ", MLP ", b.mlp_dim, ", attention scale ", b.scale(),
           " (", format, " needs ", heads, " heads of ", heads > 0 ? s.d_model / heads : 0, " dims = d_model ",
           s.d_model, " / heads, MLP ", s.blocks[0].mlp_dim,
           " in every block, scale 1/sqrt(head dim)); `loom export --checkpoint DIR --out DIR` writes this "
           "project's safetensors and a YAML model section, which load with any widths");
  }
}

}  // namespace loom
