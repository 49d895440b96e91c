// CudaBackend's linear layers through cuBLASLt. Row-major tensors map to column-major cuBLAS matrices as
// follows (weights w are [O, I] row-major = column-major [I, O] with ld I):
//   forward   out[N, O] = x·wᵀ + bias   ⇔  outᶜ[O, N] = (wᶜ)ᵀ·xᶜ,   bias fused as the BIAS epilogue
//   backward  dx[N, I] = dout·w        ⇔  dxᶜ[I, N]  = wᶜ·doutᶜ
//             dw[O, I] += doutᵀ·x      ⇔  dwᶜ[I, O] += xᶜ·(doutᶜ)ᵀ
//             dbias[O] += Σ_n dout      by our column-sum kernel (cuda_column_sums.cu), or the GEMM's BGRADB
//                                       epilogue under BiasGradient::GemmEpilogue (kernels/backend.h)
// The MLP's GELU rides on the same GEMMs (tanh form, bf16/f16): the forward's GELU_AUX_BIAS epilogue writes
// gelu(pre) to out and pre to the aux matrix; the backward's dx GEMM takes the DGELU epilogue, which multiplies
// by gelu'(pre) read from aux. Each saves one elementwise pass that reads and writes [N, M] activations.
#include "kernels/cuda/cuda_backend.cuh"
#include "kernels/cuda/cuda_op_check.cuh"
#include "kernels/cuda/cuda_ops.cuh"

namespace loom::cuda {

namespace {

// The epilogues read/write the bias vector with vector loads; a bias at an odd arena offset gets an aligned
// copy (O elements, negligible next to the GEMM).
bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// The bias pointer for an epilogue: the tensor itself when 16-byte aligned, else a copy in `copy`.
void* epilogue_bias(const Tensor& bias, std::unique_ptr<ScratchBuffer>& copy, cudaStream_t stream) {
  void* b = bias.raw();
  if (aligned16(b)) return b;
  copy = std::make_unique<ScratchBuffer>(bias.nbytes());
  LOOM_CUDA_CALL(cudaMemcpyAsync(copy->as<void>(), b, bias.nbytes(), cudaMemcpyDeviceToDevice, stream));
  return copy->as<void>();
}

// Whether the cuBLASLt GELU epilogues may replace the elementwise GELU kernels for a [N, width] activation
// `aux` (the GELU input) and output `d`. cuBLASLt's GELU is the tanh form, so the erf form (ViT) never takes
// them. They need an aux leading dimension that is a multiple of 8; the 16-byte alignment of aux and d is
// what llm.c relies on (the heuristic is told d's alignment but not aux's). f32 keeps the elementwise kernels:
// the epilogue's GELU accuracy is not documented, and f32 results are held to f32 accuracy.
bool gelu_epilogue_applies(GeluKind kind, DType dtype, int64_t width, const void* aux, const void* d) {
  return kind == GeluKind::Tanh && gelu_epilogue_rule(kind, dtype, width).empty() && aligned16(aux) && aligned16(d);
}

}  // namespace

std::string gelu_epilogue_rule(GeluKind kind, DType dtype, int64_t width) {
  if (kind != GeluKind::Tanh) return "";  // the erf form has no epilogue: always the separate GELU kernels
  if (dtype != DType::BF16 && dtype != DType::F16)
    return std::string("GELU as separate kernels: the GEMM epilogue takes bf16 or f16, not ") + dtype_name(dtype);
  if (width % 8 != 0)
    return "GELU as separate kernels: the GEMM epilogue needs mlp_dim % 8 == 0, got " + std::to_string(width);
  return "";
}

void CudaBackend::matmul_forward(Tensor& out, const Tensor& x, const Tensor& w, const Tensor& bias) {
  const auto dims = op_contract::matmul_forward(op_check("matmul_forward"), out, x, w, bias);
  linear_forward(out, x, w, bias, nullptr, dims.N, dims.I, dims.O);
}

void CudaBackend::matmul_residual_forward(Tensor& out, const Tensor& x, const Tensor& w, const Tensor& bias,
                                          const Tensor& residual) {
  const auto dims =
      op_contract::matmul_residual_forward(op_check("matmul_residual_forward"), out, x, w, bias, residual);
  linear_forward(out, x, w, bias, residual.raw(), dims.N, dims.I, dims.O);
}

// out = x·wᵀ (+ bias) (+ residual: C of the GEMM with beta 1, when not null).
void CudaBackend::linear_forward(Tensor& out, const Tensor& x, const Tensor& w, const Tensor& bias,
                                 const void* residual, int64_t N, int64_t I, int64_t O) {
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
  if (residual) {
    spec.c = residual;
    spec.beta = 1;
  }
  std::unique_ptr<ScratchBuffer> aligned_bias;
  if (bias.defined()) {
    spec.epilogue = CUBLASLT_EPILOGUE_BIAS;
    spec.bias = epilogue_bias(bias, aligned_bias, stream_);
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
  const auto dims = op_contract::matmul_backward(op_check("matmul_backward"), dx, dw, dbias, dout, x, w);
  const int64_t N = dims.N, I = dims.I, O = dims.O;
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
  if (!dw.defined()) return;

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
  if (dbias.defined() && bias_gradient_ == BiasGradient::GemmEpilogue) {
    // BGRADB writes Σ_n dout into a scratch vector (the epilogue overwrites), which is then added to dbias.
    ScratchBuffer bias_grad(dbias.nbytes());
    spec.epilogue = CUBLASLT_EPILOGUE_BGRADB;
    spec.bias = bias_grad.as<void>();
    if (gemm_->run(spec, stream_)) {
      dispatch_float(x.dtype(), [&](auto tag) {
        using T = decltype(tag);
        cuda::accumulate(ptr<T>(dbias), bias_grad.as<T>(), O, stream_);
      });
      return;
    }
    spec.epilogue = CUBLASLT_EPILOGUE_DEFAULT;  // refused: the column sums below
    spec.bias = nullptr;
  }
  gemm_->run(spec, stream_);
  if (!dbias.defined()) return;
  // After the dw GEMM, the last other reader of dout: what of dout is still in L2 is read from there.
  dispatch_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cuda::add_column_sums(ptr<T>(dbias), ptr<T>(dout), N, O, stream_);
  });
}

