// cuBLASLt GEMM wrapper: builds the descriptors for one GemmSpec, asks the heuristic for the best algorithm
// (telling it the real pointer alignments, since views into arenas need not be 16-byte aligned) and runs it.
#include "kernels/cuda/cuda_gemm.cuh"

#include <memory>

namespace loom::cuda {

namespace {

constexpr size_t kWorkspaceBytes = size_t{32} << 20;  // what cuBLASLt recommends for Hopper

// Owners for the cuBLASLt descriptors, destroyed on every path (errors included).
struct DescDeleter {
  void operator()(cublasLtMatmulDescOpaque_t* p) const { cublasLtMatmulDescDestroy(p); }
  void operator()(cublasLtMatrixLayoutOpaque_t* p) const { cublasLtMatrixLayoutDestroy(p); }
  void operator()(cublasLtMatmulPreferenceOpaque_t* p) const { cublasLtMatmulPreferenceDestroy(p); }
};
using OpDesc = std::unique_ptr<cublasLtMatmulDescOpaque_t, DescDeleter>;
using Layout = std::unique_ptr<cublasLtMatrixLayoutOpaque_t, DescDeleter>;
using Preference = std::unique_ptr<cublasLtMatmulPreferenceOpaque_t, DescDeleter>;

Layout make_layout(cudaDataType_t type, int64_t rows, int64_t cols, int64_t ld, int batch, int64_t stride) {
  cublasLtMatrixLayout_t raw = nullptr;
  LOOM_CUBLAS_CALL(
      cublasLtMatrixLayoutCreate(&raw, type, static_cast<uint64_t>(rows), static_cast<uint64_t>(cols), ld));
  Layout layout(raw);
  if (batch > 1) {
    const int32_t count = batch;
    LOOM_CUBLAS_CALL(cublasLtMatrixLayoutSetAttribute(raw, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof(count)));
    LOOM_CUBLAS_CALL(cublasLtMatrixLayoutSetAttribute(raw, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride,
                                                      sizeof(stride)));
  }
  return layout;
}

// Largest power of two (at most 256) dividing the address.
uint32_t alignment_of(const void* p) {
  const auto addr = reinterpret_cast<uintptr_t>(p);
  uint32_t a = 256;
  while (a > 1 && addr % a != 0) a /= 2;
  return a;
}

}  // namespace

cudaDataType_t cuda_data_type(DType t) {
  switch (t) {
    case DType::F32: return CUDA_R_32F;
    case DType::BF16: return CUDA_R_16BF;
    case DType::F16: return CUDA_R_16F;
    default: fail("cuBLASLt: dtype ", dtype_name(t), " is not supported (f32, bf16 or f16)");
  }
}

Gemm::Gemm() {
  LOOM_CUBLAS_CALL(cublasLtCreate(&handle_));
  workspace_bytes_ = kWorkspaceBytes;
  LOOM_CUDA_CALL(cudaMalloc(&workspace_, workspace_bytes_));
}

Gemm::~Gemm() {
  cublasLtDestroy(handle_);  // errors ignored: destructors must not throw
  cudaFree(workspace_);
}

std::optional<cublasLtMatmulAlgo_t> Gemm::find_algo(cublasLtMatmulDesc_t op, cublasLtMatrixLayout_t a,
                                                    cublasLtMatrixLayout_t b, cublasLtMatrixLayout_t d,
                                                    uint32_t align_a, uint32_t align_b, uint32_t align_d,
                                                    bool with_epilogue) {
  cublasLtMatmulPreference_t raw_pref = nullptr;
  LOOM_CUBLAS_CALL(cublasLtMatmulPreferenceCreate(&raw_pref));
  Preference pref(raw_pref);
  LOOM_CUBLAS_CALL(cublasLtMatmulPreferenceSetAttribute(raw_pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                        &workspace_bytes_, sizeof(workspace_bytes_)));
  LOOM_CUBLAS_CALL(cublasLtMatmulPreferenceSetAttribute(raw_pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                                                        &align_a, sizeof(align_a)));
  LOOM_CUBLAS_CALL(cublasLtMatmulPreferenceSetAttribute(raw_pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                                                        &align_b, sizeof(align_b)));
  LOOM_CUBLAS_CALL(cublasLtMatmulPreferenceSetAttribute(raw_pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                                                        &align_d, sizeof(align_d)));
  LOOM_CUBLAS_CALL(cublasLtMatmulPreferenceSetAttribute(raw_pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                                                        &align_d, sizeof(align_d)));
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  const cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(handle_, op, a, b, d, d, raw_pref, 1, &result, &found);
  // With an epilogue any refusal means "not fused here" (the caller falls back); without one, no result is
  // reported by run() and an error status is a real failure.
  if (status == CUBLAS_STATUS_SUCCESS && found > 0) return result.algo;
  if (status != CUBLAS_STATUS_SUCCESS && !with_epilogue)
    throw_cublas_error(status, "cublasLtMatmulAlgoGetHeuristic", __FILE__, __LINE__);
  return std::nullopt;
}

bool Gemm::run(const GemmSpec& s, cudaStream_t stream) {
  cublasLtMatmulDesc_t raw_op = nullptr;
  LOOM_CUBLAS_CALL(cublasLtMatmulDescCreate(&raw_op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  OpDesc op(raw_op);
  const cublasOperation_t ta = s.a.transposed ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t tb = s.b.transposed ? CUBLAS_OP_T : CUBLAS_OP_N;
  LOOM_CUBLAS_CALL(cublasLtMatmulDescSetAttribute(raw_op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
  LOOM_CUBLAS_CALL(cublasLtMatmulDescSetAttribute(raw_op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
  if (s.epilogue != CUBLASLT_EPILOGUE_DEFAULT) {
    LOOM_CUBLAS_CALL(cublasLtMatmulDescSetAttribute(raw_op, CUBLASLT_MATMUL_DESC_EPILOGUE, &s.epilogue,
                                                    sizeof(s.epilogue)));
    if (s.bias)
      LOOM_CUBLAS_CALL(cublasLtMatmulDescSetAttribute(raw_op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &s.bias,
                                                      sizeof(s.bias)));
    if (s.aux) {
      LOOM_CUBLAS_CALL(cublasLtMatmulDescSetAttribute(raw_op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &s.aux,
                                                      sizeof(s.aux)));
      LOOM_CUBLAS_CALL(cublasLtMatmulDescSetAttribute(raw_op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &s.aux_ld,
                                                      sizeof(s.aux_ld)));
    }
  }
  const Layout a = make_layout(s.ab_type, s.a.transposed ? s.k : s.m, s.a.transposed ? s.m : s.k, s.a.ld, s.batch,
                               s.a.batch_stride);
  const Layout b = make_layout(s.ab_type, s.b.transposed ? s.n : s.k, s.b.transposed ? s.k : s.n, s.b.ld, s.batch,
                               s.b.batch_stride);
  const Layout d = make_layout(s.d_type, s.m, s.n, s.ldd, s.batch, s.d_batch_stride);

  const uint32_t align_a = alignment_of(s.a.ptr), align_b = alignment_of(s.b.ptr), align_d = alignment_of(s.d);
  const AlgoKey key{s.m, s.n, s.k, s.batch, s.a.ld, s.b.ld, s.ldd, s.a.batch_stride, s.b.batch_stride,
                    s.d_batch_stride, s.a.transposed, s.b.transposed, s.ab_type, s.d_type, s.epilogue,
                    align_a, align_b, align_d, s.bias ? alignment_of(s.bias) : 0,
                    s.aux ? alignment_of(s.aux) : 0, s.aux_ld};
  auto cached = algos_.find(key);
  if (cached == algos_.end()) {
    const bool with_epilogue = s.epilogue != CUBLASLT_EPILOGUE_DEFAULT;
    cached = algos_.emplace(key, find_algo(raw_op, a.get(), b.get(), d.get(), align_a, align_b, align_d, with_epilogue))
                 .first;
  }
  if (!cached->second) {
    if (s.epilogue != CUBLASLT_EPILOGUE_DEFAULT) return false;
    fail("cuBLASLt: no algorithm for GEMM m=", s.m, " n=", s.n, " k=", s.k, " batch=", s.batch, " lda=", s.a.ld,
         " ldb=", s.b.ld, " ldd=", s.ldd);
  }
  const cublasStatus_t status =
      cublasLtMatmul(handle_, raw_op, &s.alpha, s.a.ptr, a.get(), s.b.ptr, b.get(), &s.beta, s.d, d.get(), s.d,
                     d.get(), &*cached->second, workspace_, workspace_bytes_, stream);
  // cuBLASLt checks its arguments before it launches anything, so an epilogue it refuses at this point has
  // queued nothing either: remember the refusal and let the caller fall back.
  if (s.epilogue != CUBLASLT_EPILOGUE_DEFAULT &&
      (status == CUBLAS_STATUS_NOT_SUPPORTED || status == CUBLAS_STATUS_INVALID_VALUE)) {
    algos_.erase(cached);  // (not optional::reset(), which crashes nvcc 13.0's front end here)
    algos_.emplace(key, std::nullopt);
    return false;
  }
  if (status != CUBLAS_STATUS_SUCCESS) throw_cublas_error(status, "cublasLtMatmul", __FILE__, __LINE__);
  return true;
}

}  // namespace loom::cuda
