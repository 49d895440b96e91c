// CudaBackend: construction, synchronisation, and validation + dispatch of the ops whose kernels live in
// cuda_elementwise.cu, cuda_embedding.cu, cuda_layernorm.cu, cuda_loss.cu and cuda_optimizer.cu.
// Matmul and attention are in cuda_matmul.cu and cuda_attention.cu.
#include "kernels/cuda/cuda_backend.cuh"

#include <cmath>

#include "kernels/cuda/cuda_op_check.cuh"
#include "kernels/cuda/cuda_ops.cuh"
#include "kernels/cuda/flash_attention.h"

namespace loom::cuda {

CudaBackend::CudaBackend(int device) : device_(device) {
  LOOM_CUDA_CALL(cudaSetDevice(device_));
  install_cuda_memory_hooks(device_);
  cudaDeviceProp prop{};
  LOOM_CUDA_CALL(cudaGetDeviceProperties(&prop, device_));
  name_ = "cuda:" + std::to_string(device_) + " " + prop.name;
  // A blocking stream: cudaMemcpy on the legacy default stream (Tensor copies) waits for its work.
  LOOM_CUDA_CALL(cudaStreamCreate(&stream_));
  LOOM_CUDA_CALL(cudaMalloc(&error_flag_, sizeof(int)));
  LOOM_CUDA_CALL(cudaMemset(error_flag_, 0, sizeof(int)));
  LOOM_CUDA_CALL(cudaMallocHost(&error_flag_host_, sizeof(int)));
  gemm_ = std::make_unique<Gemm>();
}

CudaBackend::~CudaBackend() {
  // Errors are ignored here: a destructor must not throw, and the process may be tearing CUDA down.
  gemm_.reset();
  cudaStreamSynchronize(stream_);
  cudaFree(error_flag_);
  cudaFreeHost(error_flag_host_);
  if (read_buffer_) cudaFreeHost(read_buffer_);
  cudaStreamDestroy(stream_);
}

void CudaBackend::activate() const { LOOM_CUDA_CALL(cudaSetDevice(device_)); }

void CudaBackend::set_deterministic(bool deterministic) {
  deterministic_ = deterministic;
  set_gemm_algorithm(gemm_algorithm_);
}

void CudaBackend::set_gemm_algorithm(GemmAlgorithm algorithm) {
  gemm_algorithm_ = algorithm;
  gemm_->set_algorithm_choice(deterministic_ ? GemmAlgorithm::Heuristic : algorithm);
}

const BackendDtypes& CudaBackend::dtypes() {
  static const BackendDtypes kDtypes{{DType::F32, DType::BF16, DType::F16},
                                     {DType::F32, DType::BF16, DType::F16},
                                     {DType::F32},
                                     {DType::F32},
                                     /*stats_follow_input=*/false,
                                     /*ids_checked_on_host=*/false,
                                     /*f32_residual=*/true};
  return kDtypes;
}

namespace {

// A timing event; record() on another stream of the same device (a communicator's) is allowed.
class EventMarker final : public WorkMarker {
 public:
  EventMarker(int device, cudaStream_t own_stream) : device_(device), own_stream_(own_stream) {
    LOOM_CUDA_CALL(cudaSetDevice(device_));
    LOOM_CUDA_CALL(cudaEventCreate(&event_));
  }
  ~EventMarker() override { cudaEventDestroy(event_); }  // best effort: destructors must not throw
  EventMarker(const EventMarker&) = delete;
  EventMarker& operator=(const EventMarker&) = delete;

  void record(void* stream) override {
    LOOM_CUDA_CALL(cudaEventRecord(event_, stream ? static_cast<cudaStream_t>(stream) : own_stream_));
    recorded_ = true;
  }
  double ms_since(const WorkMarker& earlier) const override {
    const auto* e = dynamic_cast<const EventMarker*>(&earlier);
    LOOM_CHECK(e && e->recorded_ && recorded_ && e->device_ == device_,
               "WorkMarker::ms_since: both markers must be recorded CUDA events of one device");
    LOOM_CUDA_CALL(cudaEventSynchronize(event_));
    LOOM_CUDA_CALL(cudaEventSynchronize(e->event_));
    float ms = 0;
    LOOM_CUDA_CALL(cudaEventElapsedTime(&ms, e->event_, event_));
    return ms;
  }

