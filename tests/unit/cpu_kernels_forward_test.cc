// Forward values of the CPU backend in f32 against naive double-precision references written here, with
// outputs poisoned (NaN) before each run and ragged sizes; plus run-to-run determinism.
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "kernels/cpu/cpu_backend.h"
#include "tests/unit/cpu_kernels_testing.h"

namespace loom {
namespace {

using cpu_test::clone;
using cpu_test::expect_near_all;
using cpu_test::poisoned;
using cpu_test::random_tensor;
constexpr DType F32 = DType::F32;

std::vector<double> values(const Tensor& t) {
  std::vector<double> v(static_cast<size_t>(t.numel()));
  for (int64_t i = 0; i < t.numel(); ++i) v[i] = t.item(i);
  return v;
}

bool bitwise_equal(const Tensor& a, const Tensor& b) {
  return a.nbytes() == b.nbytes() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

class CpuKernelsForward : public ::testing::Test {
 protected:
  CpuBackend cpu;
  std::mt19937_64 rng{7};
};

TEST_F(CpuKernelsForward, ElementwiseAndConvert) {
  Tensor a = random_tensor({3, 5}, F32, rng), b = random_tensor({3, 5}, F32, rng);
  const std::vector<double> av = values(a), bv = values(b);
  Tensor out = poisoned({3, 5}, F32);
  cpu.add(out, a, b);
  for (int64_t i = 0; i < 15; ++i) EXPECT_EQ(out.item(i), static_cast<float>(av[i] + bv[i]));
  cpu.accumulate(out, a);
  for (int64_t i = 0; i < 15; ++i)
    EXPECT_EQ(out.item(i), static_cast<float>(static_cast<float>(av[i] + bv[i]) + av[i]));
  cpu.add(a, a, b);  // out may alias an input
  for (int64_t i = 0; i < 15; ++i) EXPECT_EQ(a.item(i), static_cast<float>(av[i] + bv[i]));
  cpu.scale(b, -0.5);
  for (int64_t i = 0; i < 15; ++i) EXPECT_EQ(b.item(i), static_cast<float>(bv[i] * -0.5));

  for (DType to : {DType::BF16, DType::F16, DType::F64}) {
    Tensor converted = poisoned({3, 5}, to);
    cpu.convert(converted, b);
    Tensor expected = b.cast(to);
    EXPECT_TRUE(bitwise_equal(converted, expected)) << dtype_name(to);
  }
  Tensor zeroed = random_tensor({4}, F32, rng);
  cpu.zero(zeroed);
  for (int64_t i = 0; i < 4; ++i) EXPECT_EQ(zeroed.item(i), 0.0);
}

TEST_F(CpuKernelsForward, EmbeddingAndPositions) {
  const int64_t V = 11, C = 6, B = 2, T = 3;
  Tensor table = random_tensor({V, C}, F32, rng), pos = random_tensor({5, C}, F32, rng);
  Tensor ids = Tensor::from_ints({10, 0, 3, 3, 7, 1}, {B, T});
  Tensor x = poisoned({B, T, C}, F32);
  cpu.embedding_forward(x, ids, table);
  cpu.add_position_forward(x, pos);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t c = 0; c < C; ++c) {
        const int64_t id = static_cast<int64_t>(ids.item(b * T + t));
        EXPECT_EQ(x.item((b * T + t) * C + c), static_cast<float>(table.item(id * C + c) + pos.item(t * C + c)));
      }
}

TEST_F(CpuKernelsForward, LayerNorm) {
  const int64_t N = 15, C = 11;
  Tensor x = random_tensor({3, 5, C}, F32, rng, 2, 6);  // a large mean checks the variance is computed stably
  Tensor w = random_tensor({C}, F32, rng), b = random_tensor({C}, F32, rng);
  for (bool with_bias : {true, false}) {
    Tensor out = poisoned({3, 5, C}, F32), mean = poisoned({N}, F32), rstd = poisoned({N}, F32);
    cpu.layernorm_forward(out, mean, rstd, x, w, with_bias ? b : Tensor(), 1e-5);
    std::vector<double> want_out(N * C), want_mean(N), want_rstd(N);
    for (int64_t n = 0; n < N; ++n) {
      double mu = 0, var = 0;
      for (int64_t c = 0; c < C; ++c) mu += x.item(n * C + c) / C;
      for (int64_t c = 0; c < C; ++c) var += (x.item(n * C + c) - mu) * (x.item(n * C + c) - mu) / C;
      want_mean[n] = mu;
      want_rstd[n] = 1 / std::sqrt(var + 1e-5);
      for (int64_t c = 0; c < C; ++c)
        want_out[n * C + c] = (x.item(n * C + c) - mu) * want_rstd[n] * w.item(c) + (with_bias ? b.item(c) : 0);
    }
    expect_near_all("mean", mean, want_mean, 1e-6, 0);
    expect_near_all("rstd", rstd, want_rstd, 1e-6, 0);
    expect_near_all("out", out, want_out, 1e-5, 1e-5);
  }
}

TEST_F(CpuKernelsForward, Matmul) {
  const int64_t N = 4 * 6, I = 13, O = 9;
  Tensor x = random_tensor({4, 6, I}, F32, rng), w = random_tensor({O, I}, F32, rng);
  Tensor bias = random_tensor({O}, F32, rng);
  for (bool with_bias : {true, false}) {
    Tensor out = poisoned({4, 6, O}, F32);
    cpu.matmul_forward(out, x, w, with_bias ? bias : Tensor());
    std::vector<double> want(N * O);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t o = 0; o < O; ++o) {
        double s = with_bias ? bias.item(o) : 0;
        for (int64_t i = 0; i < I; ++i) s += x.item(n * I + i) * w.item(o * I + i);
        want[n * O + o] = s;
      }
    expect_near_all(with_bias ? "out with bias" : "out without bias", out, want, 1e-5, 1e-5);
  }
}

TEST_F(CpuKernelsForward, Gelu) {
  Tensor x = random_tensor({5, 9}, F32, rng, -5, 5);
  for (GeluKind kind : {GeluKind::Tanh, GeluKind::Erf}) {
    Tensor out = poisoned({5, 9}, F32);
    cpu.gelu_forward(out, x, kind);
    std::vector<double> want(45);
    for (int64_t i = 0; i < 45; ++i) {
      const double v = x.item(i);
      want[i] = kind == GeluKind::Tanh ? 0.5 * v * (1 + std::tanh(std::sqrt(2 / M_PI) * (v + 0.044715 * v * v * v)))
                                       : 0.5 * v * (1 + std::erf(v / std::sqrt(2.0)));
    }
    expect_near_all(kind == GeluKind::Tanh ? "gelu tanh" : "gelu erf", out, want, 1e-5, 1e-6);
    Tensor in_place = clone(x);  // out may alias x
    cpu.gelu_forward(in_place, in_place, kind);
    EXPECT_TRUE(bitwise_equal(in_place, out));
  }
}

TEST_F(CpuKernelsForward, Attention) {
  for (bool causal : {true, false}) {
    AttentionShape s;
    s.batch = 2, s.seq = 7, s.heads = 3, s.qk_dim = 5, s.v_dim = 3, s.causal = causal;
    s.scale = 1 / std::sqrt(5.0);
    const int64_t B = s.batch, T = s.seq, H = s.heads, Dq = s.qk_dim, Dv = s.v_dim, W = s.qkv_width();
    Tensor qkv = random_tensor({B, T, W}, F32, rng, -2, 2);
    Tensor out = poisoned({B, T, H * Dv}, F32), probs = poisoned(cpu.attention_saved_shape(s), F32);
    cpu.attention_forward(out, probs, qkv, s);

    std::vector<double> want_out(B * T * H * Dv), want_p(B * H * T * T);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t t = 0; t < T; ++t) {
          auto q = [&](int64_t d) { return qkv.item((b * T + t) * W + h * Dq + d); };
          auto k = [&](int64_t u, int64_t d) { return qkv.item((b * T + u) * W + H * Dq + h * Dq + d); };
          auto v = [&](int64_t u, int64_t d) { return qkv.item((b * T + u) * W + 2 * H * Dq + h * Dv + d); };
          std::vector<double> score(T, -INFINITY);
          double max_score = -INFINITY;
          for (int64_t u = 0; u < T; ++u) {
            if (causal && u > t) continue;
            double dotp = 0;
            for (int64_t d = 0; d < Dq; ++d) dotp += q(d) * k(u, d);
            score[u] = s.scale * dotp;
            max_score = std::max(max_score, score[u]);
          }
          double z = 0;
          for (int64_t u = 0; u < T; ++u) z += std::exp(score[u] - max_score);
          for (int64_t u = 0; u < T; ++u) want_p[((b * H + h) * T + t) * T + u] = std::exp(score[u] - max_score) / z;
          for (int64_t d = 0; d < Dv; ++d) {
            double o = 0;
            for (int64_t u = 0; u < T; ++u) o += want_p[((b * H + h) * T + t) * T + u] * v(u, d);
            want_out[(b * T + t) * H * Dv + h * Dv + d] = o;
          }
        }
    const std::string name = causal ? "causal" : "non-causal";
    expect_near_all(name + " probabilities", probs, want_p, 1e-5, 1e-7);
    expect_near_all(name + " out", out, want_out, 1e-5, 1e-6);
    if (causal) {
      EXPECT_EQ(probs.item(1), 0.0) << "masked probabilities are exactly zero";
    }
  }
}

