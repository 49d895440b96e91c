// CudaBackend: construction, synchronisation, and validation + dispatch of the ops whose kernels live in
// cuda_elementwise.cu, cuda_embedding.cu, cuda_layernorm.cu, cuda_loss.cu and cuda_optimizer.cu.
// Matmul and attention are in cuda_matmul.cu and cuda_attention.cu.
#include "kernels/cuda/cuda_backend.cuh"

#include <cmath>

#include "kernels/cuda/cuda_op_check.cuh"
#include "kernels/cuda/cuda_ops.cuh"

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
  cudaStreamDestroy(stream_);
}

void CudaBackend::activate() const { LOOM_CUDA_CALL(cudaSetDevice(device_)); }

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

void CudaBackend::synchronize() {
  activate();
  LOOM_CUDA_CALL(cudaMemcpyAsync(error_flag_host_, error_flag_, sizeof(int), cudaMemcpyDeviceToHost, stream_));
  LOOM_CUDA_CALL(cudaStreamSynchronize(stream_));
  check_error_flag();
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
  OpCheck{"zero", device()}.on_device("x", x);
  activate();
  LOOM_CUDA_CALL(cudaMemsetAsync(x.raw(), 0, x.nbytes(), stream_));
}

void CudaBackend::add(Tensor& out, const Tensor& a, const Tensor& b) {
  const OpCheck check{"add", device()};
  check.floating("a", a);
  check.like("b", b, "a", a);
  check.like("out", out, "a", a);
  check.same_shape("b", b, "a", a);
  check.same_shape("out", out, "a", a);
  activate();
  dispatch_float(a.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cuda::add(ptr<T>(out), ptr<T>(a), ptr<T>(b), a.numel(), stream_);
  });
}

void CudaBackend::accumulate(Tensor& dst, const Tensor& src) {
  const OpCheck check{"accumulate", device()};
  check.floating("dst", dst);
  check.like("src", src, "dst", dst);
  check.same_shape("src", src, "dst", dst);
  activate();
  dispatch_float(dst.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cuda::accumulate(ptr<T>(dst), ptr<T>(src), dst.numel(), stream_);
  });
}

void CudaBackend::scale(Tensor& x, double s) {
  OpCheck{"scale", device()}.floating("x", x);
  activate();
  dispatch_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cuda::scale(ptr<T>(x), static_cast<float>(s), x.numel(), stream_);
  });
}

void CudaBackend::convert(Tensor& dst, const Tensor& src) {
  const OpCheck check{"convert", device()};
  check.floating("dst", dst);
  check.floating("src", src);
  check.require(dst.numel() == src.numel(), "dst ", dst.str(), " and src ", src.str(), " differ in size");
  activate();
  cuda::convert(dst.raw(), elem_of(dst.dtype()), src.raw(), elem_of(src.dtype()), src.numel(), stream_);
}

// ---- embeddings ----

void CudaBackend::embedding_forward(Tensor& out, const Tensor& ids, const Tensor& table) {
  const OpCheck check{"embedding_forward", device()};
  check.ints("ids", ids);
  check.floating("table", table);
  check.require(table.ndim() == 2, "table ", table.str(), " must be [V, C]");
  check.like("out", out, "table", table);
  const int64_t N = ids.numel(), V = table.dim(0), C = table.dim(1);
  check.rows("out", out, N, C);
  activate();
  dispatch_float(table.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cuda::embedding_forward(ptr<T>(out), ptr<int32_t>(ids), ptr<T>(table), N, V, C, error_flag_, stream_);
  });
}

void CudaBackend::embedding_backward(Tensor& dtable, const Tensor& dout, const Tensor& ids) {
  const OpCheck check{"embedding_backward", device()};
  check.ints("ids", ids);
  check.floating("dtable", dtable);
  check.require(dtable.ndim() == 2, "dtable ", dtable.str(), " must be [V, C]");
  check.like("dout", dout, "dtable", dtable);
  const int64_t N = ids.numel(), V = dtable.dim(0), C = dtable.dim(1);
  check.rows("dout", dout, N, C);
  activate();
  dispatch_float(dtable.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cuda::embedding_backward(ptr<T>(dtable), ptr<T>(dout), ptr<int32_t>(ids), N, V, C, error_flag_, stream_);
  });
}

