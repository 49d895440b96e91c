// CUDA backend against the float64 CPU reference: LayerNorm, linear layers (cuBLASLt, bias epilogues) and the
// plain attention, on ragged shapes with NaN-poisoned outputs and accumulating gradients.
#include <cmath>

#include "tests/gpu/cuda_backend_test_util.h"

namespace loom::testing_cuda {
namespace {

class CudaLayersTest : public CudaBackendTest, public ::testing::WithParamInterface<DType> {};

TEST_P(CudaLayersTest, LayerNormForwardBackward) {
  const DType dt = GetParam();
  const double tol = tolerance(dt);
  const int64_t B = 3, T = 7, C = 33;
  const Tensor x = random_host({B, T, C}, dt, -2.f, 3.f), w = random_host({C}, dt, 0.5f, 1.5f),
               b = random_host({C}, dt), dout = random_host({B, T, C}, dt);
  for (bool with_bias : {true, false}) {
    const std::string tag = with_bias ? " (bias)" : " (no bias)";
    Tensor out = poisoned({B, T, C}, dt), mean = poisoned({B * T}, DType::F32), rstd = poisoned({B * T}, DType::F32);
    gpu_->layernorm_forward(out, mean, rstd, on_gpu(x), on_gpu(w), with_bias ? on_gpu(b) : Tensor(), 1e-5);
    Tensor out_ref = Tensor::empty({B, T, C}, DType::F64), mean_ref = Tensor::empty({B * T}, DType::F64),
           rstd_ref = Tensor::empty({B * T}, DType::F64);
    cpu_->layernorm_forward(out_ref, mean_ref, rstd_ref, as_f64(x), as_f64(w), with_bias ? as_f64(b) : Tensor(), 1e-5);
    expect_close(out, out_ref, tol, "layernorm_forward out" + tag);
    expect_close(mean, mean_ref, 1e-5, "layernorm_forward mean" + tag);
    expect_close(rstd, rstd_ref, 1e-5, "layernorm_forward rstd" + tag);

    // Gradients accumulate into non-zero starting values.
    const Tensor dx0 = random_host({B, T, C}, dt), dw0 = random_host({C}, dt), db0 = random_host({C}, dt);
    Tensor dx = on_gpu(dx0), dw = on_gpu(dw0), db = with_bias ? on_gpu(db0) : Tensor();
    gpu_->layernorm_backward(dx, dw, db, on_gpu(dout), on_gpu(x), on_gpu(w), mean, rstd);
    Tensor dx_ref = as_f64(dx0), dw_ref = as_f64(dw0), db_ref = with_bias ? as_f64(db0) : Tensor();
    cpu_->layernorm_backward(dx_ref, dw_ref, db_ref, as_f64(dout), as_f64(x), as_f64(w), mean_ref, rstd_ref);
    expect_close(dx, dx_ref, 2 * tol, "layernorm_backward dx" + tag);
    expect_close(dw, dw_ref, 2 * tol, "layernorm_backward dw" + tag);
    if (with_bias) expect_close(db, db_ref, 2 * tol, "layernorm_backward db" + tag);

    Tensor dx2 = on_gpu(dx0), dw2 = on_gpu(dw0), db2 = with_bias ? on_gpu(db0) : Tensor();
    gpu_->layernorm_backward(dx2, dw2, db2, on_gpu(dout), on_gpu(x), on_gpu(w), mean, rstd);
    expect_bitwise_equal(dw, dw2, "layernorm_backward dw" + tag);
    expect_bitwise_equal(dx, dx2, "layernorm_backward dx" + tag);
  }
}

TEST_P(CudaLayersTest, LayerNormManyRowsWideRow) {
  // More rows than the backward's grid has warps, and a row wider than one warp pass many times over.
  const DType dt = GetParam();
  const int64_t N = 3001, C = 1029;
  const Tensor x = random_host({N, C}, dt), w = random_host({C}, dt), b = random_host({C}, dt),
               dout = random_host({N, C}, dt);
  Tensor out = poisoned({N, C}, dt), mean = poisoned({N}, DType::F32), rstd = poisoned({N}, DType::F32);
  gpu_->layernorm_forward(out, mean, rstd, on_gpu(x), on_gpu(w), on_gpu(b), 1e-5);
  Tensor out_ref = Tensor::empty({N, C}, DType::F64), mean_ref = Tensor::empty({N}, DType::F64),
         rstd_ref = Tensor::empty({N}, DType::F64);
  cpu_->layernorm_forward(out_ref, mean_ref, rstd_ref, as_f64(x), as_f64(w), as_f64(b), 1e-5);
  expect_close(out, out_ref, tolerance(dt), "layernorm_forward wide");
  Tensor dx = Tensor::zeros({N, C}, dt, Device::cuda(0)), dw = Tensor::zeros({C}, dt, Device::cuda(0)),
         db = Tensor::zeros({C}, dt, Device::cuda(0));
  gpu_->layernorm_backward(dx, dw, db, on_gpu(dout), on_gpu(x), on_gpu(w), mean, rstd);
  Tensor dx_ref = Tensor::zeros({N, C}, DType::F64), dw_ref = Tensor::zeros({C}, DType::F64),
         db_ref = Tensor::zeros({C}, DType::F64);
  cpu_->layernorm_backward(dx_ref, dw_ref, db_ref, as_f64(dout), as_f64(x), as_f64(w), mean_ref, rstd_ref);
  expect_close(dx, dx_ref, 2 * tolerance(dt), "layernorm_backward dx wide");
  expect_close(dw, dw_ref, 2 * tolerance(dt), "layernorm_backward dw wide");
  expect_close(db, db_ref, 2 * tolerance(dt), "layernorm_backward db wide");
}

TEST_P(CudaLayersTest, LayerNormBackwardVectorizedRows) {
  // Rows that the vectorized backward takes (C % 8 == 0, C <= 1024, aligned), C = 776 with a ragged last chunk
  // per lane; then the same rows with a misaligned w (the general kernel) for comparison.
  const DType dt = GetParam();
  const int64_t N = 3001;
  for (const int64_t C : {768, 1024, 776}) {
    for (const bool misaligned_w : {false, true}) {
      const std::string tag = " C=" + std::to_string(C) + (misaligned_w ? " (misaligned w)" : "");
      const Tensor x = random_host({N, C}, dt, -2.f, 3.f), dout = random_host({N, C}, dt);
      const Tensor w_arena = random_host({C + 1}, dt, 0.5f, 1.5f);
      const int64_t w_offset = misaligned_w ? 1 : 0;
      const Tensor w_host = w_arena.slice_flat(w_offset, {C}), w = on_gpu(w_arena).slice_flat(w_offset, {C});
      Tensor out = poisoned({N, C}, dt), mean = poisoned({N}, DType::F32), rstd = poisoned({N}, DType::F32);
      gpu_->layernorm_forward(out, mean, rstd, on_gpu(x), w, Tensor(), 1e-5);
      Tensor out_ref = Tensor::empty({N, C}, DType::F64), mean_ref = Tensor::empty({N}, DType::F64),
             rstd_ref = Tensor::empty({N}, DType::F64);
      cpu_->layernorm_forward(out_ref, mean_ref, rstd_ref, as_f64(x), as_f64(w_host), Tensor(), 1e-5);

      // Gradients accumulate into non-zero starting values; two runs give the same bits.
      const Tensor dx0 = random_host({N, C}, dt), dw0 = random_host({C}, dt), db0 = random_host({C}, dt);
      Tensor dx = on_gpu(dx0), dw = on_gpu(dw0), db = on_gpu(db0);
      gpu_->layernorm_backward(dx, dw, db, on_gpu(dout), on_gpu(x), w, mean, rstd);
      Tensor dx_ref = as_f64(dx0), dw_ref = as_f64(dw0), db_ref = as_f64(db0);
      cpu_->layernorm_backward(dx_ref, dw_ref, db_ref, as_f64(dout), as_f64(x), as_f64(w_host), mean_ref, rstd_ref);
      expect_close(dx, dx_ref, 2 * tolerance(dt), "layernorm_backward dx" + tag);
      expect_close(dw, dw_ref, 2 * tolerance(dt), "layernorm_backward dw" + tag);
      expect_close(db, db_ref, 2 * tolerance(dt), "layernorm_backward db" + tag);

      Tensor dx2 = on_gpu(dx0), dw2 = on_gpu(dw0), db2 = on_gpu(db0);
      gpu_->layernorm_backward(dx2, dw2, db2, on_gpu(dout), on_gpu(x), w, mean, rstd);
      expect_bitwise_equal(dx, dx2, "layernorm_backward dx" + tag);
      expect_bitwise_equal(dw, dw2, "layernorm_backward dw" + tag);
      expect_bitwise_equal(db, db2, "layernorm_backward db" + tag);
    }
  }
}

TEST_P(CudaLayersTest, LayerNormForwardVectorizedRows) {
  // Rows that the vectorised forward takes (C % 8 == 0, C <= 1024, aligned; C = 776 with a ragged last chunk
  // per lane, C = 8 with idle lanes), with and without bias, inputs centred on 0 and on 50 (a one-pass variance
  // would lose it to cancellation); then rows that take the general kernel (misaligned w) and a row of two warps
  // (C = 1032; cuda_layernorm_widths_test.cc covers the wide rows).
  const DType dt = GetParam();
  const double tol = tolerance(dt);
  const int64_t N = 3001;  // not a multiple of the rows per block
  struct Case {
    int64_t C;
    bool misaligned_w;
  };
  for (const Case c : {Case{768, false}, Case{1024, false}, Case{776, false}, Case{8, false}, Case{768, true},
                       Case{1032, false}}) {
    for (const float centre : {0.f, 50.f}) {
      for (const bool with_bias : {true, false}) {
        const int64_t C = c.C;
        const std::string tag = " C=" + std::to_string(C) + (c.misaligned_w ? " (misaligned w)" : "") +
                                " centre " + std::to_string(static_cast<int>(centre)) +
                                (with_bias ? " (bias)" : " (no bias)");
        const Tensor x = random_host({N, C}, dt, centre - 2.f, centre + 3.f), b = random_host({C}, dt);
        const Tensor w_arena = random_host({C + 1}, dt, 0.5f, 1.5f);
        const int64_t w_offset = c.misaligned_w ? 1 : 0;
        const Tensor w_host = w_arena.slice_flat(w_offset, {C}), w = on_gpu(w_arena).slice_flat(w_offset, {C});
        Tensor out = poisoned({N, C}, dt), mean = poisoned({N}, DType::F32), rstd = poisoned({N}, DType::F32);
        gpu_->layernorm_forward(out, mean, rstd, on_gpu(x), w, with_bias ? on_gpu(b) : Tensor(), 1e-5);
        Tensor out_ref = Tensor::empty({N, C}, DType::F64), mean_ref = Tensor::empty({N}, DType::F64),
               rstd_ref = Tensor::empty({N}, DType::F64);
        cpu_->layernorm_forward(out_ref, mean_ref, rstd_ref, as_f64(x), as_f64(w_host),
                                with_bias ? as_f64(b) : Tensor(), 1e-5);
        // Centred on 50, the f32 mean's rounding error (relative to 50, not to the spread of x) shows in
        // x - mean: f32 outputs are held to 1e-4 there; 16-bit outputs round coarser than that anyway.
        const double out_tol = dt == DType::F32 && centre != 0.f ? 1e-4 : tol;
        expect_close(out, out_ref, out_tol, "layernorm_forward out" + tag);
        expect_close(mean, mean_ref, 1e-5, "layernorm_forward mean" + tag);
        expect_close(rstd, rstd_ref, 1e-5, "layernorm_forward rstd" + tag);
      }
    }
  }
}

TEST_P(CudaLayersTest, MatmulForwardBackward) {
  const DType dt = GetParam();
  const double tol = tolerance(dt);
  for (const auto& [N, I, O] : {std::tuple<int64_t, int64_t, int64_t>{7, 33, 65}, {64, 128, 96}, {1, 5, 3}}) {
    const std::string dims = " N=" + std::to_string(N) + " I=" + std::to_string(I) + " O=" + std::to_string(O);
    const Tensor x = random_host({N, I}, dt), w = random_host({O, I}, dt), dout = random_host({N, O}, dt);
    // The bias lives at an odd offset of an arena, as parameters do.
    const Tensor arena = random_host({O + 3}, dt);
    const Tensor bias_host = arena.slice_flat(3, {O});
    const Tensor bias = on_gpu(arena).slice_flat(3, {O});
    for (bool with_bias : {true, false}) {
      const std::string tag = dims + (with_bias ? " (bias)" : " (no bias)");
      Tensor out = poisoned({N, O}, dt);
      gpu_->matmul_forward(out, on_gpu(x), on_gpu(w), with_bias ? bias : Tensor());
      Tensor ref = Tensor::empty({N, O}, DType::F64);
      cpu_->matmul_forward(ref, as_f64(x), as_f64(w), with_bias ? as_f64(bias_host) : Tensor());
      expect_close(out, ref, tol, "matmul_forward" + tag);

      const Tensor dw0 = random_host({O, I}, dt), db0 = random_host({O}, dt);
      Tensor dx = poisoned({N, I}, dt), dw = on_gpu(dw0);
      Tensor dbias_arena = on_gpu(Tensor::zeros({O + 1}, dt));
      Tensor dbias = with_bias ? dbias_arena.slice_flat(1, {O}) : Tensor();
      if (with_bias) dbias.copy_from(on_gpu(db0));
      gpu_->matmul_backward(dx, dw, dbias, on_gpu(dout), on_gpu(x), on_gpu(w));
      Tensor dx_ref = Tensor::empty({N, I}, DType::F64), dw_ref = as_f64(dw0);
      Tensor db_ref = with_bias ? as_f64(db0) : Tensor();
      cpu_->matmul_backward(dx_ref, dw_ref, db_ref, as_f64(dout), as_f64(x), as_f64(w));
      expect_close(dx, dx_ref, tol, "matmul_backward dx" + tag);
      expect_close(dw, dw_ref, tol, "matmul_backward dw" + tag);
      if (with_bias) expect_close(dbias, db_ref, tol, "matmul_backward dbias" + tag);

      Tensor no_dx, dw_only = on_gpu(dw0);
      gpu_->matmul_backward(no_dx, dw_only, dbias, on_gpu(dout), on_gpu(x), on_gpu(w));
      expect_close(dw_only, dw_ref, tol, "matmul_backward without dx" + tag);

      // dx alone (tensor parallelism's first half): dw and dbias untouched.
      Tensor no_dw, no_db, dx_only = poisoned({N, I}, dt);
      gpu_->matmul_backward(dx_only, no_dw, no_db, on_gpu(dout), on_gpu(x), on_gpu(w));
      expect_close(dx_only, dx_ref, tol, "matmul_backward dx only" + tag);
      Tensor some_db = on_gpu(Tensor::zeros({O}, dt));
      EXPECT_THROW(gpu_->matmul_backward(dx_only, no_dw, some_db, on_gpu(dout), on_gpu(x), on_gpu(w)), Error)
          << "a bias gradient without dw";
    }
  }
}

TEST_P(CudaLayersTest, AttentionForwardBackward) {
  const DType dt = GetParam();
  // Attention goes through two rounded intermediates (P and dS in the activation dtype).
  const double tol = dt == DType::F32 ? 1e-5 : 3 * tolerance(dt);
  for (bool causal : {true, false}) {
    AttentionShape s;
    s.batch = 2;
    s.seq = 13;
    s.heads = 3;
    s.qk_dim = 8;
    s.v_dim = 5;
    s.causal = causal;
    s.scale = 1.0 / std::sqrt(8.0);
    const std::string tag = causal ? " (causal)" : " (full)";
    const Tensor qkv = random_host({s.batch, s.seq, s.qkv_width()}, dt, -2.f, 2.f);
    const Tensor dout = random_host({s.batch, s.seq, s.out_width()}, dt);
    Tensor out = poisoned({s.batch, s.seq, s.out_width()}, dt);
    Tensor saved = poisoned(gpu_->attention_saved_shape(s), gpu_->attention_saved_dtype());
    gpu_->attention_forward(out, saved, on_gpu(qkv), s);
    Tensor out_ref = Tensor::empty({s.batch, s.seq, s.out_width()}, DType::F64);
    Tensor saved_ref = Tensor::empty({s.batch, s.heads, s.seq, s.seq}, DType::F64);
    cpu_->attention_forward(out_ref, saved_ref, as_f64(qkv), s);
    expect_close(out, out_ref, tol, "attention_forward out" + tag);
    expect_close(saved, saved_ref, dt == DType::F32 ? 1e-5 : 1e-2, "attention_forward probabilities" + tag);

    Tensor dqkv = poisoned({s.batch, s.seq, s.qkv_width()}, dt);
    gpu_->attention_backward(dqkv, on_gpu(dout), on_gpu(qkv), out, saved, s);
    Tensor dqkv_ref = Tensor::empty({s.batch, s.seq, s.qkv_width()}, DType::F64);
    cpu_->attention_backward(dqkv_ref, as_f64(dout), as_f64(qkv), out_ref, saved_ref, s);
    expect_close(dqkv, dqkv_ref, tol, "attention_backward dqkv" + tag);
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, CudaLayersTest, ::testing::Values(DType::F32, DType::BF16, DType::F16),
                         dtype_param_name);

}  // namespace
}  // namespace loom::testing_cuda
