// Kernels of the plain (materialised) attention: head (un)packing of the fused QKV layout and the row
// softmax forward/backward over [B·H·T, T] scores. The GEMMs around them are in cuda_attention.cu.
#include "kernels/cuda/cuda_ops.cuh"

namespace loom::cuda {

namespace {

// dst[b, h, t, d] = src[b, t, offset + h·D + d]   (src rows have width W)
template <typename T>
__global__ void gather_heads_kernel(T* dst, const T* src, int64_t Tn, int64_t H, int64_t D, int64_t W,
                                    int64_t offset, int64_t n) {
  LOOM_GRID_STRIDE(i, n) {
    const int64_t d = i % D, t = (i / D) % Tn, h = (i / (D * Tn)) % H, b = i / (D * Tn * H);
    dst[i] = src[(b * Tn + t) * W + offset + h * D + d];
  }
}

// dst[b, t, offset + h·D + d] = src[b, h, t, d]
template <typename T>
__global__ void scatter_heads_kernel(T* dst, const T* src, int64_t Tn, int64_t H, int64_t D, int64_t W,
                                     int64_t offset, int64_t n) {
  LOOM_GRID_STRIDE(i, n) {
    const int64_t d = i % D, t = (i / D) % Tn, h = (i / (D * Tn)) % H, b = i / (D * Tn * H);
    dst[(b * Tn + t) * W + offset + h * D + d] = src[i];
  }
}

// One warp per row r (query t = r mod Tn), keys j < limit where limit = t+1 (causal) or Tn:
//   P_j = exp(s_j - max) / Σ_{j' < limit} exp(s_j' - max),  P_j = 0 for j ≥ limit (masked)
// Written in place over the f32 scores, and in T to probs_copy when it is not null.
template <typename T>
__global__ void softmax_forward_kernel(float* scores, T* probs_copy, int64_t rows, int64_t Tn, bool causal) {
  const int lane = threadIdx.x % 32;
  const int64_t row = blockIdx.x * int64_t{blockDim.x / 32} + threadIdx.x / 32;
  if (row >= rows) return;
  const int64_t limit = causal ? row % Tn + 1 : Tn;
  float* s = scores + row * Tn;
  float m = -INFINITY, sum = 0.f;
  for (int64_t j = lane; j < limit; j += 32) {
    const float v = s[j];
    if (v > m) {
      sum = sum * expf(m - v) + 1.f;
      m = v;
    } else {
      sum += expf(v - m);
    }
  }
  const float row_max = warp_max(m);
  const float inv_sum = 1.f / warp_sum(m == -INFINITY ? 0.f : sum * expf(m - row_max));
  for (int64_t j = lane; j < Tn; j += 32) {
    const float p = j < limit ? expf(s[j] - row_max) * inv_sum : 0.f;
    s[j] = p;
    if (probs_copy) probs_copy[row * Tn + j] = from_f32<T>(p);
  }
}

// One warp per row: dS_j = P_j·(dP_j - Σ_j' P_j' dP_j'), written in T (masked entries have P = 0, so dS = 0).
// Also converts P to T in probs_copy when it is not null.
template <typename T>
__global__ void softmax_backward_kernel(T* dscores, T* probs_copy, const float* probs, const float* dprobs,
                                        int64_t rows, int64_t Tn) {
  const int lane = threadIdx.x % 32;
  const int64_t row = blockIdx.x * int64_t{blockDim.x / 32} + threadIdx.x / 32;
  if (row >= rows) return;
  const float* p = probs + row * Tn;
  const float* dp = dprobs + row * Tn;
  float dot = 0.f;
  for (int64_t j = lane; j < Tn; j += 32) dot += p[j] * dp[j];
  dot = warp_sum(dot);
  for (int64_t j = lane; j < Tn; j += 32) {
    dscores[row * Tn + j] = from_f32<T>(p[j] * (dp[j] - dot));
    if (probs_copy) probs_copy[row * Tn + j] = from_f32<T>(p[j]);
  }
}

constexpr int kRowsPerBlock = 8;
unsigned row_blocks(int64_t rows) { return static_cast<unsigned>((rows + kRowsPerBlock - 1) / kRowsPerBlock); }

}  // namespace

template <typename T>
void gather_heads(T* dst, const T* src, int64_t B, int64_t Tn, int64_t H, int64_t D, int64_t W, int64_t offset,
                  cudaStream_t stream) {
  const int64_t n = B * H * Tn * D;
  if (n == 0) return;
  gather_heads_kernel<<<grid_for(n), 256, 0, stream>>>(dst, src, Tn, H, D, W, offset, n);
  LOOM_CUDA_LAUNCHED("gather_heads_kernel");
}

template <typename T>
void scatter_heads(T* dst, const T* src, int64_t B, int64_t Tn, int64_t H, int64_t D, int64_t W, int64_t offset,
                   cudaStream_t stream) {
  const int64_t n = B * H * Tn * D;
  if (n == 0) return;
  scatter_heads_kernel<<<grid_for(n), 256, 0, stream>>>(dst, src, Tn, H, D, W, offset, n);
  LOOM_CUDA_LAUNCHED("scatter_heads_kernel");
}

template <typename T>
void softmax_forward(float* scores, T* probs_copy, int64_t rows, int64_t Tn, bool causal, cudaStream_t stream) {
  if (rows == 0) return;
  softmax_forward_kernel<<<row_blocks(rows), kRowsPerBlock * 32, 0, stream>>>(scores, probs_copy, rows, Tn, causal);
  LOOM_CUDA_LAUNCHED("softmax_forward_kernel");
}

template <typename T>
void softmax_backward(T* dscores, T* probs_copy, const float* probs, const float* dprobs, int64_t rows, int64_t Tn,
                      cudaStream_t stream) {
  if (rows == 0) return;
  softmax_backward_kernel<<<row_blocks(rows), kRowsPerBlock * 32, 0, stream>>>(dscores, probs_copy, probs, dprobs,
                                                                               rows, Tn);
  LOOM_CUDA_LAUNCHED("softmax_backward_kernel");
}

#define LOOM_INSTANTIATE(T)                                                                                      \
  template void gather_heads<T>(T*, const T*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, cudaStream_t); \
  template void scatter_heads<T>(T*, const T*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, cudaStream_t); \
  template void softmax_forward<T>(float*, T*, int64_t, int64_t, bool, cudaStream_t);                          \
  template void softmax_backward<T>(T*, T*, const float*, const float*, int64_t, int64_t, cudaStream_t);
LOOM_INSTANTIATE(float)
LOOM_INSTANTIATE(bf16)
LOOM_INSTANTIATE(f16)
#undef LOOM_INSTANTIATE

}  // namespace loom::cuda
