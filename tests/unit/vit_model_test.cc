// Whole-model tests of ViT/DeiT on the CPU backend: a float64 finite-difference gradient check with unequal
// per-block widths and the distillation token, overfitting one batch, and the FLOP count.
#include <gtest/gtest.h>

#include <cmath>
#include <sstream>

#include "core/config.h"
#include "tests/common/model_testing.h"
#include "tests/common/test_util.h"
#include "trainer/trainer.h"
#include "trainer/models/vit.h"

namespace loom {
namespace {

ModelShape small_vit(bool distilled) {
  return testing::tiny_vit_shape({BlockWidths{2, 3, 5, 7}, BlockWidths{1, 4, 2, 9}}, distilled, 0.3);
}

Batch random_batch(const ModelShape& s, int64_t B, uint64_t seed) {
  PhiloxStream rng(seed, 0);
  std::vector<float> patches(static_cast<size_t>(B * s.patches() * s.patch_dim()));
  for (auto& v : patches) v = rng.normal();
  std::vector<int32_t> labels(static_cast<size_t>(B));
  for (auto& l : labels) l = static_cast<int32_t>(rng.below(static_cast<uint64_t>(s.num_classes)));
  Batch b;
  b.inputs = Tensor::from_vector(patches, {B, s.patches(), s.patch_dim()});
  b.targets = Tensor::from_ints(labels, {B});
  return b;
}

// The training loss (each head on the labels, label smoothing included) as a function of the weights, against
// the gradient of one forward_backward.
void expect_gradient_matches_finite_differences(const ModelShape& shape) {
  auto backend = make_backend(Device::cpu());
  VitModel model(shape, *backend, DType::F64, DType::F64, /*seed=*/4, /*label_smoothing=*/0.1);
  Batch batch = random_batch(shape, 3, 8);
  batch.inputs = batch.inputs.cast(DType::F64);

  backend->zero(model.params().grads());
  model.forward_backward(batch, 1.0);
  testing::expect_gradient_matches_finite_differences(model.params(), [&] {
    Tensor saved = model.params().grads().to(Device::cpu());
    const double l = model.forward_backward(batch, 0.0);
    model.params().grads().copy_from(saved);
    return l;
  });
}

class VitGradient : public ::testing::TestWithParam<bool> {};

TEST_P(VitGradient, MatchesFiniteDifferencesInFloat64) { expect_gradient_matches_finite_differences(small_vit(GetParam())); }

// Pruned blocks whose attention output (tokens·heads·v dim = 6·1·1 per image) is narrower than the embedding (8):
// the heads' input gradient once borrowed that block's scratch and overran it.
TEST(VitModel, ABlockNarrowerThanTheEmbeddingTrains) {
  expect_gradient_matches_finite_differences(
      testing::tiny_vit_shape({BlockWidths{1, 2, 1, 4}, BlockWidths{1, 1, 1, 3}}, /*distilled=*/true, 0.3));
}

INSTANTIATE_TEST_SUITE_P(ClassTokenOnlyAndDistilled, VitGradient, ::testing::Values(false, true));

TEST(VitModel, OverfitsOneBatch) {
  testing::TempDir dir;
  const config::RunConfig cfg = parse_run_config(
      "model: {kind: vit, n_layer: 2, d_model: 16, n_head: 2, image_size: 6, patch_size: 3, in_channels: 2,\n"
      "        num_classes: 5, distilled: true}\n"
      "data: {train: unused, batch_size: 6}\n"
      "optim: {lr: 0.01, warmup_steps: 2, weight_decay: 0.0}\n"
      "train: {max_steps: 120, log_every: 0, progress: false, out_dir: \"" + dir.path() + "\"}\n",
      "vit_overfit");
  auto backend = make_backend(Device::cpu());
  VitModel model(model_shape_from_config(cfg.model()), *backend, DType::F32, DType::F32, 1, 0.0);
  testing::FixedBatch data(random_batch(model.shape(), 6, 3));
  std::ostringstream log;
  const TrainResult r = Trainer(cfg, model, data, log).run();
  EXPECT_LT(r.last_train_loss, 0.05);
  EXPECT_EQ(r.last_val_accuracy, 1.0);
}

TEST(VitModel, FlopsFollowTheDocumentedConvention) {
  ModelShape s;  // DeiT-S at 224/16
  s.kind = "vit";
  s.image_size = 224;
  s.patch_size = 16;
  s.in_channels = 3;
  s.num_classes = 1000;
  s.d_model = 384;
  s.blocks.assign(12, BlockWidths{6, 64, 64, 1536});
  EXPECT_EQ(s.tokens(), 197);
  const SampleFlops f = vit_flops_per_image(s);
  const double per_block = 4.0 * 384 * 384 + 2.0 * 384 * 1536;
  const double expect = 6.0 * 197 * 12 * per_block + 6.0 * 197 * 197 * 12 * 6 * 128 + 6.0 * 196 * 768 * 384 +
                        6.0 * 384 * 1000;
  EXPECT_DOUBLE_EQ(f.model, expect);
  EXPECT_LT(f.hardware, f.model);
}

TEST(VitModel, RecomputingTheGeluGivesTheSameLossAndGradients) {
  auto backend = make_backend(Device::cpu());
  const ModelShape shape = small_vit(true);  // MLP widths 7 and 9: one shared buffer of the wider
  const Batch batch = random_batch(shape, 3, 5);
  VitModel kept(shape, *backend, DType::F32, DType::F32, 2, 0.1), recomputed(shape, *backend, DType::F32, DType::F32, 2, 0.1);
  recomputed.set_recompute_gelu(true);
  for (int step = 0; step < 2; ++step) {
    backend->zero(kept.params().grads());
    backend->zero(recomputed.params().grads());
    EXPECT_EQ(kept.forward_backward(batch, 1.0), recomputed.forward_backward(batch, 1.0)) << "step " << step;
    EXPECT_EQ(kept.params().grads().to_vector(), recomputed.params().grads().to_vector()) << "step " << step;
  }
}

TEST(VitModel, RejectsBadInput) {
  auto backend = make_backend(Device::cpu());
  VitModel model(small_vit(false), *backend, DType::F32, DType::F32, 1, 0.0);
  Batch bad = random_batch(small_vit(false), 2, 1);
  bad.inputs = bad.inputs.view({2, 2, -1});
  EXPECT_THROW(model.forward_backward(bad, 1.0), Error);
  config::ModelConfig m;
  m.set_kind("vit");
  m.set_n_layer(1);
  m.set_d_model(8);
  m.set_n_head(2);
  m.set_image_size(28);
  m.set_patch_size(5);
  EXPECT_THROW(model_shape_from_config(m), Error);
}

}  // namespace
}  // namespace loom
