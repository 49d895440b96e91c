// The ops an f32 residual stream beside bf16/f16 activations uses (train.residual_dtype f32) against the float64
// CPU reference: LayerNorm forward reading an f32 x and writing a 16-bit output, LayerNorm backward accumulating
// into an f32 dx from a 16-bit dout, and add of an f32 stream and a 16-bit branch into f32. Widths as in
// cuda_layernorm_widths_test.cc (multiples of 8 that are not of 64, widths past 1024, a width off the 16-bit
// packs, and 4104 and 8192, past the mixed vectorised kernels' 4096), ragged row counts, NaN-poisoned outputs,
// random starting gradients, and a second backward that must give the same bits.
//
// Tolerances: outputs stored in the 16-bit dtype are held to its tolerance(); the f32 dx is computed in f32 from
// exact inputs, so it is held to 1e-4 (a 16-bit dx would miss that by two orders of magnitude, which is what
// shows the stream really stays in f32); add's f32 sum to 1e-6.
#include <tuple>

#include "tests/gpu/cuda_backend_test_util.h"

namespace loom::testing_cuda {
namespace {

class CudaF32ResidualTest : public CudaBackendTest, public ::testing::WithParamInterface<std::tuple<DType, int64_t>> {
};

int64_t rows_for(int64_t C) { return std::min<int64_t>(2001, 2'000'000 / C | 1); }

TEST_P(CudaF32ResidualTest, LayerNormOfAnF32StreamMatchesTheCpuReference) {
  const auto [dt, C] = GetParam();
  const double tol = tolerance(dt);
  for (const bool with_bias : {true, false}) {
    const int64_t N = with_bias ? rows_for(C) : rows_for(C) / 3 | 1;
    const std::string tag = std::string(" N=") + std::to_string(N) + " C=" + std::to_string(C) + " " +
                            dtype_name(dt) + (with_bias ? " (bias)" : " (no bias)");
    // x is full f32 precision (not rounded to dt): the stream carries bits a 16-bit copy would lose.
    const Tensor x = random_host({N, C}, DType::F32, -2.f, 3.f);
    const Tensor w = random_host({C}, dt, 0.5f, 1.5f), b = random_host({C}, dt), dout = random_host({N, C}, dt);
    Tensor out = poisoned({N, C}, dt), mean = poisoned({N}, DType::F32), rstd = poisoned({N}, DType::F32);
    gpu_->layernorm_forward(out, mean, rstd, on_gpu(x), on_gpu(w), with_bias ? on_gpu(b) : Tensor(), 1e-5);
    Tensor out_ref = Tensor::empty({N, C}, DType::F64), mean_ref = Tensor::empty({N}, DType::F64),
           rstd_ref = Tensor::empty({N}, DType::F64);
    cpu_->layernorm_forward(out_ref, mean_ref, rstd_ref, as_f64(x), as_f64(w), with_bias ? as_f64(b) : Tensor(),
                            1e-5);
    expect_close(out, out_ref, tol, "layernorm_forward out" + tag);
    expect_close(mean, mean_ref, 1e-5, "layernorm_forward mean" + tag);
    expect_close(rstd, rstd_ref, 1e-5, "layernorm_forward rstd" + tag);

    const Tensor dx0 = random_host({N, C}, DType::F32), dw0 = random_host({C}, dt), db0 = random_host({C}, dt);
    Tensor dx = on_gpu(dx0), dw = on_gpu(dw0), db = with_bias ? on_gpu(db0) : Tensor();
    gpu_->layernorm_backward(dx, dw, db, on_gpu(dout), on_gpu(x), on_gpu(w), mean, rstd);
    Tensor dx_ref = as_f64(dx0), dw_ref = as_f64(dw0), db_ref = with_bias ? as_f64(db0) : Tensor();
    cpu_->layernorm_backward(dx_ref, dw_ref, db_ref, as_f64(dout), as_f64(x), as_f64(w), mean_ref, rstd_ref);
    ASSERT_EQ(dx.dtype(), DType::F32);
    expect_close(dx, dx_ref, 1e-4, "layernorm_backward dx (f32)" + tag);
    expect_close(dw, dw_ref, 2 * tol, "layernorm_backward dw" + tag);
    if (with_bias) expect_close(db, db_ref, 2 * tol, "layernorm_backward db" + tag);

    Tensor dx2 = on_gpu(dx0), dw2 = on_gpu(dw0), db2 = with_bias ? on_gpu(db0) : Tensor();
    gpu_->layernorm_backward(dx2, dw2, db2, on_gpu(dout), on_gpu(x), on_gpu(w), mean, rstd);
    expect_bitwise_equal(dx, dx2, "layernorm_backward dx" + tag);
    expect_bitwise_equal(dw, dw2, "layernorm_backward dw" + tag);
    if (with_bias) expect_bitwise_equal(db, db2, "layernorm_backward db" + tag);
  }
}

TEST_P(CudaF32ResidualTest, AddOfABranchToAnF32StreamMatchesTheCpuReference) {
  const auto [dt, C] = GetParam();
  const int64_t N = rows_for(C);
  const Tensor a = random_host({N, C}, DType::F32), b = random_host({N, C}, dt);
  Tensor ref = as_f64(a);
  cpu_->add(ref, ref, as_f64(b));
  Tensor out = poisoned({N, C}, DType::F32);
  gpu_->add(out, on_gpu(a), on_gpu(b));
  expect_close(out, ref, 1e-6, "add into a new f32 tensor");
  Tensor in_place = on_gpu(a);  // the block's out = mid + branch writes over one of its inputs
  gpu_->add(in_place, in_place, on_gpu(b));
  expect_close(in_place, ref, 1e-6, "add in place");
}

TEST_F(CudaBackendTest, MixedDtypesOutsideTheResidualStreamAreRefused) {
  const Tensor a32 = on_gpu(random_host({4, 8}, DType::F32)), b16 = on_gpu(random_host({4, 8}, DType::BF16));
  Tensor out16 = poisoned({4, 8}, DType::BF16), out32 = poisoned({4, 8}, DType::F32);
  EXPECT_THROW(gpu_->add(out16, a32, b16), Error);  // out must have a's dtype
  EXPECT_THROW(gpu_->add(out32, b16, a32), Error);  // the f32 side is a, the branch b
  const Tensor h16 = on_gpu(random_host({4, 8}, DType::F16));
  Tensor o16 = poisoned({4, 8}, DType::BF16);
  EXPECT_THROW(gpu_->add(o16, h16, b16), Error);  // two 16-bit dtypes never mix
}

INSTANTIATE_TEST_SUITE_P(
    Widths, CudaF32ResidualTest,
    ::testing::Combine(::testing::Values(DType::BF16, DType::F16),
                       ::testing::Values(int64_t{8}, int64_t{24}, int64_t{768}, int64_t{1000}, int64_t{1001},
                                         int64_t{1032}, int64_t{1600}, int64_t{2056}, int64_t{2560}, int64_t{4096},
                                         int64_t{4104}, int64_t{8192})),
    [](const ::testing::TestParamInfo<std::tuple<DType, int64_t>>& info) {
      return std::string(dtype_name(std::get<0>(info.param))) + "_C" + std::to_string(std::get<1>(info.param));
    });

}  // namespace
}  // namespace loom::testing_cuda
