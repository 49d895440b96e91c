// The CPU reference of the pruning ops in float64: dot_along_axis against a direct triple loop, zero_masked
// against the mask's definition in every float dtype, and the distillation loss against its definition (KL of
// the softmaxes) and its gradient against finite differences.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "kernels/backend.h"

namespace loom {
namespace {

Tensor random_f64(const Shape& shape, std::mt19937& rng, double lo = -1, double hi = 1) {
  std::uniform_real_distribution<double> dist(lo, hi);
  Tensor t = Tensor::empty(shape, DType::F64);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<double>()[i] = dist(rng);
  return t;
}

TEST(PruningOps, DotAlongAxisMatchesDirectSums) {
  auto be = make_backend(Device::cpu());
  std::mt19937 rng(5);
  const Shape shape{3, 5, 7};
  const Tensor a = random_f64(shape, rng), b = random_f64(shape, rng);
  for (int axis = 0; axis < 3; ++axis) {
    Tensor out = Tensor::empty({shape[axis]}, DType::F64);
    be->dot_along_axis(out, a, b, axis);
    std::vector<double> expected(static_cast<size_t>(shape[axis]), 0.0);
    for (int64_t i = 0; i < 3; ++i)
      for (int64_t j = 0; j < 5; ++j)
        for (int64_t k = 0; k < 7; ++k) {
          const int64_t flat = (i * 5 + j) * 7 + k, pos = axis == 0 ? i : axis == 1 ? j : k;
          expected[pos] += a.data<double>()[flat] * b.data<double>()[flat];
        }
    for (int64_t p = 0; p < shape[axis]; ++p)
      EXPECT_NEAR(out.item(p), expected[p], 1e-13) << "axis " << axis << " position " << p;
  }
  // f32 inputs and output work too (the CPU training dtype).
  Tensor af = a.cast(DType::F32), out32 = Tensor::empty({5}, DType::F32);
  be->dot_along_axis(out32, af, af, 1);
  Tensor out64 = Tensor::empty({5}, DType::F64);
  be->dot_along_axis(out64, a, a, 1);
  for (int64_t p = 0; p < 5; ++p) EXPECT_NEAR(out32.item(p), out64.item(p), 1e-5);
}

TEST(PruningOps, DotAlongAxisRejectsBadArguments) {
  auto be = make_backend(Device::cpu());
  Tensor a = Tensor::zeros({2, 3}, DType::F64), b = Tensor::zeros({3, 2}, DType::F64);
  Tensor out = Tensor::empty({3}, DType::F64);
  EXPECT_THROW(be->dot_along_axis(out, a, b, 1), Error);
  EXPECT_THROW(be->dot_along_axis(out, a, a, 0), Error);
  EXPECT_THROW(be->dot_along_axis(out, a, a, -1), Error);
  EXPECT_THROW(be->dot_along_axis(out, a, a.cast(DType::F32), 1), Error);
}

// A random 0/1 keep mask of n elements, about a third zeros.
Tensor random_keep(int64_t n, std::mt19937& rng) {
  Tensor keep = Tensor::empty({n}, DType::F32);
  for (int64_t i = 0; i < n; ++i) keep.data<float>()[i] = rng() % 3 == 0 ? 0.f : 1.f;
  return keep;
}

TEST(PruningOps, ZeroMaskedClearsExactlyTheMaskedElementsInEveryDtype) {
  auto be = make_backend(Device::cpu());
  std::mt19937 rng(11);
  for (DType dt : {DType::F64, DType::F32, DType::BF16, DType::F16}) {
    for (int64_t n : {int64_t{1}, int64_t{7}, int64_t{100003}}) {
      const Tensor x = random_f64({n}, rng, 0.5, 2.0).cast(dt), keep = random_keep(n, rng);
      Tensor masked = x.cast(dt);
      be->zero_masked(masked, keep);
      for (int64_t i = 0; i < n; ++i) {
        const double expected = keep.data<float>()[i] == 0.f ? 0.0 : x.item(i);
        ASSERT_EQ(masked.item(i), expected) << dtype_name(dt) << " n " << n << " element " << i;
        if (expected == 0.0) ASSERT_FALSE(std::signbit(masked.item(i)));  // +0, never -0
      }
    }
  }
}

TEST(PruningOps, ZeroMaskedRejectsBadArguments) {
  auto be = make_backend(Device::cpu());
  Tensor x = Tensor::zeros({6}, DType::F32);
  const Tensor short_keep = Tensor::zeros({5}, DType::F32), f64_keep = Tensor::zeros({6}, DType::F64);
  EXPECT_THROW(be->zero_masked(x, short_keep), Error);
  EXPECT_THROW(be->zero_masked(x, f64_keep), Error);
  Tensor ints = Tensor::zeros({6}, DType::I32);
  EXPECT_THROW(be->zero_masked(ints, Tensor::zeros({6}, DType::F32)), Error);
}

// τ²·Σ p (log p − log q) over the first `classes` columns, directly from the softmaxes.
double kl_reference(const double* s, const double* t, int64_t classes, double tau) {
  double zs = 0, zt = 0;
  for (int64_t c = 0; c < classes; ++c) {
    zs += std::exp(s[c] / tau);
    zt += std::exp(t[c] / tau);
  }
  double kl = 0;
  for (int64_t c = 0; c < classes; ++c) {
    const double p = std::exp(t[c] / tau) / zt, q = std::exp(s[c] / tau) / zs;
    kl += p * std::log(p / q);
  }
  return tau * tau * kl;
}

TEST(PruningOps, DistillationLossAndGradientInFloat64) {
  auto be = make_backend(Device::cpu());
  std::mt19937 rng(11);
  const int64_t N = 3, Vp = 9, classes = 7;
  for (double tau : {1.0, 2.5}) {
    Tensor student = random_f64({N, Vp}, rng, -3, 3), teacher = random_f64({N, Vp}, rng, -3, 3);
    const double dloss = 0.7;
    Tensor losses = Tensor::empty({N}, DType::F64), grad = Tensor::empty({N, Vp}, DType::F64);
    be->distillation_loss(losses, grad, student, teacher, classes, tau, dloss);
    Tensor none, probe = Tensor::empty({N}, DType::F64);
    const double h = 1e-6;
    for (int64_t n = 0; n < N; ++n) {
      const double* s = student.data<double>() + n * Vp;
      const double* t = teacher.data<double>() + n * Vp;
      EXPECT_NEAR(losses.item(n), kl_reference(s, t, classes, tau), 1e-12) << "row " << n << " tau " << tau;
      for (int64_t c = 0; c < Vp; ++c) {
        double& x = student.data<double>()[n * Vp + c];
        const double saved = x;
        x = saved + h;
        be->distillation_loss(probe, none, student, teacher, classes, tau, dloss);
        const double up = probe.item(n);
        x = saved - h;
        be->distillation_loss(probe, none, student, teacher, classes, tau, dloss);
        const double down = probe.item(n);
        x = saved;
        const double numeric = dloss * (up - down) / (2 * h);
        EXPECT_NEAR(grad.item(n * Vp + c), numeric, 1e-8) << "row " << n << " column " << c << " tau " << tau;
        if (c >= classes) {
          EXPECT_EQ(grad.item(n * Vp + c), 0.0) << "padding column " << c;
        }
      }
    }
    // Identical logits: no divergence, no gradient.
    be->distillation_loss(losses, grad, teacher, teacher, classes, tau, dloss);
    for (int64_t i = 0; i < N; ++i) EXPECT_NEAR(losses.item(i), 0.0, 1e-13);
    for (int64_t i = 0; i < N * Vp; ++i) EXPECT_NEAR(grad.item(i), 0.0, 1e-15);
    // Written over the teacher (aliasing): the same gradient.
    Tensor expected = Tensor::empty({N, Vp}, DType::F64), in_place = Tensor::empty({N, Vp}, DType::F64);
    be->distillation_loss(losses, expected, student, teacher, classes, tau, dloss);
    in_place.copy_from(teacher);
    be->distillation_loss(probe, in_place, student, in_place, classes, tau, dloss);
    for (int64_t i = 0; i < N * Vp; ++i) EXPECT_EQ(in_place.item(i), expected.item(i));
  }
}

TEST(PruningOps, DistillationRejectsBadArguments) {
  auto be = make_backend(Device::cpu());
  Tensor s = Tensor::zeros({2, 4}, DType::F64), t = Tensor::zeros({2, 5}, DType::F64), none;
  Tensor losses = Tensor::empty({2}, DType::F64);
  EXPECT_THROW(be->distillation_loss(losses, none, s, t, 4, 1.0, 1.0), Error);
  EXPECT_THROW(be->distillation_loss(losses, none, s, s, 5, 1.0, 1.0), Error);
  EXPECT_THROW(be->distillation_loss(losses, none, s, s, 4, 0.0, 1.0), Error);
  Tensor short_losses = Tensor::empty({1}, DType::F64);
  EXPECT_THROW(be->distillation_loss(short_losses, none, s, s, 4, 1.0, 1.0), Error);
}

}  // namespace
}  // namespace loom
