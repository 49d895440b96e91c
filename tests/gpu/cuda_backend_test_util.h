// Helpers for the CUDA backend's device tests: a fixture holding a CUDA and a CPU backend, random inputs
// rounded to the tested dtype, NaN-poisoned GPU outputs (whole, or views inside guarded buffers), and comparison
// against a float64 CPU reference.
// Every test skips with "no CUDA GPU visible" when no GPU is present (CI compiles these without one).
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"

namespace loom::testing_cuda {

class CudaBackendTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU visible";
    gpu_ = make_backend(Device::cuda(0));
    cpu_ = make_cpu_backend();
  }

  // n uniform values in [lo, hi).
  std::vector<float> uniform(int64_t n, float lo = -1.f, float hi = 1.f) {
    std::uniform_real_distribution<float> dist(lo, hi);
    std::vector<float> v(static_cast<size_t>(n));
    for (auto& x : v) x = dist(rng_);
    return v;
  }
  std::vector<int32_t> ints(int64_t n, int32_t lo, int32_t hi_inclusive) {
    std::uniform_int_distribution<int32_t> dist(lo, hi_inclusive);
    std::vector<int32_t> v(static_cast<size_t>(n));
    for (auto& x : v) x = dist(rng_);
    return v;
  }

  // A random host tensor already rounded to `dtype` (so the GPU and the f64 reference see the same values).
  Tensor random_host(const Shape& shape, DType dtype, float lo = -1.f, float hi = 1.f) {
    return Tensor::from_vector(uniform(shape_numel(shape), lo, hi), shape, dtype);
  }
  static Tensor on_gpu(const Tensor& host) { return host.to(Device::cuda(0)); }
  // The same values in f64 on the CPU (for the reference backend).
  static Tensor as_f64(const Tensor& t) {
    return (t.device().is_cpu() ? t : t.to(Device::cpu())).cast(DType::F64);
  }
  // A GPU tensor filled with NaN, so elements an op fails to write are caught.
  static Tensor poisoned(const Shape& shape, DType dtype) {
    Tensor host = Tensor::empty(shape, dtype);
    host.fill_(std::numeric_limits<double>::quiet_NaN());
    return on_gpu(host);
  }

  // A view of n elements at `offset` inside a NaN-poisoned GPU buffer with a guard of 16 elements each side.
  struct GuardedView {
    Tensor buffer, view;
    int64_t offset = 0;
  };
  GuardedView guarded(int64_t n, int64_t offset, DType dtype) {
    GuardedView g;
    g.buffer = poisoned({n + offset + 32}, dtype);
    g.offset = offset + 16;
    g.view = g.buffer.slice_flat(g.offset, {n});
    return g;
  }
  // The same, filled with `values` (a host tensor of n elements).
  GuardedView guarded_copy(const Tensor& values, int64_t offset) {
    GuardedView g = guarded(values.numel(), offset, values.dtype());
    g.view.copy_from(values);
    return g;
  }
  // Every element of the buffer outside the view is still NaN.
  static void expect_guard_untouched(const GuardedView& g, const std::string& what) {
    const Tensor all = g.buffer.to(Device::cpu()).cast(DType::F64);
    const int64_t n = g.view.numel();
    int64_t written = 0;
    for (int64_t i = 0; i < all.numel(); ++i)
      if ((i < g.offset || i >= g.offset + n) && !std::isnan(all.data<double>()[i])) ++written;
    EXPECT_EQ(written, 0) << what << ": elements outside the view were written";
  }

  std::unique_ptr<Backend> gpu_, cpu_;
  std::mt19937 rng_{20261126};
};

// Relative tolerance for results computed in f32 and stored in `dtype`.
inline double tolerance(DType dtype) {
  switch (dtype) {
    case DType::BF16: return 1e-2;
    case DType::F16: return 2e-3;
    default: return 1e-5;
  }
}

// Expects |actual - reference| <= tol·(|reference| + mean|reference|) + atol element-wise (the mean term keeps
// near-zero elements produced by cancellation from demanding impossible relative accuracy; atol covers
// values stored as f16 subnormals). NaN fails.
inline void expect_close(const Tensor& actual, const Tensor& reference, double tol, const std::string& what,
                         double atol = 0) {
  const Tensor a = (actual.device().is_cpu() ? actual : actual.to(Device::cpu())).cast(DType::F64);
  const Tensor r = (reference.device().is_cpu() ? reference : reference.to(Device::cpu())).cast(DType::F64);
  ASSERT_EQ(a.numel(), r.numel()) << what;
  const double* pa = a.data<double>();
  const double* pr = r.data<double>();
  double mean_abs = 0;
  for (int64_t i = 0; i < r.numel(); ++i) mean_abs += std::fabs(pr[i]);
  mean_abs = r.numel() ? mean_abs / static_cast<double>(r.numel()) : 0;
  int64_t failures = 0;
  for (int64_t i = 0; i < r.numel(); ++i) {
    const double bound = tol * (std::fabs(pr[i]) + mean_abs) + atol + 1e-30;
    const double err = std::fabs(pa[i] - pr[i]);
    if (!(err <= bound)) {
      if (failures < 5)
        ADD_FAILURE() << what << ": element " << i << " is " << pa[i] << ", expected " << pr[i] << " (bound "
                      << bound << ")";
      ++failures;
    }
  }
  EXPECT_EQ(failures, 0) << what << ": " << failures << " of " << r.numel() << " elements out of tolerance " << tol;
}

// Expects two tensors to hold bit-identical bytes.
inline void expect_bitwise_equal(const Tensor& x, const Tensor& y, const std::string& what) {
  const Tensor a = x.to(Device::cpu()), b = y.to(Device::cpu());
  ASSERT_EQ(a.nbytes(), b.nbytes()) << what;
  EXPECT_EQ(0, std::memcmp(a.raw(), b.raw(), a.nbytes())) << what << " differs between two identical runs";
}

// ||a - b|| / ||b|| over all elements (any devices and float dtypes).
inline double relative_l2(const Tensor& a, const Tensor& b) {
  const Tensor x = a.to(Device::cpu()).cast(DType::F64), y = b.to(Device::cpu()).cast(DType::F64);
  double diff = 0, ref = 0;
  for (int64_t i = 0; i < y.numel(); ++i) {
    const double d = x.data<double>()[i] - y.data<double>()[i];
    diff += d * d;
    ref += y.data<double>()[i] * y.data<double>()[i];
  }
  return std::sqrt(diff / ref);
}

inline std::string dtype_param_name(const ::testing::TestParamInfo<DType>& info) { return dtype_name(info.param); }

}  // namespace loom::testing_cuda
