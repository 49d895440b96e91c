// cuBLASLt GEMMs for the CUDA backend (internal to kernels/cuda).
//
// Everything is column-major in cuBLAS terms: D[m, n] = alpha · op(A)[m, k] · op(B)[k, n] + beta · D, with
// C = D (accumulation reads the output). A row-major [R, K] matrix is a column-major [K, R] one, which is how
// CudaBackend maps its row-major tensors. Accumulation and scaling are always f32 (CUBLAS_COMPUTE_32F, no
// TF32), so f32 inputs give f32-accurate results.
#pragma once
#include <cublasLt.h>

#include <array>
#include <cstdint>
#include <map>
#include <optional>

#include "kernels/cuda/cuda_common.cuh"

namespace loom::cuda {

struct GemmOperand {
  const void* ptr = nullptr;
  int64_t ld = 0;
  int64_t batch_stride = 0;  // elements between consecutive batch entries
  bool transposed = false;   // op(X) = Xᵀ
};

struct GemmSpec {
  int64_t m = 0, n = 0, k = 0;
  int batch = 1;
  GemmOperand a, b;
  void* d = nullptr;
  int64_t ldd = 0, d_batch_stride = 0;
  cudaDataType_t ab_type = CUDA_R_32F, d_type = CUDA_R_32F;
  float alpha = 1, beta = 0;
  // Optional epilogue: CUBLASLT_EPILOGUE_BIAS adds bias[m] (of d_type) to every column of D;
  // CUBLASLT_EPILOGUE_BGRADB writes bias[n] = Σ over k of op(B) (the bias gradient, of d_type).
  // The GELU epilogues (cuBLASLt's GELU is the tanh approximation) use an auxiliary [m, n] matrix of d_type with
  // leading dimension aux_ld (a multiple of 8, at least m): CUBLASLT_EPILOGUE_GELU_AUX(_BIAS) writes the GELU
  // input (op(A)·op(B) [+ bias]) to aux and gelu of it to D; CUBLASLT_EPILOGUE_DGELU reads the GELU input from
  // aux and writes D = op(A)·op(B) ∘ gelu'(aux).
  cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  void* bias = nullptr;
  void* aux = nullptr;
  int64_t aux_ld = 0;
};

// One cuBLASLt handle and workspace; not thread-safe (owned by one CudaBackend).
class Gemm {
 public:
  Gemm();
  ~Gemm();
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;

  // Runs the GEMM on `stream`. Returns false (having queued nothing) only when the spec has an epilogue
  // and cuBLASLt offers no algorithm for it or refuses it at launch (not supported / invalid value), so the
  // caller can fall back; throws on any other failure.
  bool run(const GemmSpec& spec, cudaStream_t stream);

 private:
  // The heuristic's best algorithm for these descriptors, or nullopt when it has none.
  std::optional<cublasLtMatmulAlgo_t> find_algo(cublasLtMatmulDesc_t op, cublasLtMatrixLayout_t a,
                                                cublasLtMatrixLayout_t b, cublasLtMatrixLayout_t d,
                                                uint32_t align_a, uint32_t align_b, uint32_t align_d,
                                                bool with_epilogue);
  // Everything the heuristic's choice depends on: sizes, layouts, types, epilogue and pointer alignments.
  using AlgoKey = std::array<int64_t, 21>;
  // Heuristic answers by key (nullopt: no algorithm with that epilogue); the query costs more than the
  // launch, and a training step repeats the same few shapes.
  std::map<AlgoKey, std::optional<cublasLtMatmulAlgo_t>> algos_;
  cublasLtHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
};

cudaDataType_t cuda_data_type(DType t);

}  // namespace loom::cuda