TEST_F(CpuKernelsForward, CrossEntropy) {
  const int64_t N = 6, Vp = 13, vocab = 11;
  const double dloss = 1.0 / 5, smoothing = 0.1;
  Tensor logits = random_tensor({N, Vp}, F32, rng, -4, 4);
  for (int64_t c = 0; c < Vp; ++c) logits.data<float>()[4 * Vp + c] += 1000;  // exp overflows without max shift
  Tensor targets = Tensor::from_ints({0, 10, -1, 5, 7, 3}, {N});
  Tensor losses = poisoned({N}, F32), dlogits = poisoned({N, Vp}, F32);
  cpu.cross_entropy(losses, dlogits, logits, targets, vocab, dloss, smoothing);

  std::vector<double> want_loss(N, 0), want_grad(N * Vp, 0);
  for (int64_t n = 0; n < N; ++n) {
    const int64_t target = static_cast<int64_t>(targets.item(n));
    if (target < 0) continue;
    double m = -INFINITY, z = 0;
    for (int64_t c = 0; c < vocab; ++c) m = std::max(m, logits.item(n * Vp + c));
    for (int64_t c = 0; c < vocab; ++c) z += std::exp(logits.item(n * Vp + c) - m);
    for (int64_t c = 0; c < vocab; ++c) {
      const double log_p = logits.item(n * Vp + c) - m - std::log(z);
      const double q = (c == target ? 1 - smoothing : 0) + smoothing / vocab;
      want_loss[n] -= q * log_p;
      want_grad[n * Vp + c] = dloss * (std::exp(log_p) - q);
    }
  }
  expect_near_all("losses", losses, want_loss, 1e-5, 1e-6);
  expect_near_all("dlogits", dlogits, want_grad, 1e-5, 1e-7);

  Tensor no_grad;  // without dlogits only the losses are written
  Tensor losses_only = poisoned({N}, F32);
  cpu.cross_entropy(losses_only, no_grad, logits, targets, vocab, dloss, smoothing);
  EXPECT_TRUE(bitwise_equal(losses_only, losses));
}

