// Shared device helpers for the CUDA backend's kernels: element conversions, dtype dispatch, launch sizes and
// warp/block reductions. Internal to kernels/cuda.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "core/dtype.h"
#include "core/error.h"
#include "kernels/cuda/cuda_error.h"

namespace loom::cuda {

using bf16 = __nv_bfloat16;
using f16 = __half;

// ---- element conversions: every kernel computes in f32 ----
__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(bf16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f32(f16 x) { return __half2float(x); }

template <typename T>
__device__ __forceinline__ T from_f32(float x);
template <>
__device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <>
__device__ __forceinline__ bf16 from_f32<bf16>(float x) { return __float2bfloat16_rn(x); }
template <>
__device__ __forceinline__ f16 from_f32<f16>(float x) { return __float2half_rn(x); }

// Runtime-typed access, for the few kernels whose secondary tensors may have any float dtype (convert,
// sum_squares, AdamW). The switch is uniform across a launch, so it costs no divergence; it keeps the number
// of template instantiations (and CI's compile time) small.
enum class Elem : int { F32 = 0, BF16 = 1, F16 = 2 };
inline Elem elem_of(DType t) {
  switch (t) {
    case DType::F32: return Elem::F32;
    case DType::BF16: return Elem::BF16;
    case DType::F16: return Elem::F16;
    default: fail("CUDA backend: dtype ", dtype_name(t), " is not supported (f32, bf16 or f16)");
  }
}
__device__ __forceinline__ float load_elem(const void* p, int64_t i, Elem e) {
  switch (e) {
    case Elem::BF16: return to_f32(static_cast<const bf16*>(p)[i]);
    case Elem::F16: return to_f32(static_cast<const f16*>(p)[i]);
    default: return static_cast<const float*>(p)[i];
  }
}
__device__ __forceinline__ void store_elem(void* p, int64_t i, Elem e, float v) {
  switch (e) {
    case Elem::BF16: static_cast<bf16*>(p)[i] = from_f32<bf16>(v); break;
    case Elem::F16: static_cast<f16*>(p)[i] = from_f32<f16>(v); break;
    default: static_cast<float*>(p)[i] = v; break;
  }
}

// Calls fn(T{}) with T = float, bf16 or f16 for `dtype`; throws for any other dtype.
template <typename Fn>
void dispatch_float(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::F32: fn(float{}); break;
    case DType::BF16: fn(bf16{}); break;
    case DType::F16: fn(f16{}); break;
    default: fail("CUDA backend: dtype ", dtype_name(dtype), " is not supported (f32, bf16 or f16)");
  }
}

// Calls fn(R{}) with the element type R of a residual-stream tensor of dtype `residual` beside compute tensors
// of element type T: T itself, or float for an f32 stream beside bf16/f16 (the only mixed pair the kernels are
// instantiated for; the op contract has checked the dtypes).
template <typename T, typename Fn>
void dispatch_residual(DType residual, Fn&& fn) {
  if (residual == DType::F32)
    fn(float{});
  else
    fn(T{});
}

// Blocks for a grid-stride loop over n elements: enough to fill the GPU, capped so huge n loops instead.
inline unsigned grid_for(int64_t n, int threads = 256) {
  const int64_t blocks = (n + threads - 1) / threads;
  return static_cast<unsigned>(std::clamp<int64_t>(blocks, 1, 65536));
}

// for (int64_t i = global thread index; i < n; i += total threads): the loop of every elementwise kernel.
#define LOOM_GRID_STRIDE(i, n) \
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < (n); i += int64_t{gridDim.x} * blockDim.x)

// 16 bytes of T: the unit of vectorised loads and stores (8 bf16/f16 or 4 f32); rows read this way must start
// on 16-byte boundaries.
template <typename T>
struct alignas(16) Pack16 {
  static constexpr int kSize = 16 / sizeof(T);
  T e[kSize];
};
inline bool is_aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Elementwise kernels move K consecutive elements per thread and loop iteration ("pack" i = elements
// [K·i, K·i + K)): with K·sizeof(T) a multiple of 16 as whole 16-byte loads and stores, K = 1 one element.
// Scalar 2-byte accesses leave bf16 kernels at about half the memory bandwidth (Nsight Compute, H100).
template <int K, typename T>
__device__ __forceinline__ void load_pack(float (&v)[K], const T* p, int64_t i) {
  if constexpr (K * sizeof(T) % 16 == 0) {
    constexpr int per = Pack16<T>::kSize;
#pragma unroll
    for (int j = 0; j < K / per; ++j) {
      const Pack16<T> chunk = reinterpret_cast<const Pack16<T>*>(p)[i * (K / per) + j];
#pragma unroll
      for (int e = 0; e < per; ++e) v[j * per + e] = to_f32(chunk.e[e]);
    }
  } else {
#pragma unroll
    for (int e = 0; e < K; ++e) v[e] = to_f32(p[i * K + e]);
  }
}
template <int K, typename T>
__device__ __forceinline__ void store_pack(T* p, int64_t i, const float (&v)[K]) {
  if constexpr (K * sizeof(T) % 16 == 0) {
    constexpr int per = Pack16<T>::kSize;
#pragma unroll
    for (int j = 0; j < K / per; ++j) {
      Pack16<T> chunk;
#pragma unroll
      for (int e = 0; e < per; ++e) chunk.e[e] = from_f32<T>(v[j * per + e]);
      reinterpret_cast<Pack16<T>*>(p)[i * (K / per) + j] = chunk;
    }
  } else {
#pragma unroll
    for (int e = 0; e < K; ++e) p[i * K + e] = from_f32<T>(v[e]);
  }
}

// Runs an elementwise kernel over n elements in packs of K where every pointer it touches is 16-byte aligned
// (`aligned`): launch(std::integral_constant<int, K>{}, first, packs) for the whole packs, then
// launch(std::integral_constant<int, 1>{}, first, count) for the elements after them (or all of them when not
// aligned). `first` is the element the launch starts at: the launcher offsets its pointers by it.
template <int K, typename Launch>
void launch_in_packs(int64_t n, bool aligned, Launch&& launch) {
  const int64_t packed = aligned ? n / K * K : 0;
  if (packed > 0) launch(std::integral_constant<int, K>{}, int64_t{0}, packed / K);
  if (packed < n) launch(std::integral_constant<int, 1>{}, packed, n - packed);
}

// ---- reductions (fixed order, so deterministic) ----
__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result. `scratch`
// holds 32 floats of shared memory; the function synchronises before returning so it can be reused.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  v = warp_sum(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : 0.f;
  v = warp_sum(v);
  __syncthreads();
  return v;
}
__device__ __forceinline__ float block_max(float v, float* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  v = warp_max(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : -INFINITY;
  v = warp_max(v);
  __syncthreads();
  return v;
}

// Bits of the device-side error flag (CudaBackend::error_flag()): kernels set them with atomicOr on bad ids
// and the next synchronize() reports them.
enum ErrorBit : int {
  kBadEmbeddingId = 1,
  kBadTarget = 2,
};

}  // namespace loom::cuda
