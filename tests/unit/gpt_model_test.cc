// Whole-model tests of GPT on the CPU backend: a float64 finite-difference gradient check with unequal
// per-block widths, the FLOP count, and the shape/config contracts.
#include <gtest/gtest.h>

#include <cmath>

#include "kernels/backend.h"
#include "tests/common/model_testing.h"
#include "tests/common/test_util.h"
#include "trainer/models/gpt.h"

namespace loom {
namespace {

ModelShape two_unequal_blocks() {
  // init_std large enough that every path carries signal in the check.
  return testing::tiny_gpt_shape({BlockWidths{2, 3, 5, 7}, BlockWidths{1, 4, 2, 9}}, 0.3);
}

// The loss as a function of the master weights (f64, aliased by the compute weights on the CPU).
double loss_at(GptModel& model, const Batch& batch) {
  const EvalStats s = model.evaluate(batch);
  return s.loss_sum / s.count;
}

TEST(GptModel, GradientMatchesFiniteDifferencesInFloat64) {
  auto backend = make_backend(Device::cpu());
  const ModelShape shape = two_unequal_blocks();
  GptModel model(shape, *backend, DType::F64, DType::F64, /*seq=*/5, /*seed=*/7);
  testing::SyntheticTokens data(/*batch=*/2, /*seq=*/5, shape.vocab, /*seed=*/3);
  const Batch batch = data.next_train(Device::cpu());

  backend->zero(model.params().grads());
  const double loss = model.forward_backward(batch, 1.0);
  EXPECT_NEAR(loss, loss_at(model, batch), 1e-12);

  // Rows of the padded vocabulary beyond `vocab` carry no signal: check a sample of the real rows.
  const int64_t checked = testing::expect_gradient_matches_finite_differences(
      model.params(), [&] { return loss_at(model, batch); },
      [&](const ParamEntry& e) { return e.spec.name == "wte.weight" ? shape.vocab * shape.d_model : e.numel; });
  EXPECT_GT(checked, 500);
  const Tensor& g = model.params().grads();
  // The padded vocabulary rows get no gradient at all.
  const auto& wte = model.params().layout().entry("wte.weight");
  for (int64_t i = shape.vocab * shape.d_model; i < wte.numel; ++i) ASSERT_EQ(g.item(wte.offset + i), 0.0);
}

TEST(GptModel, GradientsAccumulateAcrossMicroBatches) {
  auto backend = make_backend(Device::cpu());
  GptModel model(two_unequal_blocks(), *backend, DType::F64, DType::F64, 5, 1);
  testing::SyntheticTokens data(2, 5, 11, 9);
  const Batch batch = data.next_train(Device::cpu());
  backend->zero(model.params().grads());
  model.forward_backward(batch, 1.0);
  const std::vector<float> once = model.params().grads().to_vector();
  model.forward_backward(batch, 0.5);
  const std::vector<float> twice = model.params().grads().to_vector();
  for (size_t i = 0; i < once.size(); ++i) ASSERT_NEAR(twice[i], 1.5f * once[i], 1e-5 * (1 + std::fabs(once[i])));
}

TEST(GptModel, FlopsFollowTheDocumentedConvention) {
  ModelShape s;
  s.kind = "gpt";
  s.vocab = 50257;
  s.padded_vocab = pad_vocab(s.vocab);
  EXPECT_EQ(s.padded_vocab, 50304);
  s.d_model = 768;
  s.max_seq = 1024;
  s.blocks.assign(12, BlockWidths{12, 64, 64, 3072});
  const SampleFlops f = gpt_flops_per_token(s, 1024);
  // Hand count for GPT-2 124M: 12·(3·768² + 768² + 2·768·3072) + 50257·768 matmul weights.
  const double n = 12.0 * (4.0 * 768 * 768 + 2.0 * 768 * 3072) + 50257.0 * 768;
  EXPECT_DOUBLE_EQ(f.model, 6 * n + 12.0 * 12 * 768 * 1024);
  EXPECT_DOUBLE_EQ(f.hardware - f.model, 6.0 * (50304 - 50257) * 768);
  // Pruned, unequal blocks: the attention term follows each block's heads and head dims.
  s.blocks = {BlockWidths{3, 32, 48, 100}};
  const SampleFlops p = gpt_flops_per_token(s, 10);
  const double np = 3.0 * (2 * 32 + 48) * 768 + 3.0 * 48 * 768 + 2.0 * 100 * 768 + 50257.0 * 768;
  EXPECT_DOUBLE_EQ(p.model, 6 * np + 6.0 * 10 * 3 * (32 + 48));
}

TEST(GptModel, AnF32ResidualStreamIsTheComputeDtypeOnTheCpuAndRefusedBesideF64) {
  auto backend = make_backend(Device::cpu());
  const ModelShape shape = two_unequal_blocks();
  Batch batch;
  batch.inputs = Tensor::from_ints({1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, {2, 5});
  batch.targets = Tensor::from_ints({2, 3, 4, 5, 6, 7, 8, 9, 10, 0}, {2, 5});
  GptModel plain(shape, *backend, DType::F32, DType::F32, 5, 1), f32(shape, *backend, DType::F32, DType::F32, 5, 1);
  f32.set_residual_dtype(DType::F32);  // f32 compute: the same model
  EXPECT_EQ(plain.forward_backward(batch, 1.0), f32.forward_backward(batch, 1.0));
  GptModel f64(shape, *backend, DType::F64, DType::F64, 5, 1);
  EXPECT_TRUE(testing::error_message([&] { f64.set_residual_dtype(DType::F32); }).find("train.residual_dtype") !=
              std::string::npos);
}

TEST(GptModel, RecomputingTheGeluGivesTheSameLossAndGradients) {
  // Blocks of MLP width 7 and 9: the shared buffer is sized for the wider, the narrower uses its start.
  auto backend = make_backend(Device::cpu());
  const ModelShape shape = two_unequal_blocks();
  Batch batch;
  batch.inputs = Tensor::from_ints({1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, {2, 5});
  batch.targets = Tensor::from_ints({2, 3, 4, 5, 6, 7, 8, 9, 10, 0}, {2, 5});
  GptModel kept(shape, *backend, DType::F32, DType::F32, 5, 1), recomputed(shape, *backend, DType::F32, DType::F32, 5, 1);
  recomputed.set_recompute_gelu(true);
  for (int step = 0; step < 2; ++step) {  // the second reuses the activations
    backend->zero(kept.params().grads());
    backend->zero(recomputed.params().grads());
    EXPECT_EQ(kept.forward_backward(batch, 1.0), recomputed.forward_backward(batch, 1.0)) << "step " << step;
    EXPECT_EQ(kept.params().grads().to_vector(), recomputed.params().grads().to_vector()) << "step " << step;
  }
}

TEST(GptModel, RejectsBadShapes) {
  auto backend = make_backend(Device::cpu());
  const ModelShape shape = two_unequal_blocks();
  EXPECT_THROW(GptModel(shape, *backend, DType::F32, DType::F32, /*seq=*/7, 1), Error);  // > max_seq
  GptModel model(shape, *backend, DType::F32, DType::F32, 5, 1);
  Batch bad;
  bad.inputs = Tensor::from_ints({1, 2, 3}, {3});
  bad.targets = bad.inputs;
  EXPECT_THROW(model.forward_backward(bad, 1.0), Error);
}

}  // namespace
}  // namespace loom
