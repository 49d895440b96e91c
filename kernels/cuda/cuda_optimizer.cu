// Optimizer kernels: the global squared norm for gradient clipping, sums into a device scalar (the step's loss),
// and a fused AdamW step that decides clipping and skipping on the device.
#include <vector>

#include "kernels/cuda/cuda_ops.cuh"
#include "kernels/step_stats.h"

namespace loom::cuda {

namespace {

constexpr int kThreads = 256;

// partials[blockIdx.x] = Σ x² over this block's grid-stride packs of K elements (load_pack), then over the
// n - K·packs elements after them, in f32 (a block sums at most a few thousand elements per thread, so f32
// loses little; the cross-block sum is in double).
template <int K, typename T>
__global__ void sum_squares_partials_kernel(float* partials, const T* x, int64_t packs, int64_t n) {
  __shared__ float scratch[32];
  float sum = 0.f;
  LOOM_GRID_STRIDE(i, packs) {
    float v[K];
    load_pack<K>(v, x, i);
#pragma unroll
    for (int e = 0; e < K; ++e) sum += v[e] * v[e];
  }
  LOOM_GRID_STRIDE(i, n - packs * K) {
    const float v = to_f32(x[packs * K + i]);
    sum += v * v;
  }
  sum = block_sum(sum, scratch);
  if (threadIdx.x == 0) partials[blockIdx.x] = sum;
}

// *total += (weight · Σ x) / count over n floats, in double, by one block: strided per-thread sums, then a
// fixed-order tree (deterministic).
__global__ void accumulate_sum_kernel(double* total, const float* x, int64_t n, double weight, double count) {
  __shared__ double sums[kThreads];
  double sum = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) sum += x[i];
  sums[threadIdx.x] = sum;
  __syncthreads();
  for (int half = blockDim.x / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) sums[threadIdx.x] += sums[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) *total += (weight * sums[0]) / count;
}

// The multiplier of this update's gradients (kernels/step_stats.h decides it from the step's statistics when
// they are given), or false when the step must not change anything (its loss or gradient norm is not finite).
// Every thread decides alone from the same three numbers, so no thread waits for another.
__device__ __forceinline__ bool update_scale(const AdamWArgs& a, float& scale) {
  double s = a.grad_scale;
  if (a.step_stats && !step_update_scale(a.step_stats, a.max_grad_norm, a.grad_scale, &s)) return false;
  scale = static_cast<float>(s);
  return true;
}

// Per element, in f32 (param, m, v are the f32 master copies):
//   g = grad·grad_scale;  m = β1 m + (1-β1) g;  v = β2 v + (1-β2) g²
//   param -= lr·( (m/(1-β1^step)) / (√(v/(1-β2^step)) + eps) + weight_decay·param )
//   compute_copy = param in its own dtype (if not null)
// Updates p, m and v in place from the gradient g.
__device__ __forceinline__ void adamw_update(float& p, float& m, float& v, float g, float grad_scale,
                                             const AdamWArgs& a) {
  g *= grad_scale;
  m = a.beta1 * m + (1.f - a.beta1) * g;
  v = a.beta2 * v + (1.f - a.beta2) * g * g;
  const float update = (m / a.bias_correction1) / (sqrtf(v / a.bias_correction2) + a.eps);
  p -= a.lr * (update + a.weight_decay * p);
}

// Any gradient and compute-copy dtypes, one element per thread and iteration.
__global__ void adamw_kernel(float* param, float* m, float* v, const void* grad, Elem grad_elem,
                             void* compute_copy, Elem copy_elem, int64_t n, AdamWArgs a) {
  float scale;
  if (!update_scale(a, scale)) return;
  LOOM_GRID_STRIDE(i, n) {
    float p = param[i], mi = m[i], vi = v[i];
    adamw_update(p, mi, vi, load_elem(grad, i, grad_elem), scale, a);
    m[i] = mi;
    v[i] = vi;
    param[i] = p;
    if (compute_copy) store_elem(compute_copy, i, copy_elem, p);
  }
}

// The training case (16-bit gradients and compute copy of one dtype G, every pointer 16-byte aligned) in packs
// of 8 elements: 16-byte loads and stores throughout, which the scalar kernel's 2-byte accesses fall well short of.
template <typename G>
__global__ void adamw_packed_kernel(float* param, float* m, float* v, const G* grad, G* compute_copy, int64_t packs,
                                    AdamWArgs a) {
  constexpr int K = Pack16<G>::kSize;
  float scale;
  if (!update_scale(a, scale)) return;
  LOOM_GRID_STRIDE(i, packs) {
    float p[K], mi[K], vi[K], g[K];
    load_pack<K>(p, param, i);
    load_pack<K>(mi, m, i);
    load_pack<K>(vi, v, i);
    load_pack<K>(g, grad, i);
#pragma unroll
    for (int e = 0; e < K; ++e) adamw_update(p[e], mi[e], vi[e], g[e], scale, a);
    store_pack<K>(m, i, mi);
    store_pack<K>(v, i, vi);
    store_pack<K>(param, i, p);
    if (compute_copy) store_pack<K>(compute_copy, i, p);
  }
}

// Blocks for one tensor's partial sums: a function of n alone, so the result does not depend on the GPU.
int64_t sum_squares_blocks(int64_t n) {
  return std::clamp<int64_t>((n + kThreads * 16 - 1) / (kThreads * 16), 1, 1024);
}

}  // namespace

