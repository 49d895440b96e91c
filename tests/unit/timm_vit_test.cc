#include <gtest/gtest.h>

#include "core/safetensors.h"
#include "tests/common/test_util.h"
#include "trainer/models/interop/timm_vit.h"

namespace loom {
namespace {

ModelShape deit_like() {
  ModelShape s;
  s.kind = "vit";
  s.image_size = 8;
  s.patch_size = 4;
  s.in_channels = 3;
  s.num_classes = 6;
  s.d_model = 12;
  s.distilled = true;
  s.blocks = {BlockWidths{3, 4, 4, 24}, BlockWidths{2, 4, 4, 16}};
  return s;
}

TEST(TimmVit, RoundTripThroughTimmLayoutAndSafetensors) {
  auto backend = make_backend(Device::cpu());
  const ModelShape shape = deit_like();
  VitModel model(shape, *backend, DType::F32, DType::F32, 3, 0.0);
  const NamedTensors ours = model.params().named_master_weights();
  const NamedTensors timm = export_timm_vit(ours, shape);
  auto shape_of = [&](const std::string& name) {
    for (const auto& [n, t] : timm)
      if (n == name) return t.shape();
    return Shape{};
  };
  EXPECT_EQ(shape_of("cls_token"), (Shape{1, 1, 12}));
  EXPECT_EQ(shape_of("dist_token"), (Shape{1, 1, 12}));
  EXPECT_EQ(shape_of("pos_embed"), (Shape{1, 6, 12}));
  EXPECT_EQ(shape_of("patch_embed.proj.weight"), (Shape{12, 3, 4, 4}));
  EXPECT_EQ(shape_of("blocks.1.attn.qkv.weight"), (Shape{24, 12}));
  EXPECT_EQ(shape_of("head_dist.weight"), (Shape{6, 12}));

  testing::TempDir dir;
  safetensors::write(dir / "timm.safetensors", timm, {});
  const NamedTensors back = import_timm_vit(safetensors::read(dir / "timm.safetensors").tensors, shape);
  VitModel reloaded(shape, *backend, DType::F32, DType::F32, /*different seed*/ 99, 0.0);
  reloaded.params().load_named(back, "timm.safetensors");
  EXPECT_EQ(reloaded.params().master().to_vector(), model.params().master().to_vector());
}

TEST(TimmVit, WrongShapeNamesTheTensor) {
  const ModelShape shape = deit_like();
  NamedTensors bad = {{"pos_embed", Tensor::zeros({1, 7, 12}, DType::F32)}};
  try {
    import_timm_vit(bad, shape);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("pos_embed"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace loom
