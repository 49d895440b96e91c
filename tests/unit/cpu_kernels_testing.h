// Helpers shared by the CPU backend tests (tests/unit/cpu_kernels_*_test.cc): random tensors, NaN poisoning,
// and a central-difference gradient check in float64.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <random>
#include <sstream>
#include <string>

#include "core/tensor.h"

namespace loom::cpu_test {

// Uniform random values in [lo, hi) (drawn in double, stored in `dtype`).
inline Tensor random_tensor(const Shape& shape, DType dtype, std::mt19937_64& rng, double lo = -1, double hi = 1) {
  std::uniform_real_distribution<double> dist(lo, hi);
  Tensor t = Tensor::empty(shape, DType::F64);
  double* p = t.data<double>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = dist(rng);
  return dtype == DType::F64 ? t : t.cast(dtype);
}

// A new tensor whose every element is NaN, so elements a kernel forgets to write are caught.
inline Tensor poisoned(const Shape& shape, DType dtype) {
  Tensor t = Tensor::empty(shape, dtype);
  t.fill_(NAN);
  return t;
}

// Σ_i a[i]·b[i] in double (the random projection L = Σ r·out).
inline double dot(const Tensor& a, const Tensor& b) {
  EXPECT_EQ(a.numel(), b.numel());
  double s = 0;
  for (int64_t i = 0; i < a.numel(); ++i) s += a.item(i) * b.item(i);
  return s;
}

// Copies of a CPU tensor's data (a fresh buffer, same shape and dtype).
inline Tensor clone(const Tensor& t) {
  Tensor c = Tensor::empty(t.shape(), t.dtype());
  c.copy_from(t);
  return c;
}

// Compares the analytical gradient of `loss` with respect to the F64 tensor `input` against central
// differences (L(x+h) - L(x-h)) / 2h, element by element. `input` is perturbed in place and restored.
// Relative error: |analytic - numeric| / max(|analytic|, |numeric|, floor); the floor keeps gradients that
// are (close to) zero from dividing rounding noise (≈ 1e-16·|L|/h) by nothing.
inline void expect_gradient(const std::string& what, Tensor& input, const Tensor& analytic,
                            const std::function<double()>& loss, double tol = 1e-6, double h = 1e-6,
                            double floor = 1e-2) {
  ASSERT_EQ(input.dtype(), DType::F64) << what;
  ASSERT_EQ(analytic.numel(), input.numel()) << what;
  double* x = input.data<double>();
  double worst = 0;
  int64_t worst_at = -1;
  for (int64_t i = 0; i < input.numel(); ++i) {
    const double saved = x[i];
    x[i] = saved + h;
    const double up = loss();
    x[i] = saved - h;
    const double down = loss();
    x[i] = saved;
    const double numeric = (up - down) / (2 * h);
    const double a = analytic.item(i);
    ASSERT_TRUE(std::isfinite(a)) << what << " analytic gradient element " << i << " is " << a;
    const double err = std::fabs(a - numeric) / std::max({std::fabs(a), std::fabs(numeric), floor});
    if (err > worst) {
      worst = err;
      worst_at = i;
    }
    EXPECT_LT(err, tol) << what << " element " << i << ": analytic " << a << " numeric " << numeric;
  }
  std::ostringstream summary;
  summary << std::scientific << worst << " at element " << worst_at;
  ::testing::Test::RecordProperty(what + " max_rel_err", summary.str());
}

// Expects every element of `got` to equal `want[i]` within atol + rtol·|want|, and to be finite.
inline void expect_near_all(const std::string& what, const Tensor& got, const std::vector<double>& want, double rtol,
                            double atol) {
  ASSERT_EQ(got.numel(), static_cast<int64_t>(want.size())) << what;
  for (int64_t i = 0; i < got.numel(); ++i) {
    const double g = got.item(i);
    ASSERT_TRUE(std::isfinite(g)) << what << " element " << i << " is " << g;
    EXPECT_NEAR(g, want[i], atol + rtol * std::fabs(want[i])) << what << " element " << i;
  }
}

// Element-wise a == k·b exactly (accumulation checks: running a backward twice doubles the gradient).
inline void expect_scaled(const std::string& what, const Tensor& a, const Tensor& b, double k, double rtol = 1e-14) {
  ASSERT_EQ(a.numel(), b.numel()) << what;
  for (int64_t i = 0; i < a.numel(); ++i)
    EXPECT_NEAR(a.item(i), k * b.item(i), rtol * std::fabs(k * b.item(i)) + 1e-300) << what << " element " << i;
}

}  // namespace loom::cpu_test