void CudaBackend::add_position_forward(Tensor& x, const Tensor& pos) {
  const OpCheck check{"add_position_forward", device()};
  check.floating("x", x);
  check.like("pos", pos, "x", x);
  check.require(x.ndim() == 3, "x ", x.str(), " must be [B, T, C]");
  check.require(pos.ndim() == 2 && pos.dim(0) >= x.dim(1) && pos.dim(1) == x.dim(2), "pos ", pos.str(),
                " must be [P >= T, C] for x ", x.str());
  activate();
  dispatch_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cuda::add_position_forward(ptr<T>(x), ptr<T>(pos), x.dim(0), x.dim(1), x.dim(2), stream_);
  });
}

void CudaBackend::copy_tokens(Tensor& dst, int64_t dst_start, const Tensor& src, int64_t src_start, int64_t count,
                              bool accumulate) {
  const OpCheck check{"copy_tokens", device()};
  check.floating("src", src);
  check.like("dst", dst, "src", src);
  check.require(dst.ndim() == 3 && src.ndim() == 3 && dst.dim(0) == src.dim(0) && dst.dim(2) == src.dim(2), "dst ",
                dst.str(), " and src ", src.str(), " must be [B, T, C] with equal B and C");
  check.require(count >= 0 && dst_start >= 0 && src_start >= 0 && dst_start + count <= dst.dim(1) &&
                    src_start + count <= src.dim(1),
                "token range: ", count, " tokens from ", src_start, " of ", src.str(), " to ", dst_start, " of ",
                dst.str());
  activate();
  dispatch_float(src.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cuda::copy_tokens(ptr<T>(dst), dst.dim(1), dst_start, ptr<T>(src), src.dim(1), src_start, src.dim(0), count,
                      src.dim(2), accumulate, stream_);
  });
}

void CudaBackend::add_position_backward(Tensor& dpos, const Tensor& dx) {
  const OpCheck check{"add_position_backward", device()};
  check.floating("dx", dx);
  check.like("dpos", dpos, "dx", dx);
  check.require(dx.ndim() == 3, "dx ", dx.str(), " must be [B, T, C]");
  check.require(dpos.ndim() == 2 && dpos.dim(0) >= dx.dim(1) && dpos.dim(1) == dx.dim(2), "dpos ", dpos.str(),
                " must be [P >= T, C] for dx ", dx.str());
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
  const OpCheck check{"layernorm_forward", device()};
  check.floating("x", x);
  check.require(x.ndim() >= 1 && x.dim(-1) > 0, "x ", x.str(), " must have a non-empty last dimension");
  const int64_t C = x.dim(-1), N = x.numel() / C;
  check.like("out", out, "x", x);
  check.same_shape("out", out, "x", x);
  check.like("w", w, "x", x);
  check.shape("w", w, {C});
  if (b.defined()) {
    check.like("b", b, "x", x);
    check.shape("b", b, {C});
  }
  check.f32("mean", mean);
  check.f32("rstd", rstd);
  check.require(mean.numel() == N && rstd.numel() == N, "mean ", mean.str(), " and rstd ", rstd.str(),
                " must hold ", N, " rows of x ", x.str());
  check.require(eps >= 0, "eps ", eps, " is negative");
  check.require(channels >= 0 && channels <= C, "channels ", channels, " must be in [1, ", C, "] (0: all)");
  activate();
  dispatch_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cuda::layernorm_forward(ptr<T>(out), ptr<float>(mean), ptr<float>(rstd), ptr<T>(x), ptr<T>(w), ptr<T>(b), N,
                            C, static_cast<float>(eps), channels == 0 ? C : channels, stream_);
  });
}

