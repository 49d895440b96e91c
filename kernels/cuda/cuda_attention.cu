// CudaBackend's plain attention: materialised scores and probabilities with cuBLASLt strided-batched GEMMs
// over the B·H heads (unpacked from the fused QKV layout first). Per head, with q, k [T, Dqk], v [T, Dv]:
//   forward   S = scale·q kᵀ (f32, into `saved`),  P = softmax(S + causal mask) in place,  O = P v
//   backward  dP = dO vᵀ,  dV = Pᵀ dO,  dS = P ⊙ (dP − rowsum(P ⊙ dP)),  dQ = scale·dS k,  dK = scale·dSᵀ q
// In cuBLAS's column-major terms a row-major [R, K] head is a [K, R] matrix with ld K, so e.g. Sᶜ[j, i] =
// (kᶜ)ᵀ qᶜ. P and dS feed the next GEMM in the activation dtype (a converted copy when that is bf16/f16).
// The flash-attention kernels replace this path; it stays as the simple reference on the GPU.
#include <type_traits>

#include "kernels/cuda/cuda_backend.cuh"
#include "kernels/cuda/cuda_op_check.cuh"
#include "kernels/cuda/cuda_ops.cuh"
#include "kernels/cuda/flash_attention.h"

namespace loom::cuda {

namespace {

// Beyond the shared contract: the heads are a grid dimension.
void check_grid_limit(const OpCheck& check, const AttentionShape& s) {
  check.require(s.batch * s.heads < (int64_t{1} << 31), "batch·heads ", s.batch * s.heads, " exceeds 2^31");
}

// A strided-batched GEMM over the B·H heads: D_h = alpha·op(A_h)·op(B_h) for h < batch.
void batched_gemm(Gemm& gemm, cudaStream_t stream, int64_t heads, int64_t m, int64_t n, int64_t k, GemmOperand a,
                  GemmOperand b, void* d, int64_t ldd, int64_t d_stride, cudaDataType_t ab_type,
                  cudaDataType_t d_type, float alpha) {
  GemmSpec spec;
  spec.m = m;
  spec.n = n;
  spec.k = k;
  spec.batch = static_cast<int>(heads);
  spec.a = a;
  spec.b = b;
  spec.d = d;
  spec.ldd = ldd;
  spec.d_batch_stride = d_stride;
  spec.ab_type = ab_type;
  spec.d_type = d_type;
  spec.alpha = alpha;
  gemm.run(spec, stream);
}

bool uses_flash(const Tensor& saved) { return saved.ndim() == 3; }

}  // namespace

Shape CudaBackend::attention_saved_shape(const AttentionShape& s, DType dtype) const {
  if (flash_attention_check(s, dtype).empty()) return {s.batch, s.heads, s.seq};
  return attention_saved_shape(s);
}

void CudaBackend::attention_forward(Tensor& out, Tensor& saved, const Tensor& qkv, const AttentionShape& s) {
  const OpCheck check = op_check("attention_forward");
  op_contract::attention_forward(check, out, saved, qkv, s,
                                 attention_saved_shape(s, uses_flash(saved) ? qkv.dtype() : DType::F32), DType::F32);
  check_grid_limit(check, s);
  if (uses_flash(saved)) {
    const std::string why_not = flash_attention_check(s, qkv.dtype());
    check.require(why_not.empty(), "flash attention: ", why_not);
    activate();
    flash_attention_forward(s, qkv.dtype(), qkv.raw(), out.raw(), ptr<float>(saved), stream_);
    return;
  }
  activate();
  const int64_t B = s.batch, Tn = s.seq, H = s.heads, Dqk = s.qk_dim, Dv = s.v_dim, BH = B * H;
  const cudaDataType_t type = cuda_data_type(qkv.dtype());
  dispatch_float(qkv.dtype(), [&](auto tag) {
    using T = decltype(tag);
    constexpr bool kF32 = std::is_same_v<T, float>;
    ScratchBuffer q(BH * Tn * Dqk * sizeof(T)), k(BH * Tn * Dqk * sizeof(T)), v(BH * Tn * Dv * sizeof(T));
    ScratchBuffer o(BH * Tn * Dv * sizeof(T)), probs(kF32 ? 0 : BH * Tn * Tn * sizeof(T));
    const T* src = ptr<T>(qkv);
    const int64_t W = s.qkv_width();
    gather_heads(q.as<T>(), src, B, Tn, H, Dqk, W, 0, stream_);
    gather_heads(k.as<T>(), src, B, Tn, H, Dqk, W, H * Dqk, stream_);
    gather_heads(v.as<T>(), src, B, Tn, H, Dv, W, 2 * H * Dqk, stream_);
    // Sᶜ[j, i] = Σ_d k[j, d] q[i, d]: m = n = T, k = Dqk, f32 output straight into `saved`.
    batched_gemm(*gemm_, stream_, BH, Tn, Tn, Dqk, {k.as<T>(), Dqk, Tn * Dqk, true}, {q.as<T>(), Dqk, Tn * Dqk, false},
                 saved.raw(), Tn, Tn * Tn, type, CUDA_R_32F, static_cast<float>(s.scale));
    T* probs_copy = kF32 ? nullptr : probs.as<T>();
    softmax_forward(ptr<float>(saved), probs_copy, BH * Tn, Tn, s.causal, stream_);
    const void* p = kF32 ? saved.raw() : static_cast<const void*>(probs_copy);
    // Oᶜ[d, i] = Σ_j v[j, d] P[i, j]: m = Dv, n = T, k = T.
    batched_gemm(*gemm_, stream_, BH, Dv, Tn, Tn, {v.as<T>(), Dv, Tn * Dv, false}, {p, Tn, Tn * Tn, false}, o.as<T>(),
                 Dv, Tn * Dv, type, type, 1.f);
    scatter_heads(ptr<T>(out), o.as<T>(), B, Tn, H, Dv, s.out_width(), 0, stream_);
  });
}

void CudaBackend::attention_backward(Tensor& dqkv, const Tensor& dout, const Tensor& qkv, const Tensor& out,
                                     const Tensor& saved, const AttentionShape& s) {
  const OpCheck check = op_check("attention_backward");
  op_contract::attention_backward(check, dqkv, dout, qkv, out, saved, s,
                                  attention_saved_shape(s, uses_flash(saved) ? qkv.dtype() : DType::F32), DType::F32);
  check_grid_limit(check, s);
  if (uses_flash(saved)) {
    const std::string why_not = flash_attention_check(s, qkv.dtype());
    check.require(why_not.empty(), "flash attention: ", why_not);
    activate();
    const size_t bytes = flash_attention_backward_workspace_bytes(s, deterministic_);
    ScratchBuffer workspace(bytes);
    flash_attention_backward(s, qkv.dtype(), qkv.raw(), out.raw(), dout.raw(), ptr<float>(saved), dqkv.raw(),
                             workspace.as<void>(), bytes, deterministic_, stream_);
    return;
  }
  activate();
  const int64_t B = s.batch, Tn = s.seq, H = s.heads, Dqk = s.qk_dim, Dv = s.v_dim, BH = B * H;
  const cudaDataType_t type = cuda_data_type(qkv.dtype());
  const float scale = static_cast<float>(s.scale);
  dispatch_float(qkv.dtype(), [&](auto tag) {
    using T = decltype(tag);
    constexpr bool kF32 = std::is_same_v<T, float>;
    const size_t qk_bytes = BH * Tn * Dqk * sizeof(T), v_bytes = BH * Tn * Dv * sizeof(T);
    ScratchBuffer q(qk_bytes), k(qk_bytes), v(v_bytes), dO(v_bytes), dq(qk_bytes), dk(qk_bytes), dv(v_bytes);
    ScratchBuffer dP(BH * Tn * Tn * sizeof(float)), dS(BH * Tn * Tn * sizeof(T));
    ScratchBuffer probs(kF32 ? 0 : BH * Tn * Tn * sizeof(T));
    const T* src = ptr<T>(qkv);
    const int64_t W = s.qkv_width();
    gather_heads(q.as<T>(), src, B, Tn, H, Dqk, W, 0, stream_);
    gather_heads(k.as<T>(), src, B, Tn, H, Dqk, W, H * Dqk, stream_);
    gather_heads(v.as<T>(), src, B, Tn, H, Dv, W, 2 * H * Dqk, stream_);
    gather_heads(dO.as<T>(), ptr<T>(dout), B, Tn, H, Dv, s.out_width(), 0, stream_);
    // dPᶜ[j, i] = Σ_d v[j, d] dO[i, d]   (f32)
    batched_gemm(*gemm_, stream_, BH, Tn, Tn, Dv, {v.as<T>(), Dv, Tn * Dv, true}, {dO.as<T>(), Dv, Tn * Dv, false},
                 dP.as<float>(), Tn, Tn * Tn, type, CUDA_R_32F, 1.f);
    T* probs_copy = kF32 ? nullptr : probs.as<T>();
    softmax_backward(dS.as<T>(), probs_copy, ptr<float>(saved), dP.as<float>(), BH * Tn, Tn, stream_);
    const void* p = kF32 ? saved.raw() : static_cast<const void*>(probs_copy);
    // dVᶜ[d, j] = Σ_i dO[i, d] P[i, j]
    batched_gemm(*gemm_, stream_, BH, Dv, Tn, Tn, {dO.as<T>(), Dv, Tn * Dv, false}, {p, Tn, Tn * Tn, true}, dv.as<T>(),
                 Dv, Tn * Dv, type, type, 1.f);
    // dQᶜ[d, i] = scale·Σ_j k[j, d] dS[i, j]
    batched_gemm(*gemm_, stream_, BH, Dqk, Tn, Tn, {k.as<T>(), Dqk, Tn * Dqk, false}, {dS.as<T>(), Tn, Tn * Tn, false},
                 dq.as<T>(), Dqk, Tn * Dqk, type, type, scale);
    // dKᶜ[d, j] = scale·Σ_i q[i, d] dS[i, j]
    batched_gemm(*gemm_, stream_, BH, Dqk, Tn, Tn, {q.as<T>(), Dqk, Tn * Dqk, false}, {dS.as<T>(), Tn, Tn * Tn, true},
                 dk.as<T>(), Dqk, Tn * Dqk, type, type, scale);
    T* dst = ptr<T>(dqkv);
    scatter_heads(dst, dq.as<T>(), B, Tn, H, Dqk, W, 0, stream_);
    scatter_heads(dst, dk.as<T>(), B, Tn, H, Dqk, W, H * Dqk, stream_);
    scatter_heads(dst, dv.as<T>(), B, Tn, H, Dv, W, 2 * H * Dqk, stream_);
  });
}

}  // namespace loom::cuda