void accumulate_sum(double* total, const float* x, int64_t n, double weight, double count, cudaStream_t stream) {
  accumulate_sum_kernel<<<1, kThreads, 0, stream>>>(total, x, n, weight, count);
  LOOM_CUDA_LAUNCHED("accumulate_sum_kernel");
}

void accumulate_sum_squares(double* total, const std::vector<SumSquaresInput>& inputs, cudaStream_t stream) {
  int64_t total_blocks = 0;
  for (const auto& in : inputs) total_blocks += sum_squares_blocks(in.n);
  if (total_blocks == 0) return;
  ScratchBuffer partials(static_cast<size_t>(total_blocks) * sizeof(float));
  float* part = partials.as<float>();
  int64_t offset = 0;
  for (const auto& in : inputs) {
    const int64_t blocks = sum_squares_blocks(in.n);
    auto launch = [&](auto tag) {
      using T = decltype(tag);
      const T* x = static_cast<const T*>(in.data);
      constexpr int K = Pack16<T>::kSize;
      if (is_aligned16(x))
        sum_squares_partials_kernel<K><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(part + offset, x,
                                                                                               in.n / K, in.n);
      else
        sum_squares_partials_kernel<1><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(part + offset, x,
                                                                                               in.n, in.n);
      LOOM_CUDA_LAUNCHED("sum_squares_partials_kernel");
    };
    switch (in.elem) {
      case Elem::BF16: launch(bf16{}); break;
      case Elem::F16: launch(f16{}); break;
      default: launch(float{}); break;
    }
    offset += blocks;
  }
  accumulate_sum(total, part, total_blocks, 1.0, 1.0, stream);  // (1·Σ)/1 is Σ exactly
}

void adamw(float* param, float* m, float* v, const void* grad, Elem grad_elem, void* compute_copy, Elem copy_elem,
           int64_t n, const AdamWArgs& args, cudaStream_t stream) {
  int64_t packed = 0;
  const bool sixteen_bit = grad_elem == Elem::BF16 || grad_elem == Elem::F16;
  if (sixteen_bit && (!compute_copy || copy_elem == grad_elem) && is_aligned16(param) && is_aligned16(m) &&
      is_aligned16(v) && is_aligned16(grad) && (!compute_copy || is_aligned16(compute_copy))) {
    auto launch = [&](auto tag) {
      using G = decltype(tag);
      constexpr int K = Pack16<G>::kSize;
      const int64_t packs = n / K;
      packed = packs * K;
      if (packs == 0) return;
      adamw_packed_kernel<<<grid_for(packs), kThreads, 0, stream>>>(param, m, v, static_cast<const G*>(grad),
                                                                   static_cast<G*>(compute_copy), packs, args);
      LOOM_CUDA_LAUNCHED("adamw_packed_kernel");
    };
    if (grad_elem == Elem::BF16) launch(bf16{});
    else launch(f16{});
  }
  if (packed == n) return;
  const size_t grad_bytes = grad_elem == Elem::F32 ? 4 : 2, copy_bytes = copy_elem == Elem::F32 ? 4 : 2;
  const int64_t rest = n - packed;
  adamw_kernel<<<grid_for(rest), kThreads, 0, stream>>>(
      param + packed, m + packed, v + packed, static_cast<const char*>(grad) + packed * grad_bytes, grad_elem,
      compute_copy ? static_cast<char*>(compute_copy) + packed * copy_bytes : nullptr, copy_elem, rest, args);
  LOOM_CUDA_LAUNCHED("adamw_kernel");
}

}  // namespace loom::cuda
