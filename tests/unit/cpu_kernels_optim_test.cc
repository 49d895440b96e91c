// AdamW against a scalar reference, and the CPU backend's error reporting (shape, dtype and id checks).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <utility>
#include <random>

#include "kernels/cpu/cpu_backend.h"
#include "tests/unit/cpu_kernels_testing.h"
#include "tests/common/test_util.h"

namespace loom {
namespace {

using testing::error_message;

using cpu_test::clone;
using cpu_test::poisoned;
using cpu_test::random_tensor;
constexpr DType F32 = DType::F32, F64 = DType::F64;

// One AdamW step for one scalar, written directly from the formula in kernels/backend.h.
struct ScalarAdamW {
  double param, m = 0, v = 0;
  void step(double grad, const AdamWHyper& hp, double weight_decay) {
    const double g = grad * hp.grad_scale;
    m = hp.beta1 * m + (1 - hp.beta1) * g;
    v = hp.beta2 * v + (1 - hp.beta2) * g * g;
    const double m_hat = m / (1 - std::pow(hp.beta1, hp.step));
    const double v_hat = v / (1 - std::pow(hp.beta2, hp.step));
    param -= hp.lr * (m_hat / (std::sqrt(v_hat) + hp.eps) + weight_decay * param);
  }
};

class CpuKernelsOptim : public ::testing::Test {
 protected:
  CpuBackend cpu;
  std::mt19937_64 rng{99};
};

TEST_F(CpuKernelsOptim, AdamWMatchesScalarReference) {
  const int64_t n = 37;
  const double weight_decay = 0.1;
  for (DType dtype : {F64, F32}) {
    Tensor param = random_tensor({n}, dtype, rng), m = Tensor::zeros({n}, dtype), v = Tensor::zeros({n}, dtype);
    std::vector<ScalarAdamW> ref;
    for (int64_t i = 0; i < n; ++i) ref.push_back({param.item(i)});
    AdamWHyper hp;
    hp.lr = 1e-2, hp.beta1 = 0.9, hp.beta2 = 0.95, hp.eps = 1e-8;
    for (int64_t step = 1; step <= 5; ++step) {
      hp.step = step;
      hp.grad_scale = 1.0 / step;  // as if clipping changed the scale every step
      Tensor grad = random_tensor({n}, dtype, rng, -2, 2);
      Tensor no_copy;
      cpu.adamw_update(param, m, v, grad, no_copy, hp, weight_decay);
      for (int64_t i = 0; i < n; ++i) {
        ref[i].step(grad.item(i), hp, weight_decay);
        if (dtype == F32) {  // the f32 state is rounded after every step
          ref[i].param = static_cast<float>(ref[i].param);
          ref[i].m = static_cast<float>(ref[i].m);
          ref[i].v = static_cast<float>(ref[i].v);
        }
      }
    }
    const double rtol = dtype == F64 ? 1e-13 : 1e-6;
    for (int64_t i = 0; i < n; ++i) {
      EXPECT_NEAR(param.item(i), ref[i].param, rtol * std::fabs(ref[i].param)) << dtype_name(dtype) << " param " << i;
      EXPECT_NEAR(m.item(i), ref[i].m, rtol * std::fabs(ref[i].m) + 1e-300) << dtype_name(dtype) << " m " << i;
      EXPECT_NEAR(v.item(i), ref[i].v, rtol * std::fabs(ref[i].v) + 1e-300) << dtype_name(dtype) << " v " << i;
    }
  }
}

TEST_F(CpuKernelsOptim, WeightDecayIsDecoupled) {
  // A zero gradient leaves the moments at zero; the parameter only shrinks by lr·wd·param.
  Tensor param = random_tensor({9}, F64, rng), m = Tensor::zeros({9}, F64), v = Tensor::zeros({9}, F64);
  const Tensor before = clone(param);
  AdamWHyper hp;
  hp.lr = 0.5, hp.step = 3;
  Tensor no_copy;
  cpu.adamw_update(param, m, v, Tensor::zeros({9}, F64), no_copy, hp, 0.2);
  for (int64_t i = 0; i < 9; ++i) {
    EXPECT_DOUBLE_EQ(param.item(i), before.item(i) - 0.5 * 0.2 * before.item(i));
    EXPECT_EQ(m.item(i), 0.0);
    EXPECT_EQ(v.item(i), 0.0);
  }
}

TEST_F(CpuKernelsOptim, GradScaleEqualsPrescaledGradient) {
  Tensor grad = random_tensor({16}, F64, rng);
  Tensor prescaled = clone(grad);
  for (int64_t i = 0; i < 16; ++i) prescaled.data<double>()[i] *= 0.25;
  Tensor p1 = random_tensor({16}, F64, rng), m1 = random_tensor({16}, F64, rng, 0, 1);
  Tensor v1 = random_tensor({16}, F64, rng, 0, 1);
  Tensor p2 = clone(p1), m2 = clone(m1), v2 = clone(v1);
  AdamWHyper hp;
  hp.lr = 1e-3, hp.step = 7;
  Tensor no_copy;
  cpu.adamw_update(p2, m2, v2, prescaled, no_copy, hp, 0.01);
  hp.grad_scale = 0.25;
  cpu.adamw_update(p1, m1, v1, grad, no_copy, hp, 0.01);
  EXPECT_EQ(std::memcmp(p1.raw(), p2.raw(), p1.nbytes()), 0);
  EXPECT_EQ(std::memcmp(m1.raw(), m2.raw(), m1.nbytes()), 0);
  EXPECT_EQ(std::memcmp(v1.raw(), v2.raw(), v1.nbytes()), 0);
}

// The step statistics (kernels/step_stats.h) as the trainer leaves them for AdamW: loss, then Σg² in two parts.
Tensor step_stats(double loss, double squares_sharded, double squares_replicated) {
  Tensor s = Tensor::empty({kStepStatsSize}, F64);
  s.data<double>()[kStepLoss] = loss;
  s.data<double>()[kStepSquaresSharded] = squares_sharded;
  s.data<double>()[kStepSquaresReplicated] = squares_replicated;
  return s;
}

// Clipping decided from the statistics gives bit for bit the update of the host's factor min(1, clip / norm)
// (what AdamW::step computed on the host before); a non-finite loss or norm changes nothing at all.
TEST_F(CpuKernelsOptim, StepStatsClipLikeTheHostFactorAndSkipNonFiniteSteps) {
  constexpr double kNaN = std::numeric_limits<double>::quiet_NaN(), kInf = std::numeric_limits<double>::infinity();
  const double clip = 1.0;
  struct Case {
    const char* what;
    double loss, sharded, replicated, max_norm;
    bool updates;
  };
  const Case cases[] = {{"norm below the clip", 2.5, 0.09, 0.16, clip, true},  // norm 0.5
                        {"norm above the clip", 2.5, 4.0, 5.0, clip, true},    // norm 3
                        {"clipping off", 2.5, 4.0, 5.0, 0.0, true},
                        {"NaN norm", 2.5, kNaN, 0.16, clip, false},
                        {"infinite norm", 2.5, 0.09, kInf, clip, false},
                        {"NaN loss", kNaN, 0.09, 0.16, clip, false},
                        {"infinite loss", -kInf, 4.0, 5.0, clip, false}};
  for (const Case& c : cases) {
    for (const int64_t n : {1, 7, 33}) {
      const std::string tag = std::string(c.what) + ", n " + std::to_string(n);
      const Tensor p0 = random_tensor({n}, F32, rng), m0 = random_tensor({n}, F32, rng, -0.1, 0.1),
                   v0 = random_tensor({n}, F32, rng, 0, 0.01), grad = random_tensor({n}, F32, rng).cast(DType::BF16);
      AdamWHyper hp;
      hp.lr = 1e-2, hp.step = 4, hp.grad_scale = 1;
      Tensor p = clone(p0), m = clone(m0), v = clone(v0), copy = poisoned({n}, DType::BF16);
      const Tensor copy0 = clone(copy);
      AdamWHyper on_device = hp;
      on_device.step_stats = step_stats(c.loss, c.sharded, c.replicated);
      on_device.max_grad_norm = c.max_norm;
      cpu.adamw_update(p, m, v, grad, copy, on_device, 0.1);
      if (!c.updates) {
        for (const auto& [got, was] : {std::pair<const Tensor*, const Tensor*>{&p, &p0}, {&m, &m0}, {&v, &v0},
                                       {&copy, &copy0}})
          EXPECT_EQ(std::memcmp(got->raw(), was->raw(), got->nbytes()), 0) << tag << ": changed by a skipped step";
        continue;
      }
      const double norm = std::sqrt(c.sharded + c.replicated);
      hp.grad_scale = c.max_norm > 0 && norm > c.max_norm ? c.max_norm / norm : 1.0;
      Tensor pr = clone(p0), mr = clone(m0), vr = clone(v0), copy_ref = poisoned({n}, DType::BF16);
      cpu.adamw_update(pr, mr, vr, grad, copy_ref, hp, 0.1);
      for (const auto& [got, want] : {std::pair<const Tensor*, const Tensor*>{&p, &pr}, {&m, &mr}, {&v, &vr},
                                      {&copy, &copy_ref}})
        EXPECT_EQ(std::memcmp(got->raw(), want->raw(), got->nbytes()), 0) << tag;
      EXPECT_NE(std::memcmp(p.raw(), p0.raw(), p.nbytes()), 0) << tag << ": no update";
    }
  }
  Tensor p = random_tensor({4}, F32, rng), m = clone(p), v = clone(p), no_copy;
  AdamWHyper bad;
  bad.step_stats = Tensor::zeros({2}, F64);
  EXPECT_NE(error_message([&] { cpu.adamw_update(p, m, v, clone(p), no_copy, bad, 0); }).find("step_stats"),
            std::string::npos);
}

// The device-scalar sums the training step keeps its loss and norm in: total += (weight·Σx)/count and
// total += Σx², each added to what total held, in the order the host computed them before.
TEST_F(CpuKernelsOptim, AccumulateSumAndSumSquaresAddToTheTotal) {
  for (DType dtype : {F32, F64}) {
    const Tensor x = random_tensor({37}, dtype, rng), y = random_tensor({5, 3}, dtype, rng);
    double sum = 0, squares_x = 0, squares_y = 0;
    for (int64_t i = 0; i < x.numel(); ++i) sum += x.item(i), squares_x += x.item(i) * x.item(i);
    for (int64_t i = 0; i < y.numel(); ++i) squares_y += y.item(i) * y.item(i);
    Tensor total = Tensor::from_vector({1.25f}, {1}, F64);
    cpu.accumulate_sum(total, x, 0.5, 3.0);
    EXPECT_EQ(total.item(0), 1.25 + (0.5 * sum) / 3.0) << dtype_name(dtype);
    total.data<double>()[0] = 0.75;
    cpu.accumulate_sum_squares(total, {x, y});
    EXPECT_NEAR(total.item(0), 0.75 + squares_x + squares_y, 1e-12) << dtype_name(dtype);
    EXPECT_EQ(cpu.sum_squares({x, y}) + 0.75, total.item(0)) << dtype_name(dtype);
    cpu.accumulate_sum_squares(total, {});
    EXPECT_EQ(cpu.sum_squares({x, y}) + 0.75, total.item(0)) << "an empty list adds nothing";
  }
  Tensor f32_total = Tensor::zeros({1}, F32), total = Tensor::zeros({2}, F64);
  EXPECT_NE(error_message([&] { cpu.accumulate_sum(f32_total, Tensor::zeros({3}, F32), 1, 1); }).find("total"),
            std::string::npos);
  EXPECT_NE(error_message([&] { cpu.accumulate_sum_squares(total, {}); }).find("one f64 element"), std::string::npos);
  Tensor one = Tensor::zeros({1}, F64);
  EXPECT_NE(error_message([&] { cpu.accumulate_sum(one, Tensor::zeros({3}, F32), 1, 0); }).find("count"),
            std::string::npos);
}

TEST_F(CpuKernelsOptim, ComputeCopyAndLowPrecisionGradient) {
  Tensor param = random_tensor({3, 5}, F32, rng), m = Tensor::zeros({3, 5}, F32), v = Tensor::zeros({3, 5}, F32);
  Tensor grad = random_tensor({3, 5}, F32, rng).cast(DType::BF16);
  Tensor copy = poisoned({3, 5}, DType::BF16);
  const Tensor before = clone(param);
  AdamWHyper hp;
  hp.lr = 1e-2;
  cpu.adamw_update(param, m, v, grad, copy, hp, 0);
  Tensor expected = param.cast(DType::BF16);
  EXPECT_EQ(std::memcmp(copy.raw(), expected.raw(), copy.nbytes()), 0);
  // First step: m = (1-β1)·g from the bf16 gradient; with bias correction m̂ = g and v̂ = g², so each
  // parameter moves by lr·g/(|g| + eps) ≈ lr·sign(g).
  for (int64_t i = 0; i < 15; ++i) {
    const double g = grad.item(i);
    EXPECT_NEAR(m.item(i), 0.1 * g, 1e-7);
    EXPECT_NEAR(param.item(i), before.item(i) - 1e-2 * g / (std::fabs(g) + 1e-8), 1e-6);
  }
}

// ---- errors: every bad call throws loom::Error naming the op and the tensors ----

TEST_F(CpuKernelsOptim, ShapeAndDtypeMismatchesThrow) {
  Tensor x = random_tensor({4, 7}, F32, rng), w = random_tensor({3, 6}, F32, rng), out = poisoned({4, 3}, F32);
  Tensor none;
  const std::string message = error_message([&] { cpu.matmul_forward(out, x, w, none); });
  EXPECT_NE(message.find("matmul_forward"), std::string::npos) << message;
  EXPECT_NE(message.find("[3, 6]"), std::string::npos) << message;
  EXPECT_NE(message.find("[4, 7]"), std::string::npos) << message;

  Tensor w_f64 = random_tensor({3, 7}, F64, rng);
  EXPECT_THROW(cpu.matmul_forward(out, x, w_f64, none), Error);
  Tensor good_w = random_tensor({3, 7}, F32, rng), bad_out = poisoned({4, 4}, F32);
  EXPECT_THROW(cpu.matmul_forward(bad_out, x, good_w, none), Error);
  Tensor bad_bias = random_tensor({4}, F32, rng);
  EXPECT_THROW(cpu.matmul_forward(out, x, good_w, bad_bias), Error);

  Tensor a = random_tensor({2, 3}, F32, rng), b = random_tensor({3, 2}, F32, rng);
  EXPECT_THROW(cpu.add(a, a, b), Error);
  Tensor half = random_tensor({2, 3}, F32, rng).cast(DType::BF16);
  EXPECT_THROW(cpu.add(a, a, half), Error);

  Tensor mean = poisoned({4}, F32), rstd = poisoned({4}, F32), ln_w = random_tensor({6}, F32, rng);
  Tensor ln_out = poisoned({4, 7}, F32);
  EXPECT_THROW(cpu.layernorm_forward(ln_out, mean, rstd, x, ln_w, none, 1e-5), Error);
  Tensor mean_f64 = poisoned({4}, F64), ln_w7 = random_tensor({7}, F32, rng);
  EXPECT_THROW(cpu.layernorm_forward(ln_out, mean_f64, rstd, x, ln_w7, none, 1e-5), Error);

  AttentionShape s;
  s.batch = 1, s.seq = 4, s.heads = 2, s.qk_dim = 3, s.v_dim = 2, s.scale = 0.5;
  Tensor qkv = random_tensor({1, 4, s.qkv_width()}, F32, rng), attn_out = poisoned({1, 4, s.out_width()}, F32);
  Tensor wrong_saved = poisoned({1, 2, 4, 3}, F32);
  EXPECT_THROW(cpu.attention_forward(attn_out, wrong_saved, qkv, s), Error);
  Tensor saved = poisoned(cpu.attention_saved_shape(s), F32), narrow_qkv = random_tensor({1, 4, 15}, F32, rng);
  EXPECT_THROW(cpu.attention_forward(attn_out, saved, narrow_qkv, s), Error);

  Tensor undefined_table;
  Tensor emb_out = poisoned({4, 7}, F32);
  EXPECT_THROW(cpu.embedding_forward(emb_out, Tensor::from_ints({0, 1, 2, 3}, {4}), undefined_table), Error);
}

TEST_F(CpuKernelsOptim, BadIdsAndTargetsThrow) {
  Tensor table = random_tensor({5, 3}, F32, rng), out = poisoned({4, 3}, F32);
  const std::string message = error_message([&] {
    cpu.embedding_forward(out, Tensor::from_ints({0, 4, 5, 1}, {4}), table);
  });
  EXPECT_NE(message.find("embedding_forward"), std::string::npos) << message;
  EXPECT_NE(message.find("is 5"), std::string::npos) << message;
  EXPECT_THROW(cpu.embedding_forward(out, Tensor::from_ints({0, -1, 2, 1}, {4}), table), Error);
  Tensor dtable = Tensor::zeros({5, 3}, F32);
  EXPECT_THROW(cpu.embedding_backward(dtable, out, Tensor::from_ints({0, 1, 2, 9}, {4})), Error);
  for (int64_t i = 0; i < dtable.numel(); ++i) EXPECT_EQ(dtable.item(i), 0.0) << "nothing written before the throw";
  Tensor float_ids = Tensor::from_vector({0, 1, 2, 3}, {4});
  EXPECT_THROW(cpu.embedding_forward(out, float_ids, table), Error);

  Tensor logits = random_tensor({3, 8}, F32, rng), losses = poisoned({3}, F32), none;
  EXPECT_THROW(cpu.cross_entropy(losses, none, logits, Tensor::from_ints({0, 6, 1}, {3}), 6, 1, 0), Error);
  EXPECT_THROW(cpu.cross_entropy(losses, none, logits, Tensor::from_ints({0, -2, 1}, {3}), 6, 1, 0), Error);
  EXPECT_THROW(cpu.cross_entropy(losses, none, logits, Tensor::from_ints({0, 1, 1}, {3}), 9, 1, 0), Error);
  EXPECT_THROW(cpu.cross_entropy(losses, none, logits, Tensor::from_ints({0, 1}, {2}), 6, 1, 0), Error);
}

}  // namespace
}  // namespace loom
