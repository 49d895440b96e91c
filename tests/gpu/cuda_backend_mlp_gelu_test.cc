// CUDA backend's fused MLP ops (matmul_gelu_forward, matmul_backward_gelu) against the float64 CPU backend (the
// unfused composition): the cuBLASLt GELU_AUX(_BIAS) / DGELU epilogue path (tanh form, bf16/f16, widths that
// are multiples of 8 with 16-byte aligned activations) and every fallback (erf form, f32, a ragged width,
// misaligned activations), on ragged shapes with NaN-poisoned outputs and accumulating gradients.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "tests/gpu/cuda_backend_test_util.h"

namespace loom::testing_cuda {
namespace {

class CudaMlpGeluTest : public CudaBackendTest, public ::testing::WithParamInterface<DType> {};

struct MlpCase {
  int64_t N, I, M, O;
  int64_t offset;  // elements before pre, out and dpre in their arenas (1: not 16-byte aligned)
};

TEST_P(CudaMlpGeluTest, ForwardBackwardMatchCpuComposition) {
  const DType dt = GetParam();
  const double tol = tolerance(dt);
  // gelu(pre) and dpre go through two roundings on the unfused path (pre or dout·w2 first); the epilogues
  // compute GELU with undocumented internal precision (the tanh may be the hardware approximation, ~5e-4), so
  // 16-bit results are held to bf16's bound. A wrong layout or formula still fails by orders of magnitude.
  const double gelu_tol = dt == DType::F32 ? 2 * tol : std::max(2 * tol, tolerance(DType::BF16));
  // M % 8 == 0 and offset 0 take the epilogues (bf16/f16, tanh); M = 65 and offset 1 fall back.
  const MlpCase cases[] = {{7, 33, 64, 65, 0}, {64, 128, 96, 32, 0}, {1, 5, 8, 3, 0},
                           {300, 48, 256, 40, 0}, {13, 24, 65, 16, 0}, {9, 16, 32, 24, 1}};
  for (const MlpCase& c : cases) {
    for (GeluKind kind : {GeluKind::Tanh, GeluKind::Erf}) {
      for (bool with_bias : {true, false}) {
        const std::string tag = " N=" + std::to_string(c.N) + " I=" + std::to_string(c.I) +
                                " M=" + std::to_string(c.M) + " O=" + std::to_string(c.O) +
                                " offset=" + std::to_string(c.offset) +
                                (kind == GeluKind::Tanh ? " tanh" : " erf") + (with_bias ? " (bias)" : " (no bias)");
        // Weights scaled so pre = x·w1ᵀ + b1 spreads over about [-3, 3], where GELU is neither linear nor 0.
        const float s1 = 3.f / std::sqrt(static_cast<float>(c.I)), s2 = 3.f / std::sqrt(static_cast<float>(c.M));
        const Tensor x = random_host({c.N, c.I}, dt), w1 = random_host({c.M, c.I}, dt, -s1, s1);
        const Tensor w2 = random_host({c.O, c.M}, dt, -s2, s2), dout = random_host({c.N, c.O}, dt);
        // Biases live at odd offsets of an arena, as parameters do.
        const Tensor b1_arena = random_host({c.M + 3}, dt);
        const Tensor b1_host = b1_arena.slice_flat(3, {c.M}), b1 = on_gpu(b1_arena).slice_flat(3, {c.M});

        Tensor out_arena = poisoned({c.N * c.M + c.offset}, dt), pre_arena = poisoned({c.N * c.M + c.offset}, dt);
        Tensor out = out_arena.slice_flat(c.offset, {c.N, c.M}), pre = pre_arena.slice_flat(c.offset, {c.N, c.M});
        gpu_->matmul_gelu_forward(out, pre, on_gpu(x), on_gpu(w1), with_bias ? b1 : Tensor(), kind);
        Tensor out_ref = Tensor::empty({c.N, c.M}, DType::F64), pre_ref = Tensor::empty({c.N, c.M}, DType::F64);
        cpu_->matmul_gelu_forward(out_ref, pre_ref, as_f64(x), as_f64(w1), with_bias ? as_f64(b1_host) : Tensor(),
                                  kind);
        expect_close(pre, pre_ref, tol, "matmul_gelu_forward pre" + tag);
        expect_close(out, out_ref, gelu_tol, "matmul_gelu_forward out" + tag);

        // The backward reads what the GPU forward saved; the reference gets the same values.
        const Tensor dw0 = random_host({c.O, c.M}, dt), db0 = random_host({c.O}, dt);
        Tensor dpre_arena = poisoned({c.N * c.M + c.offset}, dt);
        Tensor dpre = dpre_arena.slice_flat(c.offset, {c.N, c.M}), dw = on_gpu(dw0);
        Tensor dbias_arena = on_gpu(Tensor::zeros({c.O + 1}, dt));
        Tensor dbias = with_bias ? dbias_arena.slice_flat(1, {c.O}) : Tensor();
        if (with_bias) dbias.copy_from(on_gpu(db0));
        gpu_->matmul_backward_gelu(dpre, dw, dbias, on_gpu(dout), out, on_gpu(w2), pre, kind);
        Tensor dpre_ref = Tensor::empty({c.N, c.M}, DType::F64), dw_ref = as_f64(dw0);
        Tensor db_ref = with_bias ? as_f64(db0) : Tensor();
        cpu_->matmul_backward_gelu(dpre_ref, dw_ref, db_ref, as_f64(dout), as_f64(out), as_f64(w2), as_f64(pre),
                                   kind);
        expect_close(dpre, dpre_ref, gelu_tol, "matmul_backward_gelu dpre" + tag);
        expect_close(dw, dw_ref, tol, "matmul_backward_gelu dw" + tag);
        if (with_bias) expect_close(dbias, db_ref, tol, "matmul_backward_gelu dbias" + tag);
      }
    }
  }
}

TEST_P(CudaMlpGeluTest, RepeatedRunsAreBitIdentical) {
  // The trainer's determinism promise covers the fused path: same inputs, same bits.
  const DType dt = GetParam();
  const int64_t N = 96, I = 64, M = 128, O = 48;
  const Tensor x = on_gpu(random_host({N, I}, dt)), w1 = on_gpu(random_host({M, I}, dt, -0.4f, 0.4f));
  const Tensor b1 = on_gpu(random_host({M}, dt)), w2 = on_gpu(random_host({O, M}, dt, -0.3f, 0.3f));
  const Tensor dout = on_gpu(random_host({N, O}, dt));
  std::vector<Tensor> results;
  for (int run = 0; run < 2; ++run) {
    Tensor out = poisoned({N, M}, dt), pre = poisoned({N, M}, dt), dpre = poisoned({N, M}, dt);
    Tensor dw = Tensor::zeros({O, M}, dt, Device::cuda(0)), db = Tensor::zeros({O}, dt, Device::cuda(0));
    gpu_->matmul_gelu_forward(out, pre, x, w1, b1, GeluKind::Tanh);
    gpu_->matmul_backward_gelu(dpre, dw, db, dout, out, w2, pre, GeluKind::Tanh);
    for (const Tensor* t : {&out, &pre, &dpre, &dw, &db}) results.push_back(t->to(Device::cpu()));
  }
  const char* names[] = {"out", "pre", "dpre", "dw", "dbias"};
  for (size_t i = 0; i < 5; ++i) expect_bitwise_equal(results[i], results[i + 5], names[i]);
}

TEST_F(CudaBackendTest, MatmulGeluRejectsAliasingAndBadShapes) {
  const Device d = Device::cuda(0);
  const Tensor x = Tensor::zeros({4, 8}, DType::BF16, d), w = Tensor::zeros({16, 8}, DType::BF16, d);
  Tensor pre = Tensor::zeros({4, 16}, DType::BF16, d), out = Tensor::zeros({4, 16}, DType::BF16, d), none;
  EXPECT_THROW(gpu_->matmul_gelu_forward(pre, pre, x, w, none, GeluKind::Tanh), Error);
  Tensor narrow = Tensor::zeros({4, 15}, DType::BF16, d);
  EXPECT_THROW(gpu_->matmul_gelu_forward(out, narrow, x, w, none, GeluKind::Tanh), Error);
  Tensor f32_out = Tensor::zeros({4, 16}, DType::F32, d);
  EXPECT_THROW(gpu_->matmul_gelu_forward(f32_out, pre, x, w, none, GeluKind::Tanh), Error);

  const Tensor w2 = Tensor::zeros({8, 16}, DType::BF16, d), dout = Tensor::zeros({4, 8}, DType::BF16, d);
  Tensor dw = Tensor::zeros({8, 16}, DType::BF16, d);
  EXPECT_THROW(gpu_->matmul_backward_gelu(pre, dw, none, dout, out, w2, pre, GeluKind::Tanh), Error);
  Tensor dpre = Tensor::zeros({4, 16}, DType::BF16, d), bad_dw = Tensor::zeros({8, 15}, DType::BF16, d);
  EXPECT_THROW(gpu_->matmul_backward_gelu(dpre, bad_dw, none, dout, out, w2, pre, GeluKind::Tanh), Error);
  gpu_->matmul_backward_gelu(dpre, dw, none, dout, out, w2, pre, GeluKind::Tanh);  // the valid call runs
  gpu_->synchronize();
}

INSTANTIATE_TEST_SUITE_P(Dtypes, CudaMlpGeluTest, ::testing::Values(DType::F32, DType::BF16, DType::F16),
                         dtype_param_name);

}  // namespace
}  // namespace loom::testing_cuda
