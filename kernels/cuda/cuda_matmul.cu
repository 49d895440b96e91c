// CudaBackend's linear layers through cuBLASLt. Row-major tensors map to column-major cuBLAS matrices as
// follows (weights w are [O, I] row-major = column-major [I, O] with ld I):
//   forward   out[N, O] = x·wᵀ + bias   ⇔  outᶜ[O, N] = (wᶜ)ᵀ·xᶜ,   bias fused as the BIAS epilogue
//   backward  dx[N, I] = dout·w        ⇔  dxᶜ[I, N]  = wᶜ·doutᶜ
//             dw[O, I] += doutᵀ·x      ⇔  dwᶜ[I, O] += xᶜ·(doutᶜ)ᵀ,  dbias = Σ_n dout by the BGRADB epilogue
#include "kernels/cuda/cuda_backend.cuh"
#include "kernels/cuda/cuda_op_check.cuh"
#include "kernels/cuda/cuda_ops.cuh"

namespace loom::cuda {

namespace {

// The epilogues read/write the bias vector with vector loads; a bias at an odd arena offset gets an aligned
// copy (O elements, negligible next to the GEMM).
bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

void CudaBackend::matmul_forward(Tensor& out, const Tensor& x, const Tensor& w, const Tensor& bias) {
  const OpCheck check{"matmul_forward", device()};
  check.floating("x", x);
  check.like("w", w, "x", x);
  check.require(w.ndim() == 2 && x.ndim() >= 1 && x.dim(-1) == w.dim(1), "w ", w.str(),
                " must be [O, I] with I the last dimension of x ", x.str());
  const int64_t O = w.dim(0), I = w.dim(1), N = I ? x.numel() / I : 0;
  check.require(I > 0, "x ", x.str(), " has an empty inner dimension");
  check.like("out", out, "x", x);
  check.rows("out", out, N, O);
  if (bias.defined()) {
    check.like("bias", bias, "x", x);
    check.shape("bias", bias, {O});
  }
  activate();
  if (N == 0 || O == 0) return;
  GemmSpec spec;
  spec.m = O;
  spec.n = N;
  spec.k = I;
  spec.a = {w.raw(), I, 0, true};
  spec.b = {x.raw(), I, 0, false};
  spec.d = out.raw();
  spec.ldd = O;
  spec.ab_type = spec.d_type = cuda_data_type(x.dtype());
  std::unique_ptr<ScratchBuffer> aligned_bias;
  if (bias.defined()) {
    void* b = bias.raw();
    if (!aligned16(b)) {
      aligned_bias = std::make_unique<ScratchBuffer>(bias.nbytes());
      LOOM_CUDA_CALL(cudaMemcpyAsync(aligned_bias->as<void>(), b, bias.nbytes(), cudaMemcpyDeviceToDevice, stream_));
      b = aligned_bias->as<void>();
    }
    spec.epilogue = CUBLASLT_EPILOGUE_BIAS;
    spec.bias = b;
  }
  if (gemm_->run(spec, stream_)) return;
  // No algorithm with the bias epilogue: plain GEMM, then add the bias to every row.
  spec.epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  gemm_->run(spec, stream_);
  dispatch_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cuda::add_position_forward(ptr<T>(out), ptr<T>(bias), N, 1, O, stream_);
  });
}

void CudaBackend::matmul_backward(Tensor& dx, Tensor& dw, Tensor& dbias, const Tensor& dout, const Tensor& x,
                                  const Tensor& w) {
  const OpCheck check{"matmul_backward", device()};
  check.floating("x", x);
  check.like("w", w, "x", x);
  check.require(w.ndim() == 2 && x.ndim() >= 1 && x.dim(-1) == w.dim(1), "w ", w.str(),
                " must be [O, I] with I the last dimension of x ", x.str());
  const int64_t O = w.dim(0), I = w.dim(1), N = I ? x.numel() / I : 0;
  check.require(I > 0, "x ", x.str(), " has an empty inner dimension");
  check.like("dout", dout, "x", x);
  check.rows("dout", dout, N, O);
  check.like("dw", dw, "x", x);
  check.same_shape("dw", dw, "w", w);
  if (dx.defined()) {
    check.like("dx", dx, "x", x);
    check.same_shape("dx", dx, "x", x);
  }
  if (dbias.defined()) {
    check.like("dbias", dbias, "x", x);
    check.shape("dbias", dbias, {O});
  }
  activate();
  if (N == 0 || O == 0) {
    if (dx.defined()) zero(dx);
    return;
  }
  const cudaDataType_t type = cuda_data_type(x.dtype());

  if (dx.defined()) {
    GemmSpec spec;
    spec.m = I;
    spec.n = N;
    spec.k = O;
    spec.a = {w.raw(), I, 0, false};
    spec.b = {dout.raw(), O, 0, false};
    spec.d = dx.raw();
    spec.ldd = I;
    spec.ab_type = spec.d_type = type;
    gemm_->run(spec, stream_);
  }

  GemmSpec spec;
  spec.m = I;
  spec.n = O;
  spec.k = N;
  spec.a = {x.raw(), I, 0, false};
  spec.b = {dout.raw(), O, 0, true};
  spec.d = dw.raw();
  spec.ldd = I;
  spec.ab_type = spec.d_type = type;
  spec.beta = 1;  // dw accumulates
  if (!dbias.defined()) {
    gemm_->run(spec, stream_);
    return;
  }
  // BGRADB writes Σ_n dout into a scratch vector (the epilogue overwrites), which is then added to dbias.
  ScratchBuffer bias_grad(dbias.nbytes());
  spec.epilogue = CUBLASLT_EPILOGUE_BGRADB;
  spec.bias = bias_grad.as<void>();
  const bool fused = gemm_->run(spec, stream_);
  if (!fused) {
    spec.epilogue = CUBLASLT_EPILOGUE_DEFAULT;
    gemm_->run(spec, stream_);
  }
  dispatch_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    if (fused)
      cuda::accumulate(ptr<T>(dbias), bias_grad.as<T>(), O, stream_);
    else
      cuda::add_column_sums(ptr<T>(dbias), ptr<T>(dout), N, O, stream_);
  });
}

}  // namespace loom::cuda
