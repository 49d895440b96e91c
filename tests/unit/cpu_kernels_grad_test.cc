// Float64 finite-difference gradient checks for every CPU backend op that has a backward, plus the
// accumulate-vs-write semantics of kernels/backend.h. Each loss is a random projection L = Σ r·out.
#include <gtest/gtest.h>

#include <random>
#include <sstream>

#include "kernels/cpu/cpu_backend.h"
#include "tests/unit/cpu_kernels_testing.h"

namespace loom {
namespace {

using cpu_test::clone;
using cpu_test::dot;
using cpu_test::expect_gradient;
using cpu_test::expect_scaled;
using cpu_test::poisoned;
using cpu_test::random_tensor;
constexpr DType F64 = DType::F64;

class CpuKernelsGrad : public ::testing::Test {
 protected:
  CpuBackend cpu;
  std::mt19937_64 rng{20261126};
};

TEST_F(CpuKernelsGrad, Embedding) {
  const int64_t V = 6, C = 5;
  Tensor table = random_tensor({V, C}, F64, rng);
  Tensor ids = Tensor::from_ints({4, 0, 4, 5, 2, 4, 0}, {7});  // repeated ids sum their gradients
  Tensor r = random_tensor({7, C}, F64, rng);
  auto loss = [&] {
    Tensor out = poisoned({7, C}, F64);
    cpu.embedding_forward(out, ids, table);
    return dot(out, r);
  };
  Tensor dtable = Tensor::zeros({V, C}, F64);
  cpu.embedding_backward(dtable, r, ids);
  expect_gradient("dtable", table, dtable, loss);

  Tensor once = clone(dtable);
  cpu.embedding_backward(dtable, r, ids);
  expect_scaled("dtable accumulates", dtable, once, 2);
}

TEST_F(CpuKernelsGrad, AddPosition) {
  const int64_t B = 2, T = 3, P = 5, C = 4;
  Tensor x = random_tensor({B, T, C}, F64, rng);
  Tensor pos = random_tensor({P, C}, F64, rng);
  Tensor r = random_tensor({B, T, C}, F64, rng);
  auto loss = [&] {
    Tensor y = clone(x);
    cpu.add_position_forward(y, pos);
    return dot(y, r);
  };
  Tensor dpos = Tensor::zeros({P, C}, F64);
  cpu.add_position_backward(dpos, r);
  expect_gradient("dpos", pos, dpos, loss);  // rows t >= T get exactly zero

  Tensor once = clone(dpos);
  cpu.add_position_backward(dpos, r);
  expect_scaled("dpos accumulates", dpos, once, 2);
}

TEST_F(CpuKernelsGrad, LayerNorm) {
  const int64_t C = 7;
  const Shape shape{2, 3, C};
  Tensor x = random_tensor(shape, F64, rng, -2, 3);
  Tensor w = random_tensor({C}, F64, rng, 0.5, 1.5);
  Tensor b = random_tensor({C}, F64, rng);
  Tensor r = random_tensor(shape, F64, rng);
  Tensor mean = poisoned({6}, F64), rstd = poisoned({6}, F64);
  auto loss = [&] {
    Tensor out = poisoned(shape, F64);
    cpu.layernorm_forward(out, mean, rstd, x, w, b, 1e-5);
    return dot(out, r);
  };
  loss();  // fills mean and rstd at the unperturbed point
  Tensor dx = Tensor::zeros(shape, F64), dw = Tensor::zeros({C}, F64), db = Tensor::zeros({C}, F64);
  cpu.layernorm_backward(dx, dw, db, r, x, w, mean, rstd);
  expect_gradient("dx", x, dx, loss);
  expect_gradient("dw", w, dw, loss);
  expect_gradient("db", b, db, loss);

  // dx (the residual stream's gradient), dw and db all accumulate.
  loss();
  Tensor dx1 = clone(dx), dw1 = clone(dw), db1 = clone(db);
  cpu.layernorm_backward(dx, dw, db, r, x, w, mean, rstd);
  expect_scaled("dx accumulates", dx, dx1, 2);
  expect_scaled("dw accumulates", dw, dw1, 2);
  expect_scaled("db accumulates", db, db1, 2);
}

TEST_F(CpuKernelsGrad, Matmul) {
  const int64_t I = 7, O = 3;
  Tensor x = random_tensor({5, I}, F64, rng);
  Tensor w = random_tensor({O, I}, F64, rng);
  Tensor bias = random_tensor({O}, F64, rng);
  Tensor r = random_tensor({5, O}, F64, rng);
  auto loss = [&] {
    Tensor out = poisoned({5, O}, F64);
    cpu.matmul_forward(out, x, w, bias);
    return dot(out, r);
  };
  Tensor dx = poisoned({5, I}, F64);  // written, not accumulated
  Tensor dw = Tensor::zeros({O, I}, F64), dbias = Tensor::zeros({O}, F64);
  cpu.matmul_backward(dx, dw, dbias, r, x, w);
  expect_gradient("dx", x, dx, loss);
  expect_gradient("dw", w, dw, loss);
  expect_gradient("dbias", bias, dbias, loss);

  Tensor dx1 = clone(dx), dw1 = clone(dw), dbias1 = clone(dbias);
  dx.fill_(NAN);
  cpu.matmul_backward(dx, dw, dbias, r, x, w);
  expect_scaled("dx is written", dx, dx1, 1);
  expect_scaled("dw accumulates", dw, dw1, 2);
  expect_scaled("dbias accumulates", dbias, dbias1, 2);

  // Absent dx and dbias are skipped; dw still accumulates.
  Tensor no_dx, no_dbias;
  Tensor dw_only = Tensor::zeros({O, I}, F64);
  cpu.matmul_backward(no_dx, dw_only, no_dbias, r, x, w);
  expect_scaled("dw without dx/dbias", dw_only, dw1, 1);

  // An absent dw skips the parameter gradients (and then refuses a dbias): dx alone.
  Tensor no_dw, dx_only = poisoned({5, I}, F64);
  cpu.matmul_backward(dx_only, no_dw, no_dbias, r, x, w);
  expect_scaled("dx without dw", dx_only, dx1, 1);
  EXPECT_THROW(cpu.matmul_backward(dx_only, no_dw, dbias, r, x, w), Error);
}

TEST_F(CpuKernelsGrad, Gelu) {
  for (GeluKind kind : {GeluKind::Tanh, GeluKind::Erf}) {
    const std::string name = kind == GeluKind::Tanh ? "tanh" : "erf";
    Tensor x = random_tensor({3, 7}, F64, rng, -4, 4);
    Tensor r = random_tensor({3, 7}, F64, rng);
    auto loss = [&] {
      Tensor out = poisoned({3, 7}, F64);
      cpu.gelu_forward(out, x, kind);
      return dot(out, r);
    };
    Tensor dx = poisoned({3, 7}, F64);
    cpu.gelu_backward(dx, r, x, kind);
    expect_gradient("gelu " + name + " dx", x, dx, loss);

    Tensor in_place = clone(r);  // dx may alias dout
    cpu.gelu_backward(in_place, in_place, x, kind);
    expect_scaled("gelu " + name + " in place", in_place, dx, 1);
  }
}

struct AttentionCase {
  int64_t batch, seq, heads, qk_dim, v_dim;
  bool causal;
};
std::string case_name(const AttentionCase& c) {
  std::ostringstream name;  // ostringstream rather than operator+: GCC 12 warns falsely (-Wrestrict) on the latter
  name << "B" << c.batch << "_T" << c.seq << "_H" << c.heads << "_qk" << c.qk_dim << "_v" << c.v_dim
       << (c.causal ? "_causal" : "_full");
  return name.str();
}
void PrintTo(const AttentionCase& c, std::ostream* os) { *os << case_name(c); }

class CpuKernelsGradAttention : public CpuKernelsGrad, public ::testing::WithParamInterface<AttentionCase> {};

TEST_P(CpuKernelsGradAttention, Dqkv) {
  const AttentionCase c = GetParam();
  AttentionShape s;
  s.batch = c.batch, s.seq = c.seq, s.heads = c.heads, s.qk_dim = c.qk_dim, s.v_dim = c.v_dim;
  s.causal = c.causal;
  s.scale = 1.0 / std::sqrt(static_cast<double>(c.qk_dim));
  const Shape qkv_shape{c.batch, c.seq, s.qkv_width()}, out_shape{c.batch, c.seq, s.out_width()};
  Tensor qkv = random_tensor(qkv_shape, F64, rng, -1.5, 1.5);
  Tensor r = random_tensor(out_shape, F64, rng);
  Tensor out = poisoned(out_shape, F64), saved = poisoned(cpu.attention_saved_shape(s), F64);
  auto loss = [&] {
    cpu.attention_forward(out, saved, qkv, s);
    return dot(out, r);
  };
  loss();
  Tensor dqkv = poisoned(qkv_shape, F64);
  cpu.attention_backward(dqkv, r, qkv, out, saved, s);
  expect_gradient("dqkv", qkv, dqkv, loss);

  // dqkv is written: a second backward into a poisoned buffer gives the same values.
  loss();
  Tensor first = clone(dqkv);
  dqkv.fill_(NAN);
  cpu.attention_backward(dqkv, r, qkv, out, saved, s);
  expect_scaled("dqkv is written", dqkv, first, 1);
}

INSTANTIATE_TEST_SUITE_P(CpuKernels, CpuKernelsGradAttention,
                         ::testing::Values(AttentionCase{2, 5, 2, 3, 4, true}, AttentionCase{2, 5, 2, 3, 4, false},
                                           AttentionCase{1, 7, 3, 4, 2, true}, AttentionCase{1, 7, 3, 2, 5, false}),
                         [](const ::testing::TestParamInfo<AttentionCase>& info) { return case_name(info.param); });

TEST_F(CpuKernelsGrad, CrossEntropy) {
  const int64_t N = 5, Vp = 9, vocab = 7;
  const double dloss = 0.37;
  Tensor targets = Tensor::from_ints({3, -1, 0, 6, 2}, {N});  // row 1 is ignored
  for (double smoothing : {0.0, 0.1}) {
    Tensor logits = random_tensor({N, Vp}, F64, rng, -3, 3);
    Tensor losses = poisoned({N}, F64);
    Tensor none;
    auto loss = [&] {
      cpu.cross_entropy(losses, none, logits, targets, vocab, dloss, smoothing);
      return dloss * dot(losses, Tensor::from_vector({1, 1, 1, 1, 1}, {N}, F64));
    };
    Tensor dlogits = poisoned({N, Vp}, F64);
    cpu.cross_entropy(losses, dlogits, logits, targets, vocab, dloss, smoothing);
    EXPECT_EQ(losses.item(1), 0.0) << "ignored row";
    for (int64_t c = 0; c < Vp; ++c) EXPECT_EQ(dlogits.item(1 * Vp + c), 0.0) << "ignored row, column " << c;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t c = vocab; c < Vp; ++c) EXPECT_EQ(dlogits.item(n * Vp + c), 0.0) << "padding " << n << "," << c;
    expect_gradient("dlogits, smoothing " + std::to_string(smoothing), logits, dlogits, loss);

    // dlogits may alias logits: same losses and gradient.
    Tensor losses_before = clone(losses);
    Tensor aliased = clone(logits);
    cpu.cross_entropy(losses, aliased, aliased, targets, vocab, dloss, smoothing);
    expect_scaled("aliased dlogits", aliased, dlogits, 1);
    expect_scaled("aliased losses", losses, losses_before, 1);
  }
}

}  // namespace
}  // namespace loom