void CudaBackend::layernorm_backward(Tensor& dx, Tensor& dw, Tensor& db, const Tensor& dout, const Tensor& x,
                                     const Tensor& w, const Tensor& mean, const Tensor& rstd, int64_t channels) {
  const OpCheck check{"layernorm_backward", device()};
  check.floating("x", x);
  check.require(x.ndim() >= 1 && x.dim(-1) > 0, "x ", x.str(), " must have a non-empty last dimension");
  const int64_t C = x.dim(-1), N = x.numel() / C;
  check.like("dx", dx, "x", x);
  check.same_shape("dx", dx, "x", x);
  check.like("dout", dout, "x", x);
  check.same_shape("dout", dout, "x", x);
  check.like("w", w, "x", x);
  check.shape("w", w, {C});
  check.like("dw", dw, "x", x);
  check.shape("dw", dw, {C});
  if (db.defined()) {
    check.like("db", db, "x", x);
    check.shape("db", db, {C});
  }
  check.f32("mean", mean);
  check.f32("rstd", rstd);
  check.require(mean.numel() == N && rstd.numel() == N, "mean ", mean.str(), " and rstd ", rstd.str(),
                " must hold ", N, " rows of x ", x.str());
  check.require(channels >= 0 && channels <= C, "channels ", channels, " must be in [1, ", C, "] (0: all)");
  activate();
  dispatch_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cuda::layernorm_backward(ptr<T>(dx), ptr<T>(dw), ptr<T>(db), ptr<T>(dout), ptr<T>(x), ptr<T>(w),
                             ptr<float>(mean), ptr<float>(rstd), N, C, channels == 0 ? C : channels, stream_);
  });
}

// ---- activations ----

void CudaBackend::gelu_forward(Tensor& out, const Tensor& x, GeluKind kind) {
  const OpCheck check{"gelu_forward", device()};
  check.floating("x", x);
  check.like("out", out, "x", x);
  check.same_shape("out", out, "x", x);
  activate();
  dispatch_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cuda::gelu_forward(ptr<T>(out), ptr<T>(x), x.numel(), kind == GeluKind::Tanh, stream_);
  });
}

void CudaBackend::gelu_backward(Tensor& dx, const Tensor& dout, const Tensor& x, GeluKind kind) {
  const OpCheck check{"gelu_backward", device()};
  check.floating("x", x);
  check.like("dx", dx, "x", x);
  check.like("dout", dout, "x", x);
  check.same_shape("dx", dx, "x", x);
  check.same_shape("dout", dout, "x", x);
  activate();
  dispatch_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cuda::gelu_backward(ptr<T>(dx), ptr<T>(dout), ptr<T>(x), x.numel(), kind == GeluKind::Tanh, stream_);
  });
}

// ---- loss ----

void CudaBackend::cross_entropy(Tensor& losses, Tensor& dlogits, const Tensor& logits, const Tensor& targets,
                                int64_t vocab, double dloss, double label_smoothing) {
  const OpCheck check{"cross_entropy", device()};
  check.floating("logits", logits);
  check.require(logits.ndim() >= 1 && logits.dim(-1) > 0, "logits ", logits.str(), " must be [N, Vp]");
  const int64_t Vp = logits.dim(-1), N = logits.numel() / Vp;
  check.require(vocab >= 1 && vocab <= Vp, "vocab ", vocab, " must be in [1, ", Vp, "] for logits ",
                logits.str());
  check.require(label_smoothing >= 0 && label_smoothing <= 1, "label smoothing ", label_smoothing,
                " must be in [0, 1]");
  check.ints("targets", targets);
  check.require(targets.numel() == N, "targets ", targets.str(), " must hold one target per row of logits ",
                logits.str());
  check.f32("losses", losses);
  check.require(losses.numel() == N, "losses ", losses.str(), " must hold one loss per row of logits ",
                logits.str());
  if (dlogits.defined()) {
    check.like("dlogits", dlogits, "logits", logits);
    check.same_shape("dlogits", dlogits, "logits", logits);
  }
  activate();
  dispatch_float(logits.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cuda::cross_entropy(ptr<float>(losses), ptr<T>(dlogits), ptr<T>(logits), ptr<int32_t>(targets), N, Vp, vocab,
                        static_cast<float>(dloss), static_cast<float>(label_smoothing), error_flag_, stream_);
  });
}

