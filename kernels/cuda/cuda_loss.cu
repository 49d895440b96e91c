// Fused softmax cross-entropy forward + backward over the padded vocabulary, whole or split over the vocabulary
// across tensor-parallel ranks (partials per rank, then the loss and gradient from every rank's partials).
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

// One block per row over this rank's Vr columns, of which the first `valid` are classes:
//   m = max_c z_c, s = Σ_c exp(z_c - m) (online per thread, then block reductions), Σz = Σ_c z_c, and the
//   target's logit if the target is a local column (else 0); partials[row] = (m, s, z_target, Σz).
// Ignored rows and ranks without class columns write (-inf, 0, 0, 0). Bad targets are flagged and ignored.
template <typename T>
__global__ void cross_entropy_partials_kernel(float* partials, const T* logits, const int32_t* targets, int64_t Vr,
                                              int64_t vocab_begin, int64_t valid, int64_t vocab, int* error_flag) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const T* z = logits + row * Vr;
  float* out = partials + row * 4;
  const int32_t target = targets[row];
  if (!(target >= 0 && target < vocab) || valid == 0) {
    if (threadIdx.x == 0) {
      if (target < -1 || target >= vocab) atomicOr(error_flag, kBadTarget);
      out[0] = -INFINITY;
      out[1] = out[2] = out[3] = 0.f;
    }
    return;
  }
  float m = -INFINITY, s = 0.f, sum_z = 0.f;
  for (int64_t c = threadIdx.x; c < valid; c += blockDim.x) {
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
  if (threadIdx.x != 0) return;
  const int64_t local_target = target - vocab_begin;
  out[0] = row_max;
  out[1] = row_sum;
  out[2] = local_target >= 0 && local_target < valid ? to_f32(z[local_target]) : 0.f;
  out[3] = sum_z;
}

// One block per row. Every thread combines the R ranks' partials of its row itself (R·4 floats, the same
// addresses across the block, so they are broadcast loads; no shared memory or barrier needed):
//   M = max_r m_r, S = Σ_r s_r·exp(m_r - M), lse = M + log S, z_target = Σ_r, Σz = Σ_r,
//   loss = lse - (1-ε) z_target - (ε/vocab) Σz,
//   dlogits[row, c] = dloss·(exp(z_c - lse) - (1-ε)·[vocab_begin + c = target] - ε/vocab) for c < valid, else 0.
// Each thread reads its logit before overwriting it, so dlogits may alias logits. Ignored rows (and bad
// targets, flagged) get loss 0 and a zero gradient row.
template <typename T>
__global__ void cross_entropy_from_partials_kernel(float* losses, T* dlogits, const float* gathered, const T* logits,
                                                   const int32_t* targets, int R, int64_t N, int64_t Vr,
                                                   int64_t vocab_begin, int64_t valid, int64_t vocab, float dloss,
                                                   float smoothing, int* error_flag) {
  const int64_t row = blockIdx.x;
  const int32_t target = targets[row];
  if (!(target >= 0 && target < vocab)) {
    if (threadIdx.x == 0) {
      if (target != -1) atomicOr(error_flag, kBadTarget);
      losses[row] = 0.f;
    }
    if (dlogits)
      for (int64_t c = threadIdx.x; c < Vr; c += blockDim.x) dlogits[row * Vr + c] = from_f32<T>(0.f);
    return;
  }
  float M = -INFINITY;
  for (int r = 0; r < R; ++r) M = fmaxf(M, gathered[(r * N + row) * 4]);
  float S = 0.f, z_target = 0.f, sum_z = 0.f;
  for (int r = 0; r < R; ++r) {
    const float* p = gathered + (r * N + row) * 4;
    if (p[0] != -INFINITY) S += p[1] * expf(p[0] - M);
    z_target += p[2];
    sum_z += p[3];
  }
  const float lse = M + logf(S);
  const float uniform = smoothing / static_cast<float>(vocab);
  if (threadIdx.x == 0) losses[row] = lse - (1.f - smoothing) * z_target - uniform * sum_z;
  if (!dlogits) return;
  const int64_t local_target = target - vocab_begin;
  for (int64_t c = threadIdx.x; c < Vr; c += blockDim.x) {
    float d = 0.f;
    if (c < valid) {
      const float q = uniform + (c == local_target ? 1.f - smoothing : 0.f);
      d = dloss * (expf(to_f32(logits[row * Vr + c]) - lse) - q);
    }
    dlogits[row * Vr + c] = from_f32<T>(d);
  }
}

