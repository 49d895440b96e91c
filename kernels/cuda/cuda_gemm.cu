// cuBLASLt GEMM wrapper: builds the descriptors for one GemmSpec shape once, asks the heuristic for algorithms
// (telling it the real pointer alignments, since views into arenas need not be 16-byte aligned), optionally
// times its candidates (GemmAlgorithm::Timed), and runs the chosen one.
#include "kernels/cuda/cuda_gemm.cuh"

#include <algorithm>
#include <limits>

#include "core/allocator.h"
#include "kernels/cuda/cuda_ops.cuh"

namespace loom::cuda {

namespace {

constexpr size_t kWorkspaceBytes = size_t{32} << 20;  // what cuBLASLt recommends for Hopper
// Timed choice: candidates asked of the heuristic, runs timed per candidate (after one untimed warm-up; the
// fastest run counts, as the one least disturbed by the host), and how much faster than the heuristic's first
// answer a candidate must be to replace it (below that, timing noise would flip choices from run to run).
constexpr int kTimedCandidates = 8;
constexpr int kTimedRuns = 5;
constexpr float kReplaceMargin = 0.02f;

CublasLtLayout make_layout(cudaDataType_t type, int64_t rows, int64_t cols, int64_t ld, int batch, int64_t stride) {
  cublasLtMatrixLayout_t raw = nullptr;
  LOOM_CUBLAS_CALL(
      cublasLtMatrixLayoutCreate(&raw, type, static_cast<uint64_t>(rows), static_cast<uint64_t>(cols), ld));
  CublasLtLayout layout(raw);
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

// cuBLASLt checks its arguments before it launches anything: these statuses mean "this algorithm or epilogue
// is not available here", with nothing queued.
bool refused(cublasStatus_t status) {
  return status == CUBLAS_STATUS_NOT_SUPPORTED || status == CUBLAS_STATUS_INVALID_VALUE;
}

bool capturing(cudaStream_t stream) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  LOOM_CUDA_CALL(cudaStreamIsCapturing(stream, &status));
  return status != cudaStreamCaptureStatusNone;
}

// Bytes from D's first element to one past its last (batch entries and leading dimension included).
size_t d_span_bytes(const GemmSpec& s) {
  const size_t elem = s.d_type == CUDA_R_32F ? 4 : 2;
  return elem * static_cast<size_t>((s.batch - 1) * s.d_batch_stride + (s.n - 1) * s.ldd + s.m);
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
  events_.resize(kTimedRuns + 1);
  for (cudaEvent_t& e : events_) LOOM_CUDA_CALL(cudaEventCreate(&e));
}

Gemm::~Gemm() {
  // Errors ignored: destructors must not throw.
  for (cudaEvent_t e : events_) cudaEventDestroy(e);
  plans_.clear();  // descriptors before the handle
  cublasLtDestroy(handle_);
  cudaFree(workspace_);
}

GemmAlgorithmStats Gemm::stats() const {
  GemmAlgorithmStats s = stats_;
  s.shapes = std::count_if(plans_.begin(), plans_.end(), [](const auto& p) { return p.second.has_algo; });
  return s;
}

Gemm::Plan Gemm::make_plan(const GemmSpec& s) const {
  Plan plan;
  cublasLtMatmulDesc_t raw_op = nullptr;
  LOOM_CUBLAS_CALL(cublasLtMatmulDescCreate(&raw_op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  plan.op.reset(raw_op);
  const cublasOperation_t ta = s.a.transposed ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t tb = s.b.transposed ? CUBLAS_OP_T : CUBLAS_OP_N;
  LOOM_CUBLAS_CALL(cublasLtMatmulDescSetAttribute(raw_op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
  LOOM_CUBLAS_CALL(cublasLtMatmulDescSetAttribute(raw_op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
  if (s.epilogue != CUBLASLT_EPILOGUE_DEFAULT) {
    LOOM_CUBLAS_CALL(cublasLtMatmulDescSetAttribute(raw_op, CUBLASLT_MATMUL_DESC_EPILOGUE, &s.epilogue,
                                                    sizeof(s.epilogue)));
    if (s.aux)
      LOOM_CUBLAS_CALL(cublasLtMatmulDescSetAttribute(raw_op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &s.aux_ld,
                                                      sizeof(s.aux_ld)));
  }
  plan.a = make_layout(s.ab_type, s.a.transposed ? s.k : s.m, s.a.transposed ? s.m : s.k, s.a.ld, s.batch,
                       s.a.batch_stride);
  plan.b = make_layout(s.ab_type, s.b.transposed ? s.n : s.k, s.b.transposed ? s.k : s.n, s.b.ld, s.batch,
                       s.b.batch_stride);
  plan.d = make_layout(s.d_type, s.m, s.n, s.ldd, s.batch, s.d_batch_stride);
  return plan;
}

std::vector<GemmAlgo> Gemm::candidates(const Plan& plan, const GemmSpec& s, int count) {
  cublasLtMatmulPreference_t raw_pref = nullptr;
  LOOM_CUBLAS_CALL(cublasLtMatmulPreferenceCreate(&raw_pref));
  const CublasLtPreference pref(raw_pref);
  const uint32_t align_a = alignment_of(s.a.ptr), align_b = alignment_of(s.b.ptr), align_d = alignment_of(s.d);
  const uint32_t align_c = s.c ? alignment_of(s.c) : align_d;
  LOOM_CUBLAS_CALL(cublasLtMatmulPreferenceSetAttribute(raw_pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                        &workspace_bytes_, sizeof(workspace_bytes_)));
  LOOM_CUBLAS_CALL(cublasLtMatmulPreferenceSetAttribute(raw_pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                                                        &align_a, sizeof(align_a)));
  LOOM_CUBLAS_CALL(cublasLtMatmulPreferenceSetAttribute(raw_pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                                                        &align_b, sizeof(align_b)));
  LOOM_CUBLAS_CALL(cublasLtMatmulPreferenceSetAttribute(raw_pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                                                        &align_c, sizeof(align_c)));
  LOOM_CUBLAS_CALL(cublasLtMatmulPreferenceSetAttribute(raw_pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                                                        &align_d, sizeof(align_d)));
  cublasLtMatmulHeuristicResult_t results[kTimedCandidates];
  count = std::min(count, kTimedCandidates);
  int found = 0;
  const cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(handle_, plan.op.get(), plan.a.get(), plan.b.get(),
                                                               plan.d.get(), plan.d.get(), raw_pref, count,
                                                               results, &found);
  // With an epilogue any refusal means "not fused here" (the caller falls back); without one, no result is
  // reported by run() and an error status is a real failure.
  if (status != CUBLAS_STATUS_SUCCESS && s.epilogue == CUBLASLT_EPILOGUE_DEFAULT)
    throw_cublas_error(status, "cublasLtMatmulAlgoGetHeuristic", __FILE__, __LINE__);
  std::vector<GemmAlgo> algos;
  if (status != CUBLAS_STATUS_SUCCESS) return algos;
  for (int i = 0; i < found; ++i)
    if (results[i].state == CUBLAS_STATUS_SUCCESS) algos.push_back({results[i].algo});
  return algos;
}

cublasStatus_t Gemm::launch(const Plan& plan, const GemmSpec& s, const GemmAlgo& algo, const void* c,
                            void* d, cudaStream_t stream) {
  return cublasLtMatmul(handle_, plan.op.get(), &s.alpha, s.a.ptr, plan.a.get(), s.b.ptr, plan.b.get(), &s.beta, c,
                        plan.d.get(), d, plan.d.get(), &algo.algo, workspace_, workspace_bytes_, stream);
}

size_t Gemm::time_candidates(const Plan& plan, const GemmSpec& s, const std::vector<GemmAlgo>& algos,
                             cudaStream_t stream) {
  // beta == 0: the candidates write D (and the epilogue's aux or bias output), which the chosen algorithm's run
  // overwrites in full afterwards. beta != 0: D is read, so they accumulate into a copy of it placed at the
  // same address offset modulo 256 (alignment can change the kernel's speed); without the memory for the copy
  // the heuristic's first answer stays.
  std::unique_ptr<ScratchBuffer> copy;
  void* d = s.d;
  const void* c = s.c;  // a separate C is only read: the candidates write D, as with beta == 0
  if (s.beta != 0 && !s.c) {
    int device = 0;
    LOOM_CUDA_CALL(cudaGetDevice(&device));
    const size_t span = d_span_bytes(s), offset = reinterpret_cast<uintptr_t>(s.d) % 256;
    const int64_t available = allocator_for(Device::cuda(device)).available_bytes();
    if (available >= 0 && span + offset > static_cast<size_t>(available)) return 0;  // not counted as timed
    copy = std::make_unique<ScratchBuffer>(span + offset);
    d = copy->as<char>() + offset;
    c = d;
    LOOM_CUDA_CALL(cudaMemcpyAsync(d, s.d, span, cudaMemcpyDeviceToDevice, stream));
  }
  std::vector<float> best_ms(algos.size(), std::numeric_limits<float>::infinity());
  for (size_t i = 0; i < algos.size(); ++i) {
    const cublasStatus_t warm_up = launch(plan, s, algos[i], c ? c : d, d, stream);
    if (refused(warm_up)) continue;
    if (warm_up != CUBLAS_STATUS_SUCCESS) throw_cublas_error(warm_up, "cublasLtMatmul", __FILE__, __LINE__);
    LOOM_CUDA_CALL(cudaEventRecord(events_[0], stream));
    for (int run = 1; run <= kTimedRuns; ++run) {
      LOOM_CUBLAS_CALL(launch(plan, s, algos[i], c ? c : d, d, stream));
      LOOM_CUDA_CALL(cudaEventRecord(events_[static_cast<size_t>(run)], stream));
    }
    LOOM_CUDA_CALL(cudaEventSynchronize(events_.back()));
    for (int run = 1; run <= kTimedRuns; ++run) {
      float ms = 0;
      LOOM_CUDA_CALL(cudaEventElapsedTime(&ms, events_[static_cast<size_t>(run - 1)], events_[static_cast<size_t>(run)]));
      best_ms[i] = std::min(best_ms[i], ms);
    }
  }
  const size_t fastest = static_cast<size_t>(std::min_element(best_ms.begin(), best_ms.end()) - best_ms.begin());
  const size_t pick = best_ms[fastest] < best_ms[0] * (1 - kReplaceMargin) ? fastest : 0;
  ++stats_.timed;
  stats_.replaced += pick != 0;
  return pick;
}

bool Gemm::run(const GemmSpec& s, cudaStream_t stream) {
  const bool with_epilogue = s.epilogue != CUBLASLT_EPILOGUE_DEFAULT;
  const ShapeKey key{s.m, s.n, s.k, s.batch, s.a.ld, s.b.ld, s.ldd, s.a.batch_stride, s.b.batch_stride,
                     s.d_batch_stride, s.a.transposed, s.b.transposed, s.ab_type, s.d_type, s.epilogue,
                     alignment_of(s.a.ptr), alignment_of(s.b.ptr), alignment_of(s.d),
                     s.bias ? alignment_of(s.bias) : 0, s.aux ? alignment_of(s.aux) : 0, s.aux_ld, s.beta != 0, s.c ? alignment_of(s.c) : 0};
  auto found = plans_.find(key);
  const bool first_call = found == plans_.end();
  if (first_call) found = plans_.emplace(key, make_plan(s)).first;
  Plan& plan = found->second;
  // The pointer attributes change from call to call (the descriptor's values are read when a GEMM is queued).
  if (with_epilogue && s.bias)
    LOOM_CUBLAS_CALL(cublasLtMatmulDescSetAttribute(plan.op.get(), CUBLASLT_MATMUL_DESC_BIAS_POINTER, &s.bias,
                                                    sizeof(s.bias)));
  if (with_epilogue && s.aux)
    LOOM_CUBLAS_CALL(cublasLtMatmulDescSetAttribute(plan.op.get(), CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &s.aux,
                                                    sizeof(s.aux)));
  if (first_call) {
    const bool timed = choice_ == GemmAlgorithm::Timed && !capturing(stream);
    const std::vector<GemmAlgo> algos = candidates(plan, s, timed ? kTimedCandidates : 1);
    if (!algos.empty()) {
      plan.algo = algos[timed && algos.size() > 1 ? time_candidates(plan, s, algos, stream) : 0];
      plan.has_algo = true;
    }
  }
  if (!plan.has_algo) {
    if (with_epilogue) return false;
    fail("cuBLASLt: no algorithm for GEMM m=", s.m, " n=", s.n, " k=", s.k, " batch=", s.batch, " lda=", s.a.ld,
         " ldb=", s.b.ld, " ldd=", s.ldd);
  }
  const cublasStatus_t status = launch(plan, s, plan.algo, s.c ? s.c : s.d, s.d, stream);
  // An epilogue refused at launch has queued nothing: remember the refusal and let the caller fall back.
  if (with_epilogue && refused(status)) {
    plan.has_algo = false;
    return false;
  }
  if (status != CUBLAS_STATUS_SUCCESS) throw_cublas_error(status, "cublasLtMatmul", __FILE__, __LINE__);
  return true;
}

}  // namespace loom::cuda
