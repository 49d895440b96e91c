// The CUDA kernels that move 16-byte packs (add, accumulate, GELU, sum_squares, AdamW) and the GEMM that adds a
// residual (matmul_residual_forward) against the float64 CPU twin. Each elementwise case runs on views at a
// 16-byte boundary (packs, then the elements after the last whole pack) and one element past it (the one-element
// kernels throughout), at sizes below one pack, ragged, above 1024 and past one pack per thread of the grid;
// outputs are NaN-poisoned views inside poisoned buffers, so a write outside the view or a skipped element shows.
#include <cmath>

#include "tests/gpu/cuda_backend_test_util.h"

namespace loom::testing_cuda {
namespace {

class CudaPackedKernelsTest : public CudaBackendTest, public ::testing::WithParamInterface<DType> {
 protected:
  static constexpr int64_t kSizes[] = {1, 7, 8, 1031, 4096 + 13, (int64_t{1} << 21) + 5};
  static constexpr int64_t kOffsets[] = {0, 1};
};

TEST_P(CudaPackedKernelsTest, AddAccumulateAndGeluMatchTheCpuTwin) {
  const DType dt = GetParam();
  const double tol = tolerance(dt);
  for (int64_t n : kSizes) {
    for (int64_t offset : kOffsets) {
      const std::string tag = " (n " + std::to_string(n) + ", offset " + std::to_string(offset) + ")";
      const Tensor a = random_host({n}, dt, -3.f, 3.f), b = random_host({n}, dt, -3.f, 3.f);
      const GuardedView ga = guarded_copy(a, offset), gb = guarded_copy(b, offset);
      GuardedView out = guarded(n, offset, dt);
      Tensor ref = Tensor::empty({n}, DType::F64);

      gpu_->add(out.view, ga.view, gb.view);
      cpu_->add(ref, as_f64(a), as_f64(b));
      expect_close(out.view, ref, tol, "add" + tag);
      expect_guard_untouched(out, "add" + tag);

      GuardedView acc = guarded_copy(a, offset);
      gpu_->accumulate(acc.view, gb.view);
      expect_close(acc.view, ref, tol, "accumulate" + tag);
      expect_guard_untouched(acc, "accumulate" + tag);

      for (GeluKind kind : {GeluKind::Tanh, GeluKind::Erf}) {
        const std::string k = kind == GeluKind::Tanh ? " tanh" : " erf";
        GuardedView y = guarded(n, offset, dt), dx = guarded(n, offset, dt);
        gpu_->gelu_forward(y.view, ga.view, kind);
        gpu_->gelu_backward(dx.view, gb.view, ga.view, kind);
        Tensor y_ref = Tensor::empty({n}, DType::F64), dx_ref = Tensor::empty({n}, DType::F64);
        cpu_->gelu_forward(y_ref, as_f64(a), kind);
        cpu_->gelu_backward(dx_ref, as_f64(b), as_f64(a), kind);
        expect_close(y.view, y_ref, tol, "gelu_forward" + k + tag);
        expect_close(dx.view, dx_ref, tol, "gelu_backward" + k + tag);
        expect_guard_untouched(y, "gelu_forward" + k + tag);
        expect_guard_untouched(dx, "gelu_backward" + k + tag);
      }
    }
  }
}

TEST_P(CudaPackedKernelsTest, SumSquaresOfViewsAtEveryAlignment) {
  const DType dt = GetParam();
  for (int64_t n : kSizes) {
    const Tensor x = random_host({n}, dt);
    const Tensor f = x.cast(DType::F64);
    double expected = 0;
    for (int64_t i = 0; i < n; ++i) expected += f.data<double>()[i] * f.data<double>()[i];
    for (int64_t offset = 0; offset < 8; ++offset) {
      const GuardedView g = guarded_copy(x, offset);  // the guard is NaN: reading past the view poisons the sum
      const double got = gpu_->sum_squares({g.view});
      EXPECT_NEAR(got, expected, 1e-5 * expected + 1e-30)
          << "sum_squares, n " << n << ", offset " << offset << " elements";
      EXPECT_EQ(got, gpu_->sum_squares({g.view})) << "sum_squares is not deterministic";
    }
  }
}

TEST_F(CudaBackendTest, AdamWPackedAndElementPathsMatchTheReference) {
  AdamWHyper hp;
  hp.lr = 2e-3;
  hp.beta1 = 0.9;
  hp.beta2 = 0.95;
  hp.eps = 1e-8;
  hp.step = 5;
  hp.grad_scale = 0.7;
  const double wd = 0.1;
  for (int64_t n : {int64_t{5}, int64_t{8 * 1000 + 5}, (int64_t{1} << 20) + 3}) {
    for (int64_t offset : {0, 3}) {  // 3 floats (12 bytes) past a 16-byte boundary: the element kernel only
      for (DType grad_dtype : {DType::BF16, DType::F16}) {
        const std::string tag = " (n " + std::to_string(n) + ", offset " + std::to_string(offset) + ", grad " +
                                dtype_name(grad_dtype) + ")";
        const Tensor p0 = random_host({n}, DType::F32), m0 = random_host({n}, DType::F32, -0.1f, 0.1f),
                     v0 = random_host({n}, DType::F32, 0.f, 0.01f), g = random_host({n}, grad_dtype);
        auto view_of = [&](const Tensor& host) {
          Tensor view = poisoned({n + offset}, host.dtype()).slice_flat(offset, {n});
          view.copy_from(host);
          return view;
        };
        Tensor p = view_of(p0), m = view_of(m0), v = view_of(v0);
        Tensor copy = poisoned({n + offset}, grad_dtype).slice_flat(offset, {n});
        gpu_->adamw_update(p, m, v, view_of(g), copy, hp, wd);
        Tensor pr = as_f64(p0), mr = as_f64(m0), vr = as_f64(v0), none;
        cpu_->adamw_update(pr, mr, vr, g.cast(DType::F64), none, hp, wd);
        expect_close(p, pr, 1e-5, "adamw param" + tag);
        expect_close(m, mr, 1e-5, "adamw m" + tag);
        expect_close(v, vr, 1e-5, "adamw v" + tag);
        expect_close(copy, p.to(Device::cpu()).cast(grad_dtype), 0, "adamw compute copy" + tag);
      }
    }
  }
}

TEST_P(CudaPackedKernelsTest, MatmulResidualForwardMatchesTheCpuTwin) {
  const DType dt = GetParam();
  struct Case {
    int64_t N, I, O;
  };
  for (const Case c : {Case{5, 3, 7}, Case{64, 768, 2304}, Case{1037, 1100, 1030}, Case{300, 1600, 1600}}) {
    for (bool with_bias : {true, false}) {
      const std::string tag = " (" + std::to_string(c.N) + "x" + std::to_string(c.I) + "->" + std::to_string(c.O) +
                              (with_bias ? ", bias)" : ")");
      const Tensor x = random_host({c.N, c.I}, dt), w = random_host({c.O, c.I}, dt, -0.05f, 0.05f),
                   residual = random_host({c.N, c.O}, dt, -2.f, 2.f);
      const Tensor bias = with_bias ? random_host({c.O}, dt) : Tensor();
      Tensor out = poisoned({c.N, c.O}, dt);
      const Tensor residual_gpu = on_gpu(residual);
      gpu_->matmul_residual_forward(out, on_gpu(x), on_gpu(w), with_bias ? on_gpu(bias) : Tensor(), residual_gpu);
      Tensor ref = Tensor::empty({c.N, c.O}, DType::F64);
      cpu_->matmul_residual_forward(ref, as_f64(x), as_f64(w), with_bias ? as_f64(bias) : Tensor(), as_f64(residual));
      expect_close(out, ref, tolerance(dt), "matmul_residual_forward" + tag);
      expect_close(residual_gpu, residual, 0, "matmul_residual_forward's residual input" + tag);
    }
  }
  Tensor same = on_gpu(random_host({4, 8}, dt));
  EXPECT_THROW(gpu_->matmul_residual_forward(same, on_gpu(random_host({4, 8}, dt)), on_gpu(random_host({8, 8}, dt)),
                                             Tensor(), same),
               Error);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, CudaPackedKernelsTest, ::testing::Values(DType::F32, DType::BF16, DType::F16),
                         dtype_param_name);

}  // namespace
}  // namespace loom::testing_cuda