namespace {
// The arguments the vocabulary-parallel pair shares: logits_local [N, Vr], the first global column, the
// vocabulary and one target per row (its range is checked on the GPU, like cross_entropy's). Returns N.
int64_t check_vocab_split(const OpCheck& check, const Tensor& logits_local, const Tensor& targets,
                          int64_t vocab_begin, int64_t vocab) {
  check.floating("logits_local", logits_local);
  check.require(logits_local.ndim() >= 1 && logits_local.dim(-1) > 0, "logits_local ", logits_local.str(),
                " must be [N, Vr]");
  const int64_t N = logits_local.numel() / logits_local.dim(-1);
  check.require(vocab_begin >= 0, "vocab_begin ", vocab_begin, " must not be negative");
  check.require(vocab >= 1, "vocab ", vocab, " must be positive");
  check.ints("targets", targets);
  check.require(targets.numel() == N, "targets ", targets.str(), " must hold one target per row of logits_local ",
                logits_local.str());
  return N;
}
}  // namespace

void CudaBackend::cross_entropy_partials(Tensor& partials, const Tensor& logits_local, const Tensor& targets,
                                         int64_t vocab_begin, int64_t vocab) {
  const OpCheck check{"cross_entropy_partials", device()};
  const int64_t N = check_vocab_split(check, logits_local, targets, vocab_begin, vocab);
  check.f32("partials", partials);
  check.rows("partials", partials, N, 4);
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
  const OpCheck check{"cross_entropy_from_partials", device()};
  const int64_t N = check_vocab_split(check, logits_local, targets, vocab_begin, vocab);
  check.require(label_smoothing >= 0 && label_smoothing <= 1, "label smoothing ", label_smoothing,
                " must be in [0, 1]");
  check.f32("gathered", gathered);
  check.require(gathered.ndim() == 3 && gathered.dim(0) >= 1 && gathered.dim(1) == N && gathered.dim(2) == 4,
                "gathered ", gathered.str(), " must be [R, ", N, ", 4] (every rank's partials)");
  check.f32("losses", losses);
  check.require(losses.numel() == N, "losses ", losses.str(), " must hold one loss per row of logits_local ",
                logits_local.str());
  if (dlogits_local.defined()) {
    check.like("dlogits_local", dlogits_local, "logits_local", logits_local);
    check.same_shape("dlogits_local", dlogits_local, "logits_local", logits_local);
  }
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

double CudaBackend::sum_squares(const std::vector<Tensor>& tensors) {
  const OpCheck check{"sum_squares", device()};
  std::vector<SumSquaresInput> inputs;
  for (size_t i = 0; i < tensors.size(); ++i) {
    check.floating(("tensor " + std::to_string(i)).c_str(), tensors[i]);
    inputs.push_back({tensors[i].raw(), elem_of(tensors[i].dtype()), tensors[i].numel()});
  }
  activate();
  return cuda::sum_squares(inputs, stream_);
}

void CudaBackend::adamw_update(Tensor& param, Tensor& m, Tensor& v, const Tensor& grad, Tensor& compute_copy,
                               const AdamWHyper& hp, double weight_decay) {
  const OpCheck check{"adamw_update", device()};
  check.f32("param", param);
  check.f32("m", m);
  check.f32("v", v);
  check.floating("grad", grad);
  for (const auto& [name, t] : {std::pair<const char*, const Tensor*>{"m", &m}, {"v", &v}, {"grad", &grad}})
    check.require(t->numel() == param.numel(), name, " ", t->str(), " must match param ", param.str());
  if (compute_copy.defined()) {
    check.floating("compute_copy", compute_copy);
    check.require(compute_copy.numel() == param.numel(), "compute_copy ", compute_copy.str(),
                  " must match param ", param.str());
  }
  check.require(hp.step >= 1, "step ", hp.step, " must be >= 1 (bias correction is 1-based)");
  const AdamWArgs args{static_cast<float>(hp.lr),
                       static_cast<float>(hp.beta1),
                       static_cast<float>(hp.beta2),
                       static_cast<float>(hp.eps),
                       static_cast<float>(hp.grad_scale),
                       static_cast<float>(weight_decay),
                       static_cast<float>(1.0 - std::pow(hp.beta1, static_cast<double>(hp.step))),
                       static_cast<float>(1.0 - std::pow(hp.beta2, static_cast<double>(hp.step)))};
  activate();
  const bool copy = compute_copy.defined();
  cuda::adamw(ptr<float>(param), ptr<float>(m), ptr<float>(v), grad.raw(), elem_of(grad.dtype()),
              copy ? compute_copy.raw() : nullptr, copy ? elem_of(compute_copy.dtype()) : Elem::F32, param.numel(),
              args, stream_);
}

}  // namespace loom::cuda
