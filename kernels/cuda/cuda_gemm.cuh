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
#include <memory>
#include <vector>

#include "kernels/backend.h"
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
  // With beta != 0: the C of D = alpha·op(A)·op(B) + beta·C, laid out as D; null means C = D (accumulation).
  // A separate C (a residual added in the GEMM) must not overlap D.
  const void* c = nullptr;
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

// Owners for cuBLASLt descriptors, destroyed on every path (errors included).
struct CublasLtDeleter {
  void operator()(cublasLtMatmulDescOpaque_t* p) const { cublasLtMatmulDescDestroy(p); }
  void operator()(cublasLtMatrixLayoutOpaque_t* p) const { cublasLtMatrixLayoutDestroy(p); }
  void operator()(cublasLtMatmulPreferenceOpaque_t* p) const { cublasLtMatmulPreferenceDestroy(p); }
};
using CublasLtOpDesc = std::unique_ptr<cublasLtMatmulDescOpaque_t, CublasLtDeleter>;
using CublasLtLayout = std::unique_ptr<cublasLtMatrixLayoutOpaque_t, CublasLtDeleter>;
using CublasLtPreference = std::unique_ptr<cublasLtMatmulPreferenceOpaque_t, CublasLtDeleter>;

// A cuBLASLt algorithm under a name: nvcc 13.0's front end crashes on std containers (and std::optional) of
// cuBLASLt's anonymous structs.
struct GemmAlgo {
  cublasLtMatmulAlgo_t algo;
};

// One cuBLASLt handle and workspace, and per GEMM shape its descriptors and chosen algorithm (see
// GemmAlgorithm in kernels/backend.h); not thread-safe (owned by one CudaBackend).
class Gemm {
 public:
  Gemm();
  ~Gemm();
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;

  // Runs the GEMM on `stream`. Returns false (having queued nothing) only when the spec has an epilogue
  // and cuBLASLt offers no algorithm for it or refuses it at launch (not supported / invalid value), so the
  // caller can fall back; throws on any other failure.
  // Under GemmAlgorithm::Timed the first call of a shape also times the heuristic's candidates on `stream`
  // (a host synchronisation) before running the chosen one. What the caller sees is only the chosen
  // algorithm's result: with beta == 0 the candidates write the outputs the final run overwrites in full; with
  // beta != 0 they write a scratch copy of D. No timing while `stream` is being captured into a CUDA graph:
  // the shape keeps the heuristic's first answer.
  bool run(const GemmSpec& spec, cudaStream_t stream);

  // The choice for shapes first seen from now on (initially Heuristic).
  void set_algorithm_choice(GemmAlgorithm choice) { choice_ = choice; }
  // Shapes with an algorithm so far, and the timed choices (GemmAlgorithmStats in kernels/backend.h).
  GemmAlgorithmStats stats() const;

 private:
  // Everything a shape's descriptors and algorithm depend on: sizes, layouts, types, epilogue, pointer
  // alignments and whether D is read (beta != 0).
  using ShapeKey = std::array<int64_t, 23>;
  // One shape's descriptors (the pointer attributes, bias and aux, are set on every call) and its algorithm
  // (has_algo false: none with that epilogue). Built on the shape's first call: descriptor set-up and the heuristic
  // query cost more host time than the launch, and a training step repeats the same few shapes.
  struct Plan {
    CublasLtOpDesc op;
    CublasLtLayout a, b, d;
    GemmAlgo algo{};
    bool has_algo = false;
  };

  Plan make_plan(const GemmSpec& spec) const;
  // Up to `count` heuristic candidates for the plan's descriptors, best first (empty when there is none).
  std::vector<GemmAlgo> candidates(const Plan& plan, const GemmSpec& spec, int count);
  // The index of the candidate to keep: the fastest measured on `stream`, unless it beats candidates[0] by 2 %
  // or less. Candidates cuBLASLt refuses at launch are skipped.
  size_t time_candidates(const Plan& plan, const GemmSpec& spec, const std::vector<GemmAlgo>& candidates,
                         cudaStream_t stream);
  cublasStatus_t launch(const Plan& plan, const GemmSpec& spec, const GemmAlgo& algo, const void* c,
                        void* d, cudaStream_t stream);

  std::map<ShapeKey, Plan> plans_;
  GemmAlgorithm choice_ = GemmAlgorithm::Heuristic;
  GemmAlgorithmStats stats_;
  cublasLtHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
  std::vector<cudaEvent_t> events_;  // timing marks, one more than the timed repetitions
};

cudaDataType_t cuda_data_type(DType t);

}  // namespace loom::cuda