void CudaBackend::matmul_gelu_forward(Tensor& out, Tensor& pre, const Tensor& x, const Tensor& w, const Tensor& bias,
                                      GeluKind kind) {
  const auto dims =
      op_contract::matmul_gelu_forward(op_check("matmul_gelu_forward"), out, pre, x, w, bias);
  const int64_t N = dims.N, I = dims.I, M = dims.O;
  activate();
  if (N > 0 && M > 0 && gelu_epilogue_applies(kind, x.dtype(), M, pre.raw(), out.raw())) {
    GemmSpec spec;
    spec.m = M;
    spec.n = N;
    spec.k = I;
    spec.a = {w.raw(), I, 0, true};
    spec.b = {x.raw(), I, 0, false};
    spec.d = out.raw();
    spec.ldd = M;
    spec.ab_type = spec.d_type = cuda_data_type(x.dtype());
    spec.aux = pre.raw();
    spec.aux_ld = M;
    std::unique_ptr<ScratchBuffer> aligned_bias;
    spec.epilogue = CUBLASLT_EPILOGUE_GELU_AUX;
    if (bias.defined()) {
      spec.epilogue = CUBLASLT_EPILOGUE_GELU_AUX_BIAS;
      spec.bias = epilogue_bias(bias, aligned_bias, stream_);
    }
    if (gemm_->run(spec, stream_)) return;
  }
  // Not fusable here (or no cuBLASLt algorithm for the epilogue): the two separate passes.
  matmul_forward(pre, x, w, bias);
  gelu_forward(out, pre, kind);
}

void CudaBackend::matmul_backward_gelu(Tensor& dpre, Tensor& dw, Tensor& dbias, const Tensor& dout, const Tensor& x,
                                       const Tensor& w, const Tensor& pre, GeluKind kind) {
  const auto dims =
      op_contract::matmul_backward_gelu(op_check("matmul_backward_gelu"), dpre, dw, dbias, dout, x, w, pre);
  const int64_t N = dims.N, M = dims.I, O = dims.O;
  activate();
  if (N > 0 && O > 0 && gelu_epilogue_applies(kind, x.dtype(), M, pre.raw(), dpre.raw())) {
    // dpreᶜ[M, N] = (wᶜ[M, O]·doutᶜ[O, N]) ∘ gelu'(preᶜ), then dw and dbias exactly as matmul_backward.
    GemmSpec spec;
    spec.m = M;
    spec.n = N;
    spec.k = O;
    spec.a = {w.raw(), M, 0, false};
    spec.b = {dout.raw(), O, 0, false};
    spec.d = dpre.raw();
    spec.ldd = M;
    spec.ab_type = spec.d_type = cuda_data_type(x.dtype());
    spec.epilogue = CUBLASLT_EPILOGUE_DGELU;
    spec.aux = pre.raw();
    spec.aux_ld = M;
    if (gemm_->run(spec, stream_)) {
      Tensor no_dx;
      matmul_backward(no_dx, dw, dbias, dout, x, w);
      return;
    }
  }
  // Not fusable here (or no cuBLASLt algorithm for the epilogue): the two separate passes.
  matmul_backward(dpre, dw, dbias, dout, x, w);
  gelu_backward(dpre, dpre, pre, kind);
}

}  // namespace loom::cuda
