// Fused softmax cross-entropy forward + backward over the padded vocabulary, whole or split over the vocabulary
// across tensor-parallel ranks (partials per rank, then the loss and gradient from every rank's partials).
#include <type_traits>

#include "kernels/cuda/cuda_ops.cuh"

namespace loom::cuda {

namespace {

// Threads of the row kernels: up to kLossThreads, two blocks per SM, so the rows in flight (264 on an H100, 26 MB
// of bf16 logits at GPT-2's vocabulary) stay in L2 between the statistics pass and the gradient pass: the
// logits are read from DRAM once and the gradient written once.
constexpr int kLossThreads = 512;

// Calls fn(c0, v) over this thread's part of a row z of `width` columns, v holding z[c0 .. c0 + K) as floats:
// with kVec (width a multiple of P = Pack16<T>::kSize, z 16-byte aligned) K = P from one 16-byte load per
// pack t, t + blockDim, ..., kBatch loads issued before the first is used (bytes in flight); else K = 1,
// elements t, t + blockDim, .... kStreaming marks the loads as the last use of the data (evict first).
template <typename T, bool kVec, bool kStreaming = false, typename Fn>
__device__ __forceinline__ void for_each_chunk(const T* z, int64_t width, Fn&& fn) {
  if constexpr (kVec) {
    constexpr int P = Pack16<T>::kSize, kBatch = 4;
    const int4* packs = reinterpret_cast<const int4*>(z);
    const int64_t n = width / P;
    for (int64_t p0 = threadIdx.x; p0 < n; p0 += kBatch * int64_t{blockDim.x}) {
      int4 raw[kBatch];
#pragma unroll
      for (int j = 0; j < kBatch; ++j) {
        const int64_t p = p0 + j * int64_t{blockDim.x};
        if (p < n) raw[j] = kStreaming ? __ldcs(packs + p) : packs[p];
      }
#pragma unroll
      for (int j = 0; j < kBatch; ++j) {
        const int64_t p = p0 + j * int64_t{blockDim.x};
        if (p >= n) break;
        const Pack16<T> pack = *reinterpret_cast<const Pack16<T>*>(&raw[j]);
        float v[P];
#pragma unroll
        for (int i = 0; i < P; ++i) v[i] = to_f32(pack.e[i]);
        fn(p * P, v);
      }
    }
  } else {
    for (int64_t c = threadIdx.x; c < width; c += blockDim.x) {
      const float v[1] = {to_f32(z[c])};
      fn(c, v);
    }
  }
}

struct RowStats {
  float max, sum, sum_z;  // max_c z_c, Σ_c exp(z_c - max), Σ_c z_c
};

// Softmax statistics of a row's class columns z[0, valid) (z has `width` >= valid readable columns), shared by
// every thread of the block: each thread keeps a running max m and s = Σ exp(z - m) over its elements, one
// rescale per chunk, without branches:
//   m' = max(m, max of the chunk),  s = s·exp(m - m') + Σ_chunk exp(z - m')
// (exponents taken against 0 while m' is still -inf, the padding counting as -inf, so nothing is -inf - -inf);
// then block reductions combine the threads:  max = max_t m_t,  sum = Σ_t s_t·exp(m_t - max),  sum_z = Σ z.
// exp is __expf (ex2.approx, relative error ~1e-7 beside the 1e-6 of rounding z - max in f32).
template <typename T, bool kVec>
__device__ __forceinline__ RowStats row_stats(const T* z, int64_t width, int64_t valid, float* scratch) {
  float m = -INFINITY, s = 0.f, sum_z = 0.f;
  for_each_chunk<T, kVec>(z, kVec ? width : valid, [&](int64_t c0, const auto& v) {
    constexpr int K = std::extent_v<std::remove_cvref_t<decltype(v)>>;
    float x[K], new_max = m;
#pragma unroll
    for (int i = 0; i < K; ++i) {
      const bool counted = c0 + i < valid;
      x[i] = counted ? v[i] : -INFINITY;
      sum_z += counted ? v[i] : 0.f;
      new_max = fmaxf(new_max, x[i]);
    }
    const float base = new_max == -INFINITY ? 0.f : new_max;
    s *= __expf(m - base);
#pragma unroll
    for (int i = 0; i < K; ++i) s += __expf(x[i] - base);
    m = new_max;
  });
  const float row_max = block_max(m, scratch);
  const float row_sum = block_sum(m == -INFINITY ? 0.f : s * __expf(m - row_max), scratch);
  return {row_max, row_sum, block_sum(sum_z, scratch)};
}

// dlogits[c] = dloss·(exp(z_c - lse) - q_c) for c < valid, with q_c = uniform + hit·[c = target]; 0 for the
// padding columns c >= valid. Each thread reads its elements of z before writing the same elements, so
// dlogits may alias logits. With kVec the loads are the last use of z (evict first) and the 16-byte stores
// streaming: the gradient is read back only by the next kernel.
template <typename T, bool kVec>
__device__ __forceinline__ void write_gradient(T* dz, const T* z, int64_t width, int64_t valid, int64_t target,
                                               float lse, float dloss, float uniform, float hit) {
  for_each_chunk<T, kVec, true>(z, width, [&](int64_t c0, const auto& v) {
    constexpr int K = std::extent_v<std::remove_cvref_t<decltype(v)>>;
    float d[K];
#pragma unroll
    for (int i = 0; i < K; ++i) {
      const int64_t c = c0 + i;
      d[i] = c < valid ? dloss * (__expf(v[i] - lse) - uniform - (c == target ? hit : 0.f)) : 0.f;
    }
    if constexpr (kVec) {
      Pack16<T> pack;
#pragma unroll
      for (int i = 0; i < K; ++i) pack.e[i] = from_f32<T>(d[i]);
      __stcs(reinterpret_cast<int4*>(dz + c0), *reinterpret_cast<const int4*>(&pack));
    } else {
      dz[c0] = from_f32<T>(d[0]);
    }
  });
}

// One block per row n, logits z = logits[n, :vocab] (the columns vocab..Vp-1 are padding):
//   lse = log Σ_c exp(z_c)   (row_stats)
//   q = (1-ε)·onehot(t) + ε/vocab,   loss[n] = lse - Σ_c q_c z_c = lse - (1-ε) z_t - (ε/vocab) Σ_c z_c
//   dlogits[n, c] = dloss·(exp(z_c - lse) - q_c) for c < vocab, 0 for the padding
// A target of -1 (ignored) gives loss 0 and a zero gradient row; a target outside [-1, vocab) is flagged and
// treated the same. dlogits may alias logits: each thread reads its element before overwriting it, and the
// statistics are complete (block reductions) before any write. Nothing of size [N, Vp] is kept in f32.
template <typename T, bool kVec>
__global__ void __launch_bounds__(kLossThreads, 2)
    cross_entropy_kernel(float* losses, T* dlogits, const T* logits, const int32_t* targets, int64_t Vp,
                         int64_t vocab, float dloss, float smoothing, int* error_flag) {
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
  const RowStats stats = row_stats<T, kVec>(z, Vp, vocab, scratch);
  const float lse = stats.max + logf(stats.sum);
  const float z_target = to_f32(z[target]);
  const float uniform = smoothing / static_cast<float>(vocab);
  if (threadIdx.x == 0) losses[row] = lse - (1.f - smoothing) * z_target - uniform * stats.sum_z;
  if (!dlogits) return;
  __syncthreads();  // every thread has read z[target] before it may be overwritten (dlogits aliasing logits)
  write_gradient<T, kVec>(dlogits + row * Vp, z, Vp, vocab, target, lse, dloss, uniform, 1.f - smoothing);
}

// One block per row over this rank's Vr columns, of which the first `valid` are classes:
//   (m, s, Σz) = row_stats over the class columns, and the target's logit if the target is a local column
//   (else 0); partials[row] = (m, s, z_target, Σz).
// Ignored rows and ranks without class columns write (-inf, 0, 0, 0). Bad targets are flagged and ignored.
template <typename T, bool kVec>
__global__ void __launch_bounds__(kLossThreads, 2)
    cross_entropy_partials_kernel(float* partials, const T* logits, const int32_t* targets, int64_t Vr,
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
  const RowStats stats = row_stats<T, kVec>(z, Vr, valid, scratch);
  if (threadIdx.x != 0) return;
  const int64_t local_target = target - vocab_begin;
  out[0] = stats.max;
  out[1] = stats.sum;
  out[2] = local_target >= 0 && local_target < valid ? to_f32(z[local_target]) : 0.f;
  out[3] = stats.sum_z;
}

// One block per row. Every thread combines the R ranks' partials of its row itself (R·4 floats, the same
// addresses across the block, so they are broadcast loads; no shared memory or barrier needed):
//   M = max_r m_r, S = Σ_r s_r·exp(m_r - M), lse = M + log S, z_target = Σ_r, Σz = Σ_r,
//   loss = lse - (1-ε) z_target - (ε/vocab) Σz,
//   dlogits[row, c] = dloss·(exp(z_c - lse) - (1-ε)·[vocab_begin + c = target] - ε/vocab) for c < valid, else 0.
// Each thread reads its logit before overwriting it, so dlogits may alias logits. Ignored rows (and bad
// targets, flagged) get loss 0 and a zero gradient row.
template <typename T, bool kVec>
__global__ void __launch_bounds__(kLossThreads, 2)
    cross_entropy_from_partials_kernel(float* losses, T* dlogits, const float* gathered, const T* logits,
                                       const int32_t* targets, int R, int64_t N, int64_t Vr, int64_t vocab_begin,
                                       int64_t valid, int64_t vocab, float dloss, float smoothing,
                                       int* error_flag) {
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
  write_gradient<T, kVec>(dlogits + row * Vr, logits + row * Vr, Vr, valid, target - vocab_begin, lse, dloss,
                          uniform, 1.f - smoothing);
}

// Threads per row-block for rows of `width` columns read `per_load` at a time: a multiple of 32 up to
// kLossThreads, no more than the row has loads.
int row_threads(int64_t width, int per_load) {
  const int64_t loads = (width + per_load - 1) / per_load;
  return static_cast<int>(std::min<int64_t>(kLossThreads, (loads + 31) / 32 * 32));
}

// Whether rows of `width` columns at these pointers (null = absent) can be read in 16-byte packs.
template <typename T>
bool vectorizable(int64_t width, const void* a, const void* b = nullptr) {
  return width % Pack16<T>::kSize == 0 && is_aligned16(a) && (!b || is_aligned16(b));
}

// Launches kernel<T, true> over 16-byte packs where vectorizable, else kernel<T, false>, one block per row.
#define LOOM_LAUNCH_ROWS(kernel, vec, width, N, stream, ...)                                                  \
  do {                                                                                                        \
    if (vec)                                                                                                  \
      kernel<T, true><<<static_cast<unsigned>(N), row_threads(width, Pack16<T>::kSize), 0, stream>>>(__VA_ARGS__); \
    else                                                                                                      \
      kernel<T, false><<<static_cast<unsigned>(N), row_threads(width, 1), 0, stream>>>(__VA_ARGS__);       \
    LOOM_CUDA_LAUNCHED(#kernel);                                                                              \
  } while (0)

// This rank's class columns: the global columns [vocab_begin, vocab_begin + Vr) below vocab.
int64_t class_columns(int64_t Vr, int64_t vocab_begin, int64_t vocab) {
  return std::clamp<int64_t>(vocab - vocab_begin, 0, Vr);
}

}  // namespace

template <typename T>
void cross_entropy_partials(float* partials, const T* logits, const int32_t* targets, int64_t N, int64_t Vr,
                            int64_t vocab_begin, int64_t vocab, int* error_flag, cudaStream_t stream) {
  if (N == 0) return;
  LOOM_LAUNCH_ROWS(cross_entropy_partials_kernel, vectorizable<T>(Vr, logits), Vr, N, stream, partials, logits,
                   targets, Vr, vocab_begin, class_columns(Vr, vocab_begin, vocab), vocab, error_flag);
}

template <typename T>
void cross_entropy_from_partials(float* losses, T* dlogits, const float* gathered, const T* logits,
                                 const int32_t* targets, int R, int64_t N, int64_t Vr, int64_t vocab_begin,
                                 int64_t vocab, float dloss, float label_smoothing, int* error_flag,
                                 cudaStream_t stream) {
  if (N == 0) return;
  LOOM_LAUNCH_ROWS(cross_entropy_from_partials_kernel, vectorizable<T>(Vr, logits, dlogits), Vr, N, stream, losses,
                   dlogits, gathered, logits, targets, R, N, Vr, vocab_begin, class_columns(Vr, vocab_begin, vocab),
                   vocab, dloss, label_smoothing, error_flag);
}

template <typename T>
void cross_entropy(float* losses, T* dlogits, const T* logits, const int32_t* targets, int64_t N, int64_t Vp,
                   int64_t vocab, float dloss, float label_smoothing, int* error_flag, cudaStream_t stream) {
  if (N == 0) return;
  LOOM_LAUNCH_ROWS(cross_entropy_kernel, vectorizable<T>(Vp, logits, dlogits), Vp, N, stream, losses, dlogits, logits,
                   targets, Vp, vocab, dloss, label_smoothing, error_flag);
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
#undef LOOM_LAUNCH_ROWS

}  // namespace loom::cuda
