// The whole GPT forward+backward on the CUDA backend against the float64 CPU backend (same seed, so the same
// weights), in f32 and with bf16 activations/gradients over f32 master weights; and run-to-run determinism.
#include <cmath>

#include "tests/gpu/cuda_backend_test_util.h"
#include "trainer/models/gpt.h"

namespace loom::testing_cuda {
namespace {

ModelShape small_gpt() {
  ModelShape s;
  s.kind = "gpt";
  s.vocab = 77;
  s.padded_vocab = pad_vocab(s.vocab);  // 128
  s.max_seq = 16;
  s.d_model = 32;
  s.blocks = {BlockWidths{4, 8, 8, 64}, BlockWidths{2, 16, 12, 40}};  // unequal (pruned-like) blocks
  s.ln_eps = 1e-5;
  s.init_std = 0.1;
  return s;
}

class CudaGptTest : public CudaBackendTest, public ::testing::WithParamInterface<DType> {};

TEST_P(CudaGptTest, ForwardBackwardMatchesCpuFloat64) {
  const DType compute = GetParam();
  const ModelShape shape = small_gpt();
  const int64_t B = 3, T = 13;
  Batch host;
  host.inputs = Tensor::from_ints(ints(B * T, 0, static_cast<int32_t>(shape.vocab - 1)), {B, T});
  host.targets = Tensor::from_ints(ints(B * T, 0, static_cast<int32_t>(shape.vocab - 1)), {B, T});
  Batch dev{on_gpu(host.inputs), on_gpu(host.targets)};

  GptModel ref(shape, *cpu_, DType::F64, DType::F64, T, /*seed=*/11);
  GptModel model(shape, *gpu_, DType::F32, compute, T, /*seed=*/11);
  cpu_->zero(ref.params().grads());
  gpu_->zero(model.params().grads());
  // Two micro-batches, so gradient accumulation is exercised too.
  const double ref_loss = ref.forward_backward(host, 0.5) + ref.forward_backward(host, 0.5);
  const double loss = model.forward_backward(dev, 0.5) + model.forward_backward(dev, 0.5);
  gpu_->synchronize();

  const double tol = compute == DType::F32 ? 1e-5 : 2e-2;
  EXPECT_NEAR(loss, ref_loss, tol * ref_loss);
  EXPECT_LT(relative_l2(model.params().grads(), ref.params().grads()), compute == DType::F32 ? 1e-5 : 2e-2);
  if (compute == DType::F32)
    expect_close(model.params().grads(), ref.params().grads(), 1e-4, "GPT gradients (f32)");

  // Evaluation agrees with the training forward.
  const EvalStats st = model.evaluate(dev);
  EXPECT_NEAR(st.loss_sum / st.count, ref_loss / 2, tol * ref_loss);
}

TEST_P(CudaGptTest, ForwardBackwardIsDeterministic) {
  const DType compute = GetParam();
  const ModelShape shape = small_gpt();
  const int64_t B = 4, T = 16;
  Batch dev;
  dev.inputs = on_gpu(Tensor::from_ints(ints(B * T, 0, static_cast<int32_t>(shape.vocab - 1)), {B, T}));
  dev.targets = on_gpu(Tensor::from_ints(ints(B * T, 0, static_cast<int32_t>(shape.vocab - 1)), {B, T}));
  std::vector<Tensor> grads;
  for (int run = 0; run < 2; ++run) {
    GptModel model(shape, *gpu_, DType::F32, compute, T, /*seed=*/5);
    gpu_->zero(model.params().grads());
    model.forward_backward(dev, 1.0);
    grads.push_back(model.params().grads().to(Device::cpu()));
  }
  expect_bitwise_equal(grads[0], grads[1], "GPT gradients");
}

INSTANTIATE_TEST_SUITE_P(Dtypes, CudaGptTest, ::testing::Values(DType::F32, DType::BF16), dtype_param_name);

}  // namespace
}  // namespace loom::testing_cuda
