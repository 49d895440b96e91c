// The CPU backend's kernels: templates over the element type T (float or double; explicitly instantiated
// for exactly these two in the .cc files), working on raw contiguous row-major buffers.
//
// Contract for every kernel here:
// - Callers (CpuBackend) have already checked shapes, dtypes and ids; kernels do not validate and never throw
//   (they run inside OpenMP regions, where an exception would terminate the process).
// - Determinism: every output element (and every reduction) is computed in a fixed order that does not depend
//   on the number of OpenMP threads. Row-wise work is split over rows; sums over rows (parameter gradients)
//   are split over columns, each column summed over rows in ascending order. So results are bit-identical
//   run to run and across thread counts (OpenBLAS GEMMs aside, which are deterministic for fixed threads).
// - "+=" in a comment means the kernel accumulates into its output, "=" that it overwrites it.
#pragma once
#include <cstdint>

#include "core/dtype.h"

namespace loom::cpu {

// ---- element access for every float storage type (used where 16-bit tensors may appear) ----
// Elem<D>::type is the storage type; load/store convert through double (16-bit formats through float).
template <DType D>
struct Elem;
template <>
struct Elem<DType::F32> {
  static constexpr DType dtype = DType::F32;
  using type = float;
  static double load(type x) { return x; }
  static type store(double x) { return static_cast<float>(x); }
};
template <>
struct Elem<DType::F64> {
  static constexpr DType dtype = DType::F64;
  using type = double;
  static double load(type x) { return x; }
  static type store(double x) { return x; }
};
template <>
struct Elem<DType::BF16> {
  static constexpr DType dtype = DType::BF16;
  using type = uint16_t;
  static double load(type x) { return bf16_to_float(x); }
  static type store(double x) { return float_to_bf16(static_cast<float>(x)); }
};
template <>
struct Elem<DType::F16> {
  static constexpr DType dtype = DType::F16;
  using type = uint16_t;
  static double load(type x) { return f16_to_float(x); }
  static type store(double x) { return float_to_f16(static_cast<float>(x)); }
};

// ---- elementwise (cpu_elementwise.cc) ----
// out[i] = a[i] + b[i]; out may alias a or b.
template <typename T>
void add(T* out, const T* a, const T* b, int64_t n);
// dst[i] += src[i].
template <typename T>
void accumulate(T* dst, const T* src, int64_t n);
// x[i] *= s.
template <typename T>
void scale(T* x, double s, int64_t n);
// dst[i] = src[i] converted between any float storage types (F32, F64, BF16, F16).
void convert(void* dst, DType dst_type, const void* src, DType src_type, int64_t n);
// Σ x[i]² accumulated in double, in fixed-size chunks summed in order (any float storage type).
double sum_squares(const void* x, DType type, int64_t n);

// ---- embeddings (cpu_elementwise.cc) ----
// out[n, :] = table[ids[n], :]                      (ids already range-checked)
template <typename T>
void embedding_forward(T* out, const int32_t* ids, const T* table, int64_t N, int64_t C);
// dtable[ids[n], :] += dout[n, :], rows summed in ascending n.
template <typename T>
void embedding_backward(T* dtable, const T* dout, const int32_t* ids, int64_t N, int64_t C);
// x[b, t, :] += pos[t, :]
template <typename T>
void add_position_forward(T* x, const T* pos, int64_t B, int64_t Tn, int64_t C);
// dpos[t, :] += Σ_b dx[b, t, :], b ascending.
template <typename T>
void add_position_backward(T* dpos, const T* dx, int64_t B, int64_t Tn, int64_t C);
// dst[b, dst_start + j, :] = (or +=) src[b, src_start + j, :] for b < B, j < count; dst [B, Td, C], src [B, Ts, C].
template <typename T>
void copy_tokens(T* dst, int64_t Td, int64_t dst_start, const T* src, int64_t Ts, int64_t src_start, int64_t B,
                 int64_t count, int64_t C, bool accumulate);

// ---- GELU (cpu_elementwise.cc) ----
// tanh form: gelu(x) = ½x(1 + tanh(√(2/π)(x + 0.044715x³)))   (GPT-2)
// erf form:  gelu(x) = ½x(1 + erf(x/√2)) = x·Φ(x)                (ViT/DeiT)
// out may alias x.
template <typename T>
void gelu_forward(T* out, const T* x, int64_t n, bool tanh_approx);
// dx = dout · gelu'(x); dx may alias dout.
template <typename T>
void gelu_backward(T* dx, const T* dout, const T* x, int64_t n, bool tanh_approx);

// ---- LayerNorm (cpu_layernorm.cc) ----
// Per row, over K of the C channels (K = C unless embedding channels are masked; the other C - K entries of
// x are then exact zeros, Backend::layernorm_forward):
//   mean = Σx/K, var = (Σ(x-mean)² - (C-K)·mean²)/K (biased), rstd = 1/√(var+eps), out = (x-mean)·rstd·w + b.
// Row statistics are accumulated in double. b may be null.
template <typename T>
void layernorm_forward(T* out, T* mean, T* rstd, const T* x, const T* w, const T* b, int64_t N, int64_t C, double eps,
                       int64_t K);
// With x̂ = (x-mean)·rstd, g = dout·w and row means over K channels (g is zero on masked channels):
//   dx += rstd·(g - mean(g) - x̂·mean(g·x̂)),  dw += Σ_n dout·x̂,  db += Σ_n dout.   db may be null.
template <typename T>
void layernorm_backward(T* dx, T* dw, T* db, const T* dout, const T* x, const T* w, const T* mean, const T* rstd,
                        int64_t N, int64_t C, int64_t K);

// ---- linear layers through OpenBLAS (cpu_matmul.cc); w is [O, I] ----
// out[N, O] = x[N, I]·wᵀ + bias[O]   (bias may be null)
template <typename T>
void matmul_forward(T* out, const T* x, const T* w, const T* bias, int64_t N, int64_t I, int64_t O);
// dx[N, I] = dout·w (skipped when dx is null), dw[O, I] += doutᵀ·x, dbias[O] += Σ_n dout (null skips).
template <typename T>
void matmul_backward(T* dx, T* dw, T* dbias, const T* dout, const T* x, const T* w, int64_t N, int64_t I, int64_t O);

// ---- attention (cpu_attention.cc); layout as in kernels/backend.h (AttentionShape) ----
struct AttentionDims {
  int64_t B, Tn, H, Dqk, Dv;
  bool causal;
  double scale;
};
// Per (b, h): P = softmax(scale·q kᵀ + mask) row-wise (max subtracted), out = P v.
// probs [B, H, T, T] = P (masked entries exactly 0); out [B, T, H·Dv].
template <typename T>
void attention_forward(T* out, T* probs, const T* qkv, const AttentionDims& d);
// dv = Pᵀ dout; dP = dout vᵀ; dS = P ⊙ (dP - rowsum(P ⊙ dP)); dq = scale·dS k; dk = scale·dSᵀ q.
// dqkv (fused layout) = written.
template <typename T>
void attention_backward(T* dqkv, const T* dout, const T* qkv, const T* probs, const AttentionDims& d);

// ---- loss (cpu_loss.cc) ----
// Per row n with z = logits[n, :vocab], p = softmax(z), q = (1-ε)·onehot(target) + ε/vocab:
//   loss[n] = logsumexp(z) - Σ_c q_c z_c = -Σ_c q_c log p_c;  dlogits[n, c] = dloss·(p_c - q_c) for c < vocab,
//   0 for the padding columns c >= vocab; rows with target -1 get loss 0 and gradient 0.
// L is the losses' storage type (float or double). dlogits may be null, or alias logits.
template <typename T, typename L>
void cross_entropy(L* losses, T* dlogits, const T* logits, const int32_t* targets, int64_t N, int64_t Vp, int64_t vocab,
                   double dloss, double label_smoothing);
// Vocabulary-parallel cross-entropy (kernels/backend.h states the math). logits [N, Vr] hold the global columns
// [vocab_begin, vocab_begin + Vr); P (float or double) stores partials [N, 4], gathered [R, N, 4] and losses
// [N]. dlogits may be null, or alias logits.
template <typename T, typename P>
void cross_entropy_partials(P* partials, const T* logits, const int32_t* targets, int64_t N, int64_t Vr,
                            int64_t vocab_begin, int64_t vocab);
template <typename T, typename P>
void cross_entropy_from_partials(P* losses, T* dlogits, const P* gathered, const T* logits, const int32_t* targets,
                                 int64_t R, int64_t N, int64_t Vr, int64_t vocab_begin, int64_t vocab, double dloss,
                                 double label_smoothing);

// ---- optimizer (cpu_optimizer.cc) ----
struct AdamWStep {
  double lr, beta1, beta2, eps, grad_scale, weight_decay;
  int64_t step;
};
// Per element, in double: g = grad·grad_scale; m = β1 m + (1-β1) g; v = β2 v + (1-β2) g²;
//   param -= lr·( (m/(1-β1^step)) / (√(v/(1-β2^step)) + eps) + weight_decay·param ).
// G is the gradient's storage dtype.
template <typename T, DType G>
void adamw(T* param, T* m, T* v, const typename Elem<G>::type* grad, int64_t n, const AdamWStep& s);

}  // namespace loom::cpu