// Threads per row-block: a multiple of 32 up to 512, no more than the row has columns.
int row_threads(int64_t width) { return static_cast<int>(std::min<int64_t>(512, (width + 31) / 32 * 32)); }

// This rank's class columns: the global columns [vocab_begin, vocab_begin + Vr) below vocab.
int64_t class_columns(int64_t Vr, int64_t vocab_begin, int64_t vocab) {
  return std::clamp<int64_t>(vocab - vocab_begin, 0, Vr);
}

}  // namespace

template <typename T>
void cross_entropy_partials(float* partials, const T* logits, const int32_t* targets, int64_t N, int64_t Vr,
                            int64_t vocab_begin, int64_t vocab, int* error_flag, cudaStream_t stream) {
  if (N == 0) return;
  cross_entropy_partials_kernel<<<static_cast<unsigned>(N), row_threads(Vr), 0, stream>>>(
      partials, logits, targets, Vr, vocab_begin, class_columns(Vr, vocab_begin, vocab), vocab, error_flag);
  LOOM_CUDA_LAUNCHED("cross_entropy_partials_kernel");
}

template <typename T>
void cross_entropy_from_partials(float* losses, T* dlogits, const float* gathered, const T* logits,
                                 const int32_t* targets, int R, int64_t N, int64_t Vr, int64_t vocab_begin,
                                 int64_t vocab, float dloss, float label_smoothing, int* error_flag,
                                 cudaStream_t stream) {
  if (N == 0) return;
  cross_entropy_from_partials_kernel<<<static_cast<unsigned>(N), row_threads(Vr), 0, stream>>>(
      losses, dlogits, gathered, logits, targets, R, N, Vr, vocab_begin, class_columns(Vr, vocab_begin, vocab), vocab,
      dloss, label_smoothing, error_flag);
  LOOM_CUDA_LAUNCHED("cross_entropy_from_partials_kernel");
}

template <typename T>
void cross_entropy(float* losses, T* dlogits, const T* logits, const int32_t* targets, int64_t N, int64_t Vp,
                   int64_t vocab, float dloss, float label_smoothing, int* error_flag, cudaStream_t stream) {
  if (N == 0) return;
  cross_entropy_kernel<<<static_cast<unsigned>(N), row_threads(Vp), 0, stream>>>(
      losses, dlogits, logits, targets, Vp, vocab, dloss, label_smoothing, error_flag);
  LOOM_CUDA_LAUNCHED("cross_entropy_kernel");
}

#define LOOM_INSTANTIATE(T)                                                                                  \
  template void cross_entropy<T>(float*, T*, const T*, const int32_t*, int64_t, int64_t, int64_t, float, float,  \
                                 int*, cudaStream_t);                                                           \
  template void cross_entropy_partials<T>(float*, const T*, const int32_t*, int64_t, int64_t, int64_t, int64_t,  \
                                          int*, cudaStream_t);                                                  \
  template void cross_entropy_from_partials<T>(float*, T*, const float*, const T*, const int32_t*, int, int64_t, \
                                               int64_t, int64_t, int64_t, float, float, int*, cudaStream_t);
LOOM_INSTANTIATE(float)
LOOM_INSTANTIATE(bf16)
LOOM_INSTANTIATE(f16)
#undef LOOM_INSTANTIATE

}  // namespace loom::cuda
