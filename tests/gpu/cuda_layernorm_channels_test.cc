// CUDA LayerNorm with masked embedding channels (statistics over `channels` of C, the rest zero) against the
// float64 CPU reference, on the vectorised (C % 8 == 0) and general kernels.
#include "tests/gpu/cuda_backend_test_util.h"

namespace loom::testing_cuda {
namespace {

class CudaLayerNormChannelsTest : public CudaBackendTest, public ::testing::WithParamInterface<DType> {};

TEST_P(CudaLayerNormChannelsTest, MaskedChannelsMatchTheCpuReference) {
  const DType dt = GetParam();
  const double tol = tolerance(dt);
  for (const int64_t C : {64, 33}) {
    const int64_t N = 37, K = C - 5;  // channels 0, 7, 8, 20 and C-1 masked
    std::vector<float> xv = uniform(N * C, -1.f, 3.f), wv = uniform(C, 0.5f, 1.5f), bv = uniform(C);
    for (int64_t c : {int64_t{0}, int64_t{7}, int64_t{8}, int64_t{20}, C - 1}) {
      wv[c] = bv[c] = 0.f;
      for (int64_t n = 0; n < N; ++n) xv[n * C + c] = 0.f;
    }
    const Tensor x = Tensor::from_vector(xv, {N, C}, dt), w = Tensor::from_vector(wv, {C}, dt),
                 b = Tensor::from_vector(bv, {C}, dt), dout = random_host({N, C}, dt);
    const std::string tag = " C=" + std::to_string(C) + " " + dtype_name(dt);
    Tensor out = poisoned({N, C}, dt), mean = poisoned({N}, DType::F32), rstd = poisoned({N}, DType::F32);
    gpu_->layernorm_forward(out, mean, rstd, on_gpu(x), on_gpu(w), on_gpu(b), 1e-5, K);
    Tensor out_ref = Tensor::empty({N, C}, DType::F64), mean_ref = Tensor::empty({N}, DType::F64),
           rstd_ref = Tensor::empty({N}, DType::F64);
    cpu_->layernorm_forward(out_ref, mean_ref, rstd_ref, as_f64(x), as_f64(w), as_f64(b), 1e-5, K);
    expect_close(out, out_ref, tol, "layernorm_forward out" + tag);
    expect_close(mean, mean_ref, 1e-5, "layernorm_forward mean" + tag);
    expect_close(rstd, rstd_ref, 1e-5, "layernorm_forward rstd" + tag);

    Tensor dx = Tensor::zeros({N, C}, dt, Device::cuda(0)), dw = Tensor::zeros({C}, dt, Device::cuda(0)),
           db = Tensor::zeros({C}, dt, Device::cuda(0));
    gpu_->layernorm_backward(dx, dw, db, on_gpu(dout), on_gpu(x), on_gpu(w), mean, rstd, K);
    Tensor dx_ref = Tensor::zeros({N, C}, DType::F64), dw_ref = Tensor::zeros({C}, DType::F64),
           db_ref = Tensor::zeros({C}, DType::F64);
    cpu_->layernorm_backward(dx_ref, dw_ref, db_ref, as_f64(dout), as_f64(x), as_f64(w), mean_ref, rstd_ref, K);
    expect_close(dx, dx_ref, 2 * tol, "layernorm_backward dx" + tag);
    expect_close(dw, dw_ref, 2 * tol, "layernorm_backward dw" + tag);
    expect_close(db, db_ref, 2 * tol, "layernorm_backward db" + tag);
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, CudaLayerNormChannelsTest, ::testing::Values(DType::F32, DType::BF16),
                         dtype_param_name);

}  // namespace
}  // namespace loom::testing_cuda
