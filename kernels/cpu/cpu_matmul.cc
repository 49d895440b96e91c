// Linear layers for the CPU backend through OpenBLAS (see cpu_ops.h). Weights are [O, I] as in PyTorch, so
// the forward multiplies by wᵀ (CblasTrans on w) and no transposed copy is ever made.
#include <cblas.h>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/cpu_parallel.h"

namespace loom::cpu {

namespace {
// C[M, N] = alpha·op(A)·op(B) + beta·C, row-major, for float and double.
void gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
          int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
void gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int64_t M, int64_t N, int64_t K, double alpha, const double* A,
          int64_t lda, const double* B, int64_t ldb, double beta, double* C, int64_t ldc) {
  cblas_dgemm(CblasRowMajor, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
}  // namespace

template <typename T>
void matmul_forward(T* out, const T* x, const T* w, const T* bias, int64_t N, int64_t I, int64_t O) {
  if (N == 0 || O == 0) return;
  if (bias) {
    // Seed every row with the bias and let the GEMM add x·wᵀ (beta = 1).
#pragma omp parallel for schedule(static) if (N * O > kParallelMinWork)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t o = 0; o < O; ++o) out[n * O + o] = bias[o];
  }
  gemm(CblasNoTrans, CblasTrans, N, O, I, T(1), x, I, w, I, bias ? T(1) : T(0), out, O);
}

template <typename T>
void matmul_backward(T* dx, T* dw, T* dbias, const T* dout, const T* x, const T* w, int64_t N, int64_t I, int64_t O) {
  if (dx && N > 0 && I > 0) gemm(CblasNoTrans, CblasNoTrans, N, I, O, T(1), dout, O, w, I, T(0), dx, I);
  if (dw && O > 0 && I > 0 && N > 0) gemm(CblasTrans, CblasNoTrans, O, I, N, T(1), dout, O, x, I, T(1), dw, I);
  if (dbias) {
    // Column blocks: each bias element is summed over rows in ascending order by one thread.
#pragma omp parallel for schedule(static) if (N * O > kParallelMinWork)
    for (int64_t o0 = 0; o0 < O; o0 += kColumnBlock) {
      const int64_t o1 = std::min(O, o0 + kColumnBlock);
      for (int64_t n = 0; n < N; ++n)
        for (int64_t o = o0; o < o1; ++o) dbias[o] += dout[n * O + o];
    }
  }
}

#define LOOM_INSTANTIATE(T)                                                                     \
  template void matmul_forward<T>(T*, const T*, const T*, const T*, int64_t, int64_t, int64_t); \
  template void matmul_backward<T>(T*, T*, T*, const T*, const T*, const T*, int64_t, int64_t, int64_t);
LOOM_INSTANTIATE(float)
LOOM_INSTANTIATE(double)
#undef LOOM_INSTANTIATE

}  // namespace loom::cpu
