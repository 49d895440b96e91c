// The CPU reference of the pruning ops in float64: dot_along_axis against a direct triple loop, zero_deleted
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

// Random deleted dimensions over an arena of `n` elements: parameters of ragged 1-3-D shapes one after another
// (with gaps), each with one or two masked dimensions (two entries covering the same elements), flags about a
// third zeros.
struct RandomMask {
  std::vector<DimensionMask> dims;
  Tensor keep;
  int64_t arena = 0;
};
RandomMask random_mask(std::mt19937& rng) {
  RandomMask m;
  std::vector<int32_t> flags;
  for (int p = 0; p < 7; ++p) {
    Shape shape;
    const int rank = 1 + static_cast<int>(rng() % 3);
    for (int d = 0; d < rank; ++d) shape.push_back(1 + static_cast<int64_t>(rng() % 37));
    int64_t numel = 1;
    for (int64_t s : shape) numel *= s;
    for (int masked = 0; masked < 1 + static_cast<int>(rng() % 2); ++masked) {
      const int d = static_cast<int>(rng() % rank);
      int64_t inner = 1;
      for (int k = d + 1; k < rank; ++k) inner *= shape[k];
      m.dims.push_back({m.arena, numel, shape[d], inner, static_cast<int64_t>(flags.size())});
      for (int64_t i = 0; i < shape[d]; ++i) flags.push_back(rng() % 3 == 0 ? 0 : 1);
    }
    m.arena += numel + static_cast<int64_t>(rng() % 5);
  }
  m.keep = Tensor::from_ints(flags, {static_cast<int64_t>(flags.size())});
  return m;
}

// Whether the definition deletes element k: some entry covering it has a zero flag at k's coordinate.
bool deleted_by_definition(const RandomMask& m, int64_t k) {
  for (const DimensionMask& d : m.dims) {
    if (k < d.offset || k >= d.offset + d.numel) continue;
    const int64_t c = ((k - d.offset) / d.inner) % d.size;
    if (m.keep.data<int32_t>()[d.flags_at + c] == 0) return true;
  }
  return false;
}

TEST(PruningOps, ZeroDeletedClearsExactlyTheDeletedElementsInEveryDtype) {
  auto be = make_backend(Device::cpu());
  std::mt19937 rng(11);
  for (DType dt : {DType::F64, DType::F32, DType::BF16, DType::F16}) {
    for (int trial = 0; trial < 5; ++trial) {
      const RandomMask m = random_mask(rng);
      const Tensor x = random_f64({m.arena}, rng, 0.5, 2.0).cast(dt);
      Tensor masked = x.cast(dt);
      be->zero_deleted(masked, m.dims, m.keep);
      int64_t zeros = 0;
      for (int64_t k = 0; k < m.arena; ++k) {
        const bool deleted = deleted_by_definition(m, k);
        zeros += deleted;
        ASSERT_EQ(masked.item(k), deleted ? 0.0 : x.item(k)) << dtype_name(dt) << " trial " << trial << " element " << k;
        if (deleted) {
          ASSERT_FALSE(std::signbit(masked.item(k)));  // +0, never -0
        }
      }
      EXPECT_GT(zeros, 0);
    }
  }
}

TEST(PruningOps, ZeroDeletedRejectsBadArguments) {
  auto be = make_backend(Device::cpu());
  Tensor x = Tensor::zeros({12}, DType::F32);
  const Tensor keep = Tensor::from_ints({1, 0, 1, 1}, {4});
  EXPECT_NO_THROW(be->zero_deleted(x, {{0, 12, 4, 3, 0}}, keep));
  EXPECT_THROW(be->zero_deleted(x, {{4, 12, 4, 3, 0}}, keep), Error);  // past the end of x
  EXPECT_THROW(be->zero_deleted(x, {{0, 12, 4, 3, 1}}, keep), Error);  // flags past the end of keep
  EXPECT_THROW(be->zero_deleted(x, {{0, 10, 4, 3, 0}}, keep), Error);  // not whole [size, inner] slabs
  EXPECT_THROW(be->zero_deleted(x, {{0, 12, 0, 3, 0}}, keep), Error);
  EXPECT_THROW(be->zero_deleted(x, {{0, 12, 4, 3, 0}}, Tensor::zeros({4}, DType::F32)), Error);  // flags are I32
  Tensor ints = Tensor::zeros({12}, DType::I32);
  EXPECT_THROW(be->zero_deleted(ints, {{0, 12, 4, 3, 0}}, keep), Error);
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
