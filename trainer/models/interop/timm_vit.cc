#include "trainer/models/interop/timm_vit.h"

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

}  // namespace loom
