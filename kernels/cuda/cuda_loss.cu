// Fused softmax cross-entropy forward + backward over the padded vocabulary.
#include "kernels/cuda/cuda_ops.cuh"

namespace loom::cuda {

namespace {

// One block per row n, logits z = logits[n, :vocab] (the columns vocab..Vp-1 are padding):
//   lse = log Σ_c exp(z_c)   (online max/sum per thread, then block reductions)
//   q = (1-ε)·onehot(t) + ε/vocab,   loss[n] = lse - Σ_c q_c z_c = lse - (1-ε) z_t - (ε/vocab) Σ_c z_c
//   dlogits[n, c] = dloss·(exp(z_c - lse) - q_c) for c < vocab, 0 for the padding
// A target of -1 (ignored) gives loss 0 and a zero gradient row; a target outside [-1, vocab) is flagged and
// treated the same. dlogits may alias logits: each thread reads its element before overwriting it, and the
// statistics are complete (block reductions) before any write. Nothing of size [N, Vp] is kept in f32.
template <typename T>
__global__ void cross_entropy_kernel(float* losses, T* dlogits, const T* logits, const int32_t* targets,
                                     int64_t Vp, int64_t vocab, float dloss, float smoothing, int* error_flag) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const T* z = logits + row * Vp;
  const int32_t target = targets[row];
  const bool valid = target >= 0 && target < vocab;
  if (!valid) {
    if (target != -1 && threadIdx.x == 0) atomicOr(error_flag, kBadTarget);
    if (threadIdx.x == 0) losses[row] = 0.f;
    if (dlogits)
      for (int64_t c = threadIdx.x; c < Vp; c += blockDim.x) dlogits[row * Vp + c] = from_f32<T>(0.f);
    return;
  }
  float m = -INFINITY, s = 0.f, sum_z = 0.f;
  for (int64_t c = threadIdx.x; c < vocab; c += blockDim.x) {
    const float v = to_f32(z[c]);
    sum_z += v;
    if (v > m) {
      s = s * expf(m - v) + 1.f;
      m = v;
    } else {
      s += expf(v - m);
    }
  }
  const float row_max = block_max(m, scratch);
  const float row_sum = block_sum(m == -INFINITY ? 0.f : s * expf(m - row_max), scratch);
  sum_z = block_sum(sum_z, scratch);
  const float lse = row_max + logf(row_sum);
  const float z_target = to_f32(z[target]);
  const float uniform = smoothing / static_cast<float>(vocab);
  if (threadIdx.x == 0) losses[row] = lse - (1.f - smoothing) * z_target - uniform * sum_z;
  if (!dlogits) return;
  __syncthreads();  // every thread has read z[target] before it may be overwritten (dlogits aliasing logits)
  for (int64_t c = threadIdx.x; c < Vp; c += blockDim.x) {
    float d = 0.f;
    if (c < vocab) {
      const float q = uniform + (c == target ? 1.f - smoothing : 0.f);
      d = dloss * (expf(to_f32(z[c]) - lse) - q);
    }
    dlogits[row * Vp + c] = from_f32<T>(d);
  }
}

}  // namespace

template <typename T>
void cross_entropy(float* losses, T* dlogits, const T* logits, const int32_t* targets, int64_t N, int64_t Vp,
                   int64_t vocab, float dloss, float label_smoothing, int* error_flag, cudaStream_t stream) {
  if (N == 0) return;
  const int threads = static_cast<int>(std::min<int64_t>(512, (Vp + 31) / 32 * 32));
  cross_entropy_kernel<<<static_cast<unsigned>(N), threads, 0, stream>>>(losses, dlogits, logits, targets, Vp,
                                                                         vocab, dloss, label_smoothing, error_flag);
  LOOM_CUDA_LAUNCHED("cross_entropy_kernel");
}

#define LOOM_INSTANTIATE(T)                                                                                  \
  template void cross_entropy<T>(float*, T*, const T*, const int32_t*, int64_t, int64_t, int64_t, float, float, \
                                 int*, cudaStream_t);
LOOM_INSTANTIATE(float)
LOOM_INSTANTIATE(bf16)
LOOM_INSTANTIATE(f16)
#undef LOOM_INSTANTIATE

}  // namespace loom::cuda
