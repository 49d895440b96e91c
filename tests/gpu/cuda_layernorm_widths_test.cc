// CUDA LayerNorm forward and backward at the widths the model zoo and the pruner produce (8 … 8192, multiples
// of 8 that are not multiples of 64, and widths that take the general kernels), against the float64 CPU
// reference: ragged row counts large enough that every block of the backward walks several rows, NaN-poisoned
// forward outputs, gradients accumulating into random starting values, and a second backward that must give
// the same bits (the dw/db reduction is deterministic).
#include <tuple>

#include "tests/gpu/cuda_backend_test_util.h"

namespace loom::testing_cuda {
namespace {

class CudaLayerNormWidthsTest : public CudaBackendTest,
                                public ::testing::WithParamInterface<std::tuple<DType, int64_t>> {
 protected:
  // Forward and backward of N rows of C channels, statistics over K of them (K < C: masked channels, which
  // must hold zeros in x, w and b).
  void check(int64_t N, int64_t C, int64_t K, bool with_bias, float centre) {
    const DType dt = std::get<0>(GetParam());
    const double tol = tolerance(dt);
    const std::string tag = " N=" + std::to_string(N) + " C=" + std::to_string(C) + " K=" + std::to_string(K) +
                            (with_bias ? " (bias)" : " (no bias)") + " centre " + std::to_string(int(centre)) + " " +
                            dtype_name(dt);
    std::vector<float> xv = uniform(N * C, centre - 2.f, centre + 3.f), wv = uniform(C, 0.5f, 1.5f), bv = uniform(C);
    for (int64_t c = K; c < C; ++c) {  // the masked channels are the last C - K
      wv[c] = bv[c] = 0.f;
      for (int64_t n = 0; n < N; ++n) xv[n * C + c] = 0.f;
    }
    const Tensor x = Tensor::from_vector(xv, {N, C}, dt), w = Tensor::from_vector(wv, {C}, dt),
                 b = Tensor::from_vector(bv, {C}, dt), dout = random_host({N, C}, dt);
    Tensor out = poisoned({N, C}, dt), mean = poisoned({N}, DType::F32), rstd = poisoned({N}, DType::F32);
    gpu_->layernorm_forward(out, mean, rstd, on_gpu(x), on_gpu(w), with_bias ? on_gpu(b) : Tensor(), 1e-5, K);
    Tensor out_ref = Tensor::empty({N, C}, DType::F64), mean_ref = Tensor::empty({N}, DType::F64),
           rstd_ref = Tensor::empty({N}, DType::F64);
    cpu_->layernorm_forward(out_ref, mean_ref, rstd_ref, as_f64(x), as_f64(w), with_bias ? as_f64(b) : Tensor(),
                            1e-5, K);
    // Centred away from 0, the f32 mean's rounding error (relative to the centre, not to the spread of x)
    // shows in x - mean: f32 outputs are held to 1e-4 there; 16-bit outputs round coarser than that anyway.
    expect_close(out, out_ref, dt == DType::F32 && centre != 0.f ? 1e-4 : tol, "layernorm_forward out" + tag);
    expect_close(mean, mean_ref, 1e-5, "layernorm_forward mean" + tag);
    expect_close(rstd, rstd_ref, 1e-5, "layernorm_forward rstd" + tag);

    const Tensor dx0 = random_host({N, C}, dt), dw0 = random_host({C}, dt), db0 = random_host({C}, dt);
    Tensor dx = on_gpu(dx0), dw = on_gpu(dw0), db = with_bias ? on_gpu(db0) : Tensor();
    gpu_->layernorm_backward(dx, dw, db, on_gpu(dout), on_gpu(x), on_gpu(w), mean, rstd, K);
    Tensor dx_ref = as_f64(dx0), dw_ref = as_f64(dw0), db_ref = with_bias ? as_f64(db0) : Tensor();
    cpu_->layernorm_backward(dx_ref, dw_ref, db_ref, as_f64(dout), as_f64(x), as_f64(w), mean_ref, rstd_ref, K);
    expect_close(dx, dx_ref, 2 * tol, "layernorm_backward dx" + tag);
    expect_close(dw, dw_ref, 2 * tol, "layernorm_backward dw" + tag);
    if (with_bias) expect_close(db, db_ref, 2 * tol, "layernorm_backward db" + tag);

    Tensor dx2 = on_gpu(dx0), dw2 = on_gpu(dw0), db2 = with_bias ? on_gpu(db0) : Tensor();
    gpu_->layernorm_backward(dx2, dw2, db2, on_gpu(dout), on_gpu(x), on_gpu(w), mean, rstd, K);
    expect_bitwise_equal(dx, dx2, "layernorm_backward dx" + tag);
    expect_bitwise_equal(dw, dw2, "layernorm_backward dw" + tag);
    if (with_bias) expect_bitwise_equal(db, db2, "layernorm_backward db" + tag);
  }
};

// About 3M elements per case (odd row counts, at most 3001): at C = 8192 that is 367 rows, more than the
// backward's grid has row groups on an H100, so its blocks walk several rows there too.
int64_t rows_for(int64_t C) { return std::min<int64_t>(3001, 3'000'000 / C | 1); }

TEST_P(CudaLayerNormWidthsTest, MatchesTheCpuReference) {
  const int64_t C = std::get<1>(GetParam());
  check(rows_for(C), C, C, /*with_bias=*/true, 0.f);
  check(rows_for(C) / 3 | 1, C, C, /*with_bias=*/false, 0.f);
}

TEST_P(CudaLayerNormWidthsTest, LargeMeanAndMaskedChannels) {
  const int64_t C = std::get<1>(GetParam());
  check(rows_for(C) / 2 | 1, C, C, /*with_bias=*/true, 50.f);  // a one-pass variance would lose it
  if (C >= 16) check(rows_for(C) / 4 | 1, C, C - 8, /*with_bias=*/true, 0.f);
}

// 1000 and 1032: multiples of 8 but not of 64; 1001: not a multiple of 8 (the general kernels for 16-bit
// types); 2056: a multiple of 8 just past a whole number of warps' packs; 12288: past the vectorised kernels.
INSTANTIATE_TEST_SUITE_P(
    Widths, CudaLayerNormWidthsTest,
    ::testing::Combine(::testing::Values(DType::BF16, DType::F16, DType::F32),
                       ::testing::Values(int64_t{8}, int64_t{24}, int64_t{768}, int64_t{1000}, int64_t{1001},
                                         int64_t{1032}, int64_t{1280}, int64_t{1600}, int64_t{2048}, int64_t{2056},
                                         int64_t{2560}, int64_t{4096}, int64_t{8192}, int64_t{12288})),
    [](const ::testing::TestParamInfo<std::tuple<DType, int64_t>>& info) {
      return std::string(dtype_name(std::get<0>(info.param))) + "_C" + std::to_string(std::get<1>(info.param));
    });

}  // namespace
}  // namespace loom::testing_cuda