 private:
  int device_;
  cudaStream_t own_stream_;
  cudaEvent_t event_ = nullptr;
  bool recorded_ = false;
};

}  // namespace

std::unique_ptr<WorkMarker> CudaBackend::make_marker() const { return std::make_unique<EventMarker>(device_, stream_); }

std::vector<SlowPath> CudaBackend::slow_paths(const BlockKernelShape& b, DType dtype) const {
  std::vector<SlowPath> slow;
  const AttentionShape attention{b.batch, b.seq, b.heads, b.qk_dim, b.v_dim, b.causal,
                                 1.0 / std::sqrt(static_cast<double>(b.qk_dim))};
  if (const std::string why = flash_attention_check(attention, dtype); !why.empty())
    slow.push_back({"attention", "materialised [B, H, T, T] scores instead of flash attention: " + why});
  if (const std::string why = layernorm_vectorised_rule(b.d_model, dtype); !why.empty())
    slow.push_back({"layernorm", "the general kernels: " + why});
  if (const std::string why = gelu_epilogue_rule(b.gelu, dtype, b.mlp_dim); !why.empty())
    slow.push_back({"mlp", why});
  return slow;
}

void CudaBackend::synchronize() {
  activate();
  LOOM_CUDA_CALL(cudaMemcpyAsync(error_flag_host_, error_flag_, sizeof(int), cudaMemcpyDeviceToHost, stream_));
  wait_for_host_read(stream_);
  check_error_flag();
}

std::vector<double> CudaBackend::synchronize_and_read(const Tensor& x) {
  const OpCheck check = op_check("synchronize_and_read");
  check.on_device("x", x);
  check.require(x.dtype() == DType::F64, "x ", x.str(), " must be f64");
  activate();
  if (read_capacity_ < x.numel()) {
    if (read_buffer_) LOOM_CUDA_CALL(cudaFreeHost(read_buffer_));
    read_buffer_ = nullptr;
    LOOM_CUDA_CALL(cudaMallocHost(&read_buffer_, static_cast<size_t>(x.numel()) * sizeof(double)));
    read_capacity_ = x.numel();
  }
  // Pinned memory: the copy is queued like a kernel, and synchronize() waits once for it and the flag's copy.
  LOOM_CUDA_CALL(cudaMemcpyAsync(read_buffer_, x.raw(), x.nbytes(), cudaMemcpyDeviceToHost, stream_));
  synchronize();
  return std::vector<double>(read_buffer_, read_buffer_ + x.numel());
}

void CudaBackend::check_error_flag() {
  const int bits = *error_flag_host_;
  if (bits == 0) return;
  LOOM_CUDA_CALL(cudaMemset(error_flag_, 0, sizeof(int)));
  *error_flag_host_ = 0;
  std::string what;
  if (bits & kBadEmbeddingId) what += " embedding_forward/backward got an id outside [0, V) (row skipped);";
  if (bits & kBadTarget)
    what += " cross_entropy (or its vocabulary-parallel pair) got a target outside [-1, vocab) (row treated as "
            "ignored);";
  fail(name_, ": invalid input detected on the GPU since the last synchronize():", what);
}

// ---- memory and elementwise ----

void CudaBackend::zero(Tensor& x) {
  op_check("zero").on_device("x", x);
  activate();
  LOOM_CUDA_CALL(cudaMemsetAsync(x.raw(), 0, x.nbytes(), stream_));
}

void CudaBackend::add(Tensor& out, const Tensor& a, const Tensor& b) {
  op_contract::add(op_check("add"), out, a, b);
  activate();
  dispatch_float(b.dtype(), [&](auto tag) {
    using T = decltype(tag);
    dispatch_residual<T>(a.dtype(), [&](auto rtag) {
      using R = decltype(rtag);
      cuda::add(ptr<R>(out), ptr<R>(a), ptr<T>(b), a.numel(), stream_);
    });
  });
}

void CudaBackend::accumulate(Tensor& dst, const Tensor& src) {
  op_contract::elementwise(op_check("accumulate"), {{"dst", &dst}, {"src", &src}});
  activate();
  dispatch_float(dst.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cuda::accumulate(ptr<T>(dst), ptr<T>(src), dst.numel(), stream_);
  });
}

void CudaBackend::scale(Tensor& x, double s) {
  op_contract::elementwise(op_check("scale"), {{"x", &x}});
  activate();
  dispatch_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cuda::scale(ptr<T>(x), static_cast<float>(s), x.numel(), stream_);
  });
}

void CudaBackend::convert(Tensor& dst, const Tensor& src) {
  op_contract::convert(op_check("convert"), dst, src);
  activate();
  cuda::convert(dst.raw(), elem_of(dst.dtype()), src.raw(), elem_of(src.dtype()), src.numel(), stream_);
}

// ---- embeddings ----

void CudaBackend::embedding_forward(Tensor& out, const Tensor& ids, const Tensor& table) {
  const int64_t N = op_contract::embedding(op_check("embedding_forward"), "out", out, ids, "table", table);
  const int64_t V = table.dim(0), C = table.dim(1);
  activate();
  dispatch_float(table.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cuda::embedding_forward(ptr<T>(out), ptr<int32_t>(ids), ptr<T>(table), N, V, C, error_flag_, stream_);
  });
}

