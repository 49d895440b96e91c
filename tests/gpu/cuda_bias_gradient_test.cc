// Every linear layer's bias gradient on the GPU (matmul_backward: dbias += Σ_n dout) against the float64 CPU twin
// (cpu_matmul.cc's column sums), through both Backend::set_bias_gradient paths: ColumnSums (the column-sum kernel
// of cuda_column_sums.cu) and GemmEpilogue (cuBLASLt's BGRADB epilogue plus an accumulate, or the column sums
// where cuBLASLt refuses it). Shapes are ragged: rows N 1 … 200000, widths O 1 … 70001 (not multiples of 8 take
// the one-element kernel, as does a dout one element past a 16-byte boundary; O > 65535 crosses the grid's y
// limit). dbias starts non-zero (gradients accumulate over micro-steps) at an odd offset inside a NaN-poisoned
// buffer, so a write outside it or a skipped element shows; a second run must give the same bits.
#include <string>

#include "tests/gpu/cuda_backend_test_util.h"

namespace loom::testing_cuda {
namespace {

constexpr int64_t kInputs = 8;  // I: the weight-gradient GEMM beside the bias gradient stays small

class CudaBiasGradientTest : public CudaBackendTest, public ::testing::WithParamInterface<DType> {
 protected:
  // matmul_backward without dx for dout [N, O] placed `dout_offset` elements past a 16-byte boundary: dw and
  // dbias against the CPU twin for both bias-gradient paths, the guard around dbias, and run-to-run bits.
  void check(int64_t N, int64_t O, int64_t dout_offset) {
    const DType dt = GetParam();
    const double tol = tolerance(dt);
    const std::string shape = " (N " + std::to_string(N) + ", O " + std::to_string(O) + ", dout offset " +
                              std::to_string(dout_offset) + ")";
    const Tensor x = random_host({N, kInputs}, dt), w = random_host({O, kInputs}, dt);
    const Tensor dout = random_host({N, O}, dt);
    const Tensor dw0 = random_host({O, kInputs}, dt), db0 = random_host({O}, dt);
    Tensor dout_gpu = poisoned({N * O + dout_offset}, dt).slice_flat(dout_offset, {N, O});
    dout_gpu.copy_from(dout);
    const Tensor x_gpu = on_gpu(x), w_gpu = on_gpu(w);

    Tensor no_dx, dw_ref = as_f64(dw0), db_ref = as_f64(db0);
    cpu_->matmul_backward(no_dx, dw_ref, db_ref, as_f64(dout), as_f64(x), as_f64(w));

    for (BiasGradient choice : {BiasGradient::ColumnSums, BiasGradient::GemmEpilogue}) {
      const std::string tag =
          (choice == BiasGradient::ColumnSums ? " column sums" : " GEMM epilogue") + shape + " " + dtype_name(dt);
      gpu_->set_bias_gradient(choice);
      Tensor dw = on_gpu(dw0);
      GuardedView dbias = guarded_copy(db0, 1);  // dbias needs no alignment: one element past 16 bytes
      gpu_->matmul_backward(no_dx, dw, dbias.view, dout_gpu, x_gpu, w_gpu);
      // The column sums round once (f32 partials added into dbias). The epilogue path rounds twice, BGRADB's
      // sum into a 16-bit scratch and then the accumulate: in f16 at N 16384, O 3072 it measured just past the
      // one-rounding bound (0.140 against 0.139, H100, 2026-12-07), so it gets twice that bound.
      const double dbias_tol = choice == BiasGradient::ColumnSums ? tol : 2 * tol;
      expect_close(dbias.view, db_ref, dbias_tol, "dbias" + tag);
      expect_guard_untouched(dbias, "dbias" + tag);
      expect_close(dw, dw_ref, tol, "dw" + tag);

      Tensor dw_again = on_gpu(dw0);
      GuardedView dbias_again = guarded_copy(db0, 1);
      gpu_->matmul_backward(no_dx, dw_again, dbias_again.view, dout_gpu, x_gpu, w_gpu);
      expect_bitwise_equal(dbias_again.view, dbias.view, "dbias" + tag);
    }
  }
};

// The grid of ragged shapes in the 16-bit dtypes of training (f32's 4-element packs: the test below).
class CudaBiasGradient16BitTest : public CudaBiasGradientTest {};

TEST_P(CudaBiasGradient16BitTest, MatchesTheCpuTwinAtRaggedShapes) {
  for (int64_t N : {1, 7, 1000, 16384})
    for (int64_t O : {1, 7, 8, 768, 1030, 3072, 4100}) check(N, O, 0);
}

TEST_P(CudaBiasGradientTest, MisalignedDoutWideRowsAndManyRows) {
  check(7, 768, 1);     // rows not 16-byte aligned: the one-element kernel at a width that would take packs
  check(1000, 3072, 1);
  check(5, 70000, 0);   // more than 65535 columns, in packs
  check(3, 70001, 0);   // and one element per thread
  check(200000, 8, 0);  // many rows, one pack per row
}

INSTANTIATE_TEST_SUITE_P(Dtypes, CudaBiasGradient16BitTest, ::testing::Values(DType::BF16, DType::F16),
                         dtype_param_name);
INSTANTIATE_TEST_SUITE_P(Dtypes, CudaBiasGradientTest, ::testing::Values(DType::F32, DType::BF16, DType::F16),
                         dtype_param_name);

}  // namespace
}  // namespace loom::testing_cuda