TEST_F(CpuKernelsForward, SumSquares) {
  Tensor a = random_tensor({40000}, F32, rng);  // several chunks, summed in parallel
  Tensor b = random_tensor({3, 7}, DType::F64, rng);
  Tensor c = random_tensor({5}, F32, rng).cast(DType::BF16);
  double want = 0;
  for (const Tensor* t : {&a, &b, &c})
    for (int64_t i = 0; i < t->numel(); ++i) want += t->item(i) * t->item(i);
  EXPECT_NEAR(cpu.sum_squares({a, b, c}), want, 1e-12 * want);
  EXPECT_EQ(cpu.sum_squares({}), 0.0);
}

// Bit-identical results on repeated runs (the trainer's exact resume relies on it), at sizes large enough
// to take the parallel paths.
TEST_F(CpuKernelsForward, BackwardsAreDeterministic) {
  const int64_t V = 97, C = 64, N = 640;
  std::vector<int32_t> id_values(N);
  for (int64_t n = 0; n < N; ++n) id_values[n] = static_cast<int32_t>((n * 37) % V);
  Tensor ids = Tensor::from_ints(id_values, {N});
  Tensor dout = random_tensor({N, C}, F32, rng), x = random_tensor({N, C}, F32, rng);
  Tensor w = random_tensor({C}, F32, rng), b = random_tensor({C}, F32, rng);
  AttentionShape s;
  s.batch = 4, s.seq = 40, s.heads = 4, s.qk_dim = 16, s.v_dim = 8, s.causal = true, s.scale = 0.25;
  Tensor qkv = random_tensor({s.batch, s.seq, s.qkv_width()}, F32, rng);
  Tensor attn_dout = random_tensor({s.batch, s.seq, s.out_width()}, F32, rng);

  auto run = [&] {
    std::vector<Tensor> results;
    Tensor dtable = Tensor::zeros({V, C}, F32);
    cpu.embedding_backward(dtable, dout, ids);
    Tensor out = poisoned({N, C}, F32), mean = poisoned({N}, F32), rstd = poisoned({N}, F32);
    cpu.layernorm_forward(out, mean, rstd, x, w, b, 1e-5);
    Tensor dx = Tensor::zeros({N, C}, F32), dw = Tensor::zeros({C}, F32), db = Tensor::zeros({C}, F32);
    cpu.layernorm_backward(dx, dw, db, dout, x, w, mean, rstd);
    Tensor attn_out = poisoned({s.batch, s.seq, s.out_width()}, F32);
    Tensor probs = poisoned(cpu.attention_saved_shape(s), F32);
    cpu.attention_forward(attn_out, probs, qkv, s);
    Tensor dqkv = poisoned(qkv.shape(), F32);
    cpu.attention_backward(dqkv, attn_dout, qkv, attn_out, probs, s);
    return std::vector<Tensor>{dtable, out, dx, dw, db, attn_out, dqkv};
  };
  const std::vector<Tensor> first = run(), second = run();
  for (size_t i = 0; i < first.size(); ++i) EXPECT_TRUE(bitwise_equal(first[i], second[i])) << "result " << i;
}

}  // namespace
}  // namespace loom