void CudaBackend::embedding_backward(Tensor& dtable, const Tensor& dout, const Tensor& ids) {
  const int64_t N = op_contract::embedding(op_check("embedding_backward"), "dout", dout, ids, "dtable", dtable);
  const int64_t V = dtable.dim(0), C = dtable.dim(1);
  activate();
  dispatch_float(dtable.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cuda::embedding_backward(ptr<T>(dtable), ptr<T>(dout), ptr<int32_t>(ids), N, V, C, error_flag_, stream_);
  });
}

void CudaBackend::add_position_forward(Tensor& x, const Tensor& pos) {
  op_contract::add_position(op_check("add_position_forward"), "x", x, "pos", pos);
  activate();
  dispatch_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cuda::add_position_forward(ptr<T>(x), ptr<T>(pos), x.dim(0), x.dim(1), x.dim(2), stream_);
  });
}

void CudaBackend::copy_tokens(Tensor& dst, int64_t dst_start, const Tensor& src, int64_t src_start, int64_t count,
                              bool accumulate) {
  op_contract::copy_tokens(op_check("copy_tokens"), dst, dst_start, src, src_start, count);
  activate();
  dispatch_float(src.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cuda::copy_tokens(ptr<T>(dst), dst.dim(1), dst_start, ptr<T>(src), src.dim(1), src_start, src.dim(0), count,
                      src.dim(2), accumulate, stream_);
  });
}

void CudaBackend::add_position_backward(Tensor& dpos, const Tensor& dx) {
  op_contract::add_position(op_check("add_position_backward"), "dx", dx, "dpos", dpos);
  activate();
  // dpos[t, c] += Σ_b dx[b, t, c]: a column sum over B rows of width T·C (the first T rows of dpos).
  dispatch_float(dx.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cuda::add_column_sums(ptr<T>(dpos), ptr<T>(dx), dx.dim(0), dx.dim(1) * dx.dim(2), stream_);
  });
}

// ---- LayerNorm ----

void CudaBackend::layernorm_forward(Tensor& out, Tensor& mean, Tensor& rstd, const Tensor& x, const Tensor& w,
                                    const Tensor& b, double eps, int64_t channels) {
  const auto dims =
      op_contract::layernorm_forward(op_check("layernorm_forward"), out, mean, rstd, x, w, b, eps, channels);
  const int64_t N = dims.N, C = dims.C, K = dims.K;
  activate();
  dispatch_float(out.dtype(), [&](auto tag) {
    using T = decltype(tag);
    dispatch_residual<T>(x.dtype(), [&](auto rtag) {
      using R = decltype(rtag);
      cuda::layernorm_forward(ptr<T>(out), ptr<float>(mean), ptr<float>(rstd), ptr<R>(x), ptr<T>(w), ptr<T>(b), N,
                              C, static_cast<float>(eps), K, stream_);
    });
  });
}

void CudaBackend::layernorm_backward(Tensor& dx, Tensor& dw, Tensor& db, const Tensor& dout, const Tensor& x,
                                     const Tensor& w, const Tensor& mean, const Tensor& rstd, int64_t channels) {
  const auto dims = op_contract::layernorm_backward(op_check("layernorm_backward"), dx, dw, db, dout, x, w,
                                                         mean, rstd, channels);
  const int64_t N = dims.N, C = dims.C, K = dims.K;
  activate();
  dispatch_float(dout.dtype(), [&](auto tag) {
    using T = decltype(tag);
    dispatch_residual<T>(x.dtype(), [&](auto rtag) {
      using R = decltype(rtag);
      cuda::layernorm_backward(ptr<R>(dx), ptr<T>(dw), ptr<T>(db), ptr<T>(dout), ptr<R>(x), ptr<T>(w),
                               ptr<float>(mean), ptr<float>(rstd), N, C, K, stream_);
    });
  });
}

// ---- activations ----

void CudaBackend::gelu_forward(Tensor& out, const Tensor& x, GeluKind kind) {
  op_contract::elementwise(op_check("gelu_forward"), {{"x", &x}, {"out", &out}});
  activate();
  dispatch_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cuda::gelu_forward(ptr<T>(out), ptr<T>(x), x.numel(), kind == GeluKind::Tanh, stream_);
  });
}

void CudaBackend::gelu_backward(Tensor& dx, const Tensor& dout, const Tensor& x, GeluKind kind) {
  op_contract::elementwise(op_check("gelu_backward"), {{"x", &x}, {"dx", &dx}, {"dout", &dout}});
  activate();
  dispatch_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cuda::gelu_backward(ptr<T>(dx), ptr<T>(dout), ptr<T>(x), x.numel(), kind == GeluKind::Tanh, stream_);
  });
}

