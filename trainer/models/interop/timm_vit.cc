#include "trainer/models/interop/timm_vit.h"

#include "trainer/models/interop/import.h"

namespace loom {
namespace {

// timm's shape for one of our tensors; {} when the shapes agree.
Shape timm_shape(const std::string& name, const ModelShape& s) {
  if (name == "cls_token" || name == "dist_token") return {1, 1, s.d_model};
  if (name == "pos_embed") return {1, s.tokens(), s.d_model};
  if (name == "patch_embed.proj.weight") return {s.d_model, s.in_channels, s.patch_size, s.patch_size};
  return {};
}

Shape our_shape(const std::string& name, const ModelShape& s) {
  if (name == "cls_token" || name == "dist_token") return {1, s.d_model};
  if (name == "pos_embed") return {s.tokens(), s.d_model};
  if (name == "patch_embed.proj.weight") return {s.d_model, s.patch_dim()};
  return {};
}

NamedTensors reshape_all(const NamedTensors& in, const ModelShape& s, bool to_timm) {
  NamedTensors out;
  for (const auto& [name, t] : in) {
    const Shape from = to_timm ? our_shape(name, s) : timm_shape(name, s);
    const Shape to = to_timm ? timm_shape(name, s) : our_shape(name, s);
    if (to.empty()) {
      out.emplace_back(name, t);
      continue;
    }
    if (t.shape() != from)
      fail(to_timm ? "export to timm" : "import from timm", ": tensor '", name, "' has shape ", shape_str(t.shape()),
           ", expected ", shape_str(from));
    out.emplace_back(name, t.view(to));
  }
  return out;
}

}  // namespace

NamedTensors export_timm_vit(const NamedTensors& ours, const ModelShape& shape) { return reshape_all(ours, shape, true); }

NamedTensors import_timm_vit(const NamedTensors& timm, const ModelShape& shape) {
  return reshape_all(timm, shape, false);
}

void check_timm_vit_representable(const ModelShape& s, const std::string& source) {
  check_uniform_blocks(s, source, "timm ViT");
  const int64_t mlp = s.blocks.at(0).mlp_dim;
  // timm builds int(embed_dim * mlp_ratio) neurons.
  if (static_cast<int64_t>(static_cast<double>(s.d_model) * (static_cast<double>(mlp) / s.d_model)) != mlp)
    fail(source, ": timm ViT cannot represent an MLP of ", mlp, " for d_model ", s.d_model);
  if (s.ln_eps != 1e-6)
    fail(source, ": timm ViT's LayerNorms use epsilon 1e-6, this model ", s.ln_eps, " (model.ln_eps)");
}

nlohmann::json timm_vit_config(const ModelShape& s, const config::DataConfig& data) {
  const int64_t heads = s.blocks.at(0).heads, classes = s.num_classes;
  nlohmann::json mean = nlohmann::json::array(), std = nlohmann::json::array();
  for (int64_t c = 0; c < s.in_channels; ++c) {
    mean.push_back(data.mean_size() > 0 ? data.mean(static_cast<int>(c % data.mean_size())) : 0.0);
    std.push_back(data.std_size() > 0 ? data.std(static_cast<int>(c % data.std_size())) : 1.0);
  }
  const std::string architecture = s.distilled ? "deit_base_distilled_patch16_224" : "vit_base_patch16_224";
  return {{"architecture", architecture},
          {"num_classes", classes},
          {"num_features", s.d_model},
          {"global_pool", "token"},
          {"model_args",
           {{"img_size", s.image_size},
            {"patch_size", s.patch_size},
            {"in_chans", s.in_channels},
            {"num_classes", classes},
            {"embed_dim", s.d_model},
            {"depth", s.n_layer()},
            {"num_heads", heads},
            {"mlp_ratio", static_cast<double>(s.blocks.at(0).mlp_dim) / s.d_model},
            {"qkv_bias", true},
            {"class_token", true},
            {"global_pool", "token"}}},
          {"pretrained_cfg",
           {{"input_size", {s.in_channels, s.image_size, s.image_size}},
            {"num_classes", classes},
            {"mean", mean},
            {"std", std},
            {"interpolation", "bilinear"},
            {"crop_pct", 1.0},
            {"first_conv", "patch_embed.proj"},
            {"classifier", s.distilled ? nlohmann::json({"head", "head_dist"}) : nlohmann::json("head")}}}};
}

}  // namespace loom
