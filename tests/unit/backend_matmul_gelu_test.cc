// The Backend defaults of the fused MLP ops (matmul_gelu_forward, matmul_backward_gelu), as the CPU backend
// runs them: a float64 finite-difference check of a whole MLP, L = Σ r · fc2(gelu(fc1(x))), for both GELU
// forms, and the accumulate-vs-write semantics of their outputs; and the default of matmul_residual_forward.
#include <gtest/gtest.h>

#include <limits>
#include <random>

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

class BackendMatmulGelu : public ::testing::Test {
 protected:
  CpuBackend cpu;
  std::mt19937_64 rng{20261126};
};

TEST_F(BackendMatmulGelu, MlpGradientsMatchFiniteDifferences) {
  const int64_t N = 5, C = 3, M = 7;  // ragged sizes
  for (GeluKind kind : {GeluKind::Tanh, GeluKind::Erf}) {
    const std::string form = kind == GeluKind::Tanh ? " (tanh)" : " (erf)";
    Tensor x = random_tensor({N, C}, F64, rng, -2, 2);
    Tensor w1 = random_tensor({M, C}, F64, rng), b1 = random_tensor({M}, F64, rng);
    Tensor w2 = random_tensor({C, M}, F64, rng), b2 = random_tensor({C}, F64, rng);
    Tensor r = random_tensor({N, C}, F64, rng);
    Tensor pre = poisoned({N, M}, F64), h = poisoned({N, M}, F64);
    auto forward = [&] {
      Tensor y = poisoned({N, C}, F64);
      cpu.matmul_gelu_forward(h, pre, x, w1, b1, kind);
      cpu.matmul_forward(y, h, w2, b2);
      return dot(y, r);
    };
    forward();

    // pre and h are exactly the unfused composition.
    Tensor pre_ref = poisoned({N, M}, F64), h_ref = poisoned({N, M}, F64);
    cpu.matmul_forward(pre_ref, x, w1, b1);
    cpu.gelu_forward(h_ref, pre_ref, kind);
    expect_scaled("pre" + form, pre, pre_ref, 1);
    expect_scaled("gelu(pre)" + form, h, h_ref, 1);

    Tensor dpre = poisoned({N, M}, F64);
    Tensor dw2 = Tensor::zeros({C, M}, F64), db2 = Tensor::zeros({C}, F64);
    cpu.matmul_backward_gelu(dpre, dw2, db2, r, h, w2, pre, kind);
    Tensor dx = poisoned({N, C}, F64), dw1 = Tensor::zeros({M, C}, F64), db1 = Tensor::zeros({M}, F64);
    cpu.matmul_backward(dx, dw1, db1, dpre, x, w1);

    expect_gradient("dx" + form, x, dx, forward);
    expect_gradient("dw1" + form, w1, dw1, forward);
    expect_gradient("db1" + form, b1, db1, forward);
    expect_gradient("dw2" + form, w2, dw2, forward);
    expect_gradient("db2" + form, b2, db2, forward);

    // dw and dbias accumulate, dpre is written; an undefined dbias is skipped.
    forward();
    const Tensor dpre_once = clone(dpre), dw2_once = clone(dw2), db2_once = clone(db2);
    dpre.fill_(std::numeric_limits<double>::quiet_NaN());
    cpu.matmul_backward_gelu(dpre, dw2, db2, r, h, w2, pre, kind);
    expect_scaled("dpre is written" + form, dpre, dpre_once, 1);
    expect_scaled("dw2 accumulates" + form, dw2, dw2_once, 2);
    expect_scaled("db2 accumulates" + form, db2, db2_once, 2);
    Tensor no_dbias, dw2_only = Tensor::zeros({C, M}, F64);
    cpu.matmul_backward_gelu(dpre, dw2_only, no_dbias, r, h, w2, pre, kind);
    expect_scaled("dw2 without dbias" + form, dw2_only, dw2_once, 1);
  }
}

TEST_F(BackendMatmulGelu, ResidualForwardIsTheResidualPlusTheLinearLayer) {
  const int64_t N = 5, I = 3, O = 7;  // ragged sizes
  const Tensor x = random_tensor({N, I}, F64, rng), w = random_tensor({O, I}, F64, rng);
  const Tensor b = random_tensor({O}, F64, rng), residual = random_tensor({N, O}, F64, rng);
  const Tensor residual_before = clone(residual);
  for (bool with_bias : {true, false}) {
    Tensor out = poisoned({N, O}, F64), expected = poisoned({N, O}, F64);
    cpu.matmul_residual_forward(out, x, w, with_bias ? b : Tensor(), residual);
    cpu.matmul_forward(expected, x, w, with_bias ? b : Tensor());
    for (int64_t i = 0; i < N * O; ++i) expected.data<double>()[i] += residual.data<double>()[i];
    expect_scaled(with_bias ? "residual + x·wᵀ + b" : "residual + x·wᵀ", out, expected, 1);
  }
  expect_scaled("the residual is only read", residual, residual_before, 1);
  Tensor same = clone(residual);
  EXPECT_THROW(cpu.matmul_residual_forward(same, x, w, b, same), Error);
}

}  // namespace
}  // namespace loom
