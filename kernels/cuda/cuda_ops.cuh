// Launchers for the CUDA backend's kernels (internal to kernels/cuda). Each takes raw device pointers that
// CudaBackend has already validated, queues its kernel(s) on `stream` and checks the launch. T is float, bf16
// or f16 (explicitly instantiated for exactly these three in the .cu files). Kernels compute in f32.
// "+=" means the launcher accumulates into its output, "=" that it overwrites it.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/cuda/cuda_common.cuh"

namespace loom::cuda {

// A temporary device buffer from the caching allocator (on the current device), returned to the cache when
// it goes out of scope. Reuse is stream-ordered: later work on the same stream runs after the kernels that
// used it, so a launcher may return (and free its scratch) while its kernels are still queued.
class ScratchBuffer {
 public:
  explicit ScratchBuffer(size_t bytes);
  ~ScratchBuffer();
  ScratchBuffer(const ScratchBuffer&) = delete;
  ScratchBuffer& operator=(const ScratchBuffer&) = delete;
  template <typename U>
  U* as() const { return static_cast<U*>(ptr_); }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
  int device_ = 0;
};

// ---- elementwise (cuda_elementwise.cu) ----
// out = a + b with the residual stream's element type R for out and a: T, or f32 beside a bf16/f16 b.
template <typename R, typename T> void add(R* out, const R* a, const T* b, int64_t n, cudaStream_t stream);
template <typename T> void accumulate(T* dst, const T* src, int64_t n, cudaStream_t stream);
template <typename T> void scale(T* x, float s, int64_t n, cudaStream_t stream);
void convert(void* dst, Elem dst_elem, const void* src, Elem src_elem, int64_t n, cudaStream_t stream);
template <typename T> void gelu_forward(T* out, const T* x, int64_t n, bool tanh_approx, cudaStream_t stream);
template <typename T>
void gelu_backward(T* dx, const T* dout, const T* x, int64_t n, bool tanh_approx, cudaStream_t stream);
template <typename T>
void add_position_forward(T* x, const T* pos, int64_t B, int64_t Tn, int64_t C, cudaStream_t stream);
// dst[b, dst_start + j, :] (=, or += when accumulate) src[b, src_start + j, :] for j < count.
template <typename T>
void copy_tokens(T* dst, int64_t Td, int64_t dst_start, const T* src, int64_t Ts, int64_t src_start, int64_t B,
                 int64_t count, int64_t C, bool accumulate, cudaStream_t stream);

// ---- column sums (cuda_column_sums.cu) ----
// dst[j] += Σ_{r < rows} src[r·width + j] for j < width (the bias gradient), summed in f32 in a fixed order that
// depends only on (rows, width) and src's alignment: deterministic. 16-byte loads where src is 16-byte aligned
// and width a multiple of 16 / sizeof(T); one element per thread otherwise. dst needs no alignment; dst and src
// must not overlap.
template <typename T>
void add_column_sums(T* dst, const T* src, int64_t rows, int64_t width, cudaStream_t stream);
// dst[j] += Σ_{p < parts} partials[p·width + j] in a fixed order (the second stage of column sums).
template <typename T>
void add_partial_sums(T* dst, const float* partials, int64_t parts, int64_t width, cudaStream_t stream);

// ---- embeddings (cuda_embedding.cu); bad ids set kBadEmbeddingId in *error_flag and are skipped ----
template <typename T>
void embedding_forward(T* out, const int32_t* ids, const T* table, int64_t N, int64_t V, int64_t C,
                       int* error_flag, cudaStream_t stream);
template <typename T>
void embedding_backward(T* dtable, const T* dout, const int32_t* ids, int64_t N, int64_t V, int64_t C,
                        int* error_flag, cudaStream_t stream);

// ---- LayerNorm (cuda_layernorm.cu) ----
// "" when rows of C channels of `dtype` (f32, bf16, f16) take the vectorised kernels (given 16-byte aligned
// tensors), else the rule C broke; the other rows take the general (slower) kernels.
std::string layernorm_vectorised_rule(int64_t C, DType dtype);
// Statistics over K of the C channels (K = C unless embedding channels are masked: Backend::layernorm_forward).
// The residual stream (x, dx) has element type R: T, or f32 beside bf16/f16 (instantiated for those pairs);
// with an f32 R the vectorised kernels take rows up to 4096 (bf16/f16), wider ones the general kernels.
template <typename T, typename R>
void layernorm_forward(T* out, float* mean, float* rstd, const R* x, const T* w, const T* b, int64_t N,
                       int64_t C, float eps, int64_t K, cudaStream_t stream);
template <typename T, typename R>
void layernorm_backward(R* dx, T* dw, T* db, const T* dout, const R* x, const T* w, const float* mean,
                        const float* rstd, int64_t N, int64_t C, int64_t K, cudaStream_t stream);

// ---- loss (cuda_loss.cu); bad targets set kBadTarget and are treated as ignored ----
template <typename T>
void cross_entropy(float* losses, T* dlogits, const T* logits, const int32_t* targets, int64_t N, int64_t Vp,
                   int64_t vocab, float dloss, float label_smoothing, int* error_flag, cudaStream_t stream);
// Vocabulary-parallel pair (kernels/backend.h states the math): logits [N, Vr] hold the global columns
// [vocab_begin, vocab_begin + Vr); partials [N, 4] and gathered [R, N, 4] are f32. dlogits may be null, or
// alias logits.
template <typename T>
void cross_entropy_partials(float* partials, const T* logits, const int32_t* targets, int64_t N, int64_t Vr,
                            int64_t vocab_begin, int64_t vocab, int* error_flag, cudaStream_t stream);
template <typename T>
void cross_entropy_from_partials(float* losses, T* dlogits, const float* gathered, const T* logits,
                                 const int32_t* targets, int R, int64_t N, int64_t Vr, int64_t vocab_begin,
                                 int64_t vocab, float dloss, float label_smoothing, int* error_flag,
                                 cudaStream_t stream);

// ---- attention helpers (cuda_attention_kernels.cu) ----
// dst[b, h, t, :] = src[b, t, offset + h·D : offset + (h+1)·D] for src rows of width W.
template <typename T>
void gather_heads(T* dst, const T* src, int64_t B, int64_t Tn, int64_t H, int64_t D, int64_t W, int64_t offset,
                  cudaStream_t stream);
// The inverse: dst[b, t, offset + h·D + d] = src[b, h, t, d] (other columns of dst untouched).
template <typename T>
void scatter_heads(T* dst, const T* src, int64_t B, int64_t Tn, int64_t H, int64_t D, int64_t W,
                   int64_t offset, cudaStream_t stream);
// In place over rows × Tn scores (row r is query t = r mod Tn): P = softmax(s) with entries j > t masked
// when causal (set to exactly 0). Also writes P in T to `probs_copy` unless it is null.
template <typename T>
void softmax_forward(float* scores, T* probs_copy, int64_t rows, int64_t Tn, bool causal, cudaStream_t stream);
// dS = P ⊙ (dP − rowsum(P ⊙ dP)) written in T; converts P to T in `probs_copy` unless it is null.
template <typename T>
void softmax_backward(T* dscores, T* probs_copy, const float* probs, const float* dprobs, int64_t rows,
                      int64_t Tn, cudaStream_t stream);

// ---- optimizer (cuda_optimizer.cu) ----
struct SumSquaresInput {
  const void* data;
  Elem elem;
  int64_t n;
};
// *total += Σ x² over all inputs: f32 per-block partials, their sum in double (accumulate_sum). Queued only.
void accumulate_sum_squares(double* total, const std::vector<SumSquaresInput>& inputs, cudaStream_t stream);
// *total += (weight · Σ x) / count over n floats, summed in double by one block in a fixed order. Queued only.
void accumulate_sum(double* total, const float* x, int64_t n, double weight, double count, cudaStream_t stream);
struct AdamWArgs {
  float lr, beta1, beta2, eps, weight_decay;
  float bias_correction1, bias_correction2;  // 1 - β1^step, 1 - β2^step
  double grad_scale;
  // kernels/step_stats.h on the device (null: none): clip by max_grad_norm (0: off), skip a non-finite step.
  const double* step_stats;
  double max_grad_norm;
};
// One fused pass; compute_copy may be null (then copy_elem is ignored).
void adamw(float* param, float* m, float* v, const void* grad, Elem grad_elem, void* compute_copy,
           Elem copy_elem, int64_t n, const AdamWArgs& args, cudaStream_t stream);

}  // namespace loom::cuda
