// The whole ViT / DeiT forward+backward on the CUDA backend against the float64 CPU backend (same seed, so the
// same weights), with unequal per-block widths, with and without the distillation token, in f32 and with bf16
// activations/gradients over f32 master weights; and run-to-run determinism in deterministic mode.
#include <cmath>
#include <string>
#include <tuple>

#include "tests/gpu/cuda_backend_test_util.h"
#include "trainer/models/vit.h"

namespace loom::testing_cuda {
namespace {

constexpr double kLabelSmoothing = 0.1;

ModelShape small_vit(bool distilled) {
  ModelShape s;
  s.kind = "vit";
  s.image_size = 12;
  s.patch_size = 4;  // 9 patches, so 10 or 11 tokens (ragged)
  s.in_channels = 3;
  s.num_classes = 7;
  s.d_model = 32;
  s.distilled = distilled;
  // Unequal (pruned-like) blocks. In bf16 the first block's head dims (multiples of 8) take the flash-attention
  // kernels, the second's v head dim 12 the plain kernel.
  s.blocks = {BlockWidths{4, 8, 16, 48}, BlockWidths{2, 16, 12, 40}};
  s.ln_eps = 1e-6;
  s.init_std = 0.1;
  return s;
}

class CudaVitTest : public CudaBackendTest, public ::testing::WithParamInterface<std::tuple<DType, bool>> {};

TEST_P(CudaVitTest, ForwardBackwardMatchesCpuFloat64) {
  const auto [compute, distilled] = GetParam();
  const ModelShape shape = small_vit(distilled);
  const int64_t B = 5;
  // Patch rows already rounded to the compute dtype, so the GPU and the f64 reference see the same inputs.
  const Tensor patches = random_host({B, shape.patches(), shape.patch_dim()}, compute);
  const Tensor labels = Tensor::from_ints(ints(B, 0, static_cast<int32_t>(shape.num_classes - 1)), {B});
  const Batch host{as_f64(patches), labels};
  const Batch dev{on_gpu(patches), on_gpu(labels)};

  VitModel ref(shape, *cpu_, DType::F64, DType::F64, /*seed=*/11, kLabelSmoothing);
  VitModel model(shape, *gpu_, DType::F32, compute, /*seed=*/11, kLabelSmoothing);
  cpu_->zero(ref.params().grads());
  gpu_->zero(model.params().grads());
  // Two micro-batches, so gradient accumulation is exercised too.
  const double ref_loss = ref.forward_backward(host, 0.5) + ref.forward_backward(host, 0.5);
  const double loss = model.forward_backward(dev, 0.5) + model.forward_backward(dev, 0.5);
  gpu_->synchronize();

  const double tol = compute == DType::F32 ? 1e-5 : 2e-2;
  EXPECT_NEAR(loss, ref_loss, tol * ref_loss);
  EXPECT_LT(relative_l2(model.params().grads(), ref.params().grads()), tol);
  if (compute == DType::F32)
    expect_close(model.params().grads(), ref.params().grads(), 1e-4, "ViT gradients (f32)");

  // Evaluation (both heads' logits averaged for DeiT, no label smoothing) agrees with the reference's.
  const EvalStats st = model.evaluate(dev), want = ref.evaluate(host);
  EXPECT_TRUE(st.classifies);
  ASSERT_EQ(st.count, want.count);
  EXPECT_NEAR(st.loss_sum / st.count, want.loss_sum / want.count, tol * want.loss_sum / want.count);
  if (compute == DType::F32)
    EXPECT_EQ(st.correct, want.correct);
  else  // a near-tie between two classes may round either way in bf16
    EXPECT_NEAR(st.correct, want.correct, 1);

  // f32 images, as the loader delivers them, go through the model's conversion into its compute dtype.
  if (compute != DType::F32) {
    const EvalStats from_f32 = model.evaluate(Batch{on_gpu(patches.cast(DType::F32)), dev.targets});
    ASSERT_EQ(from_f32.count, want.count);
    EXPECT_NEAR(from_f32.loss_sum / from_f32.count, want.loss_sum / want.count, tol * want.loss_sum / want.count);
  }
}

TEST_P(CudaVitTest, ForwardBackwardIsDeterministic) {
  const auto [compute, distilled] = GetParam();
  const ModelShape shape = small_vit(distilled);
  const int64_t B = 8;
  gpu_->set_deterministic(true);
  const Batch dev{on_gpu(random_host({B, shape.patches(), shape.patch_dim()}, DType::F32)),
                  on_gpu(Tensor::from_ints(ints(B, 0, static_cast<int32_t>(shape.num_classes - 1)), {B}))};
  std::vector<Tensor> grads;
  std::vector<double> losses;
  for (int run = 0; run < 2; ++run) {
    VitModel model(shape, *gpu_, DType::F32, compute, /*seed=*/5, kLabelSmoothing);
    gpu_->zero(model.params().grads());
    losses.push_back(model.forward_backward(dev, 1.0));
    grads.push_back(model.params().grads().to(Device::cpu()));
  }
  EXPECT_EQ(losses[0], losses[1]);
  expect_bitwise_equal(grads[0], grads[1], "ViT gradients");
}

std::string vit_param_name(const ::testing::TestParamInfo<std::tuple<DType, bool>>& info) {
  return std::string(dtype_name(std::get<0>(info.param))) + (std::get<1>(info.param) ? "_distilled" : "_plain");
}

INSTANTIATE_TEST_SUITE_P(DtypesAndTokens, CudaVitTest,
                         ::testing::Combine(::testing::Values(DType::F32, DType::BF16), ::testing::Bool()),
                         vit_param_name);

}  // namespace
}  // namespace loom::testing_cuda