// ---- loss ----

void CudaBackend::cross_entropy(Tensor& losses, Tensor& dlogits, const Tensor& logits, const Tensor& targets,
                                int64_t vocab, double dloss, double label_smoothing) {
  const int64_t N = op_contract::cross_entropy(op_check("cross_entropy"), losses, dlogits, logits, targets, vocab,
                                               label_smoothing);
  const int64_t Vp = logits.dim(-1);
  activate();
  dispatch_float(logits.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cuda::cross_entropy(ptr<float>(losses), ptr<T>(dlogits), ptr<T>(logits), ptr<int32_t>(targets), N, Vp, vocab,
                        static_cast<float>(dloss), static_cast<float>(label_smoothing), error_flag_, stream_);
  });
}

void CudaBackend::cross_entropy_partials(Tensor& partials, const Tensor& logits_local, const Tensor& targets,
                                         int64_t vocab_begin, int64_t vocab) {
  const int64_t N = op_contract::cross_entropy_partials(op_check("cross_entropy_partials"), partials, logits_local,
                                                        targets, vocab_begin, vocab);
  activate();
  dispatch_float(logits_local.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cuda::cross_entropy_partials(ptr<float>(partials), ptr<T>(logits_local), ptr<int32_t>(targets), N,
                                 logits_local.dim(-1), vocab_begin, vocab, error_flag_, stream_);
  });
}

void CudaBackend::cross_entropy_from_partials(Tensor& losses, Tensor& dlogits_local, const Tensor& gathered,
                                              const Tensor& logits_local, const Tensor& targets, int64_t vocab_begin,
                                              int64_t vocab, double dloss, double label_smoothing) {
  const int64_t N =
      op_contract::cross_entropy_from_partials(op_check("cross_entropy_from_partials"), losses, dlogits_local,
                                               gathered, logits_local, targets, vocab_begin, vocab, label_smoothing);
  activate();
  dispatch_float(logits_local.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cuda::cross_entropy_from_partials(ptr<float>(losses), ptr<T>(dlogits_local), ptr<float>(gathered),
                                      ptr<T>(logits_local), ptr<int32_t>(targets), static_cast<int>(gathered.dim(0)),
                                      N, logits_local.dim(-1), vocab_begin, vocab, static_cast<float>(dloss),
                                      static_cast<float>(label_smoothing), error_flag_, stream_);
  });
}

// ---- optimizer ----

void CudaBackend::accumulate_sum(Tensor& total, const Tensor& x, double weight, double count) {
  op_contract::accumulate_sum(op_check("accumulate_sum"), total, x, count);
  activate();
  cuda::accumulate_sum(ptr<double>(total), ptr<float>(x), x.numel(), weight, count, stream_);
}

void CudaBackend::accumulate_sum_squares(Tensor& total, const std::vector<Tensor>& tensors) {
  const OpCheck check = op_check("sum_squares");
  op_contract::scalar_total(check, total);
  op_contract::float_list(check, tensors);
  std::vector<SumSquaresInput> inputs;
  for (const Tensor& t : tensors) inputs.push_back({t.raw(), elem_of(t.dtype()), t.numel()});
  activate();
  cuda::accumulate_sum_squares(ptr<double>(total), inputs, stream_);
}

void CudaBackend::adamw_update(Tensor& param, Tensor& m, Tensor& v, const Tensor& grad, Tensor& compute_copy,
                               const AdamWHyper& hp, double weight_decay) {
  op_contract::adamw_update(op_check("adamw_update"), param, m, v, grad, compute_copy, hp);
  const AdamWArgs args{static_cast<float>(hp.lr),
                       static_cast<float>(hp.beta1),
                       static_cast<float>(hp.beta2),
                       static_cast<float>(hp.eps),
                       static_cast<float>(weight_decay),
                       static_cast<float>(1.0 - std::pow(hp.beta1, static_cast<double>(hp.step))),
                       static_cast<float>(1.0 - std::pow(hp.beta2, static_cast<double>(hp.step))),
                       hp.grad_scale,
                       hp.step_stats.defined() ? ptr<double>(hp.step_stats) : nullptr,
                       hp.max_grad_norm};
  activate();
  const bool copy = compute_copy.defined();
  cuda::adamw(ptr<float>(param), ptr<float>(m), ptr<float>(v), grad.raw(), elem_of(grad.dtype()),
              copy ? compute_copy.raw() : nullptr, copy ? elem_of(compute_copy.dtype()) : Elem::F32, param.numel(),
              args, stream_);
}

}  // namespace loom::cuda
