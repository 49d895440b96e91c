// Device helpers shared by the flash-attention kernels: cp.async copies, the 16-bit packing and fp32 helpers,
// quad reductions, and the launch parameters. The tensor-core (wgmma) helpers are in flash_attention_wgmma.cuh.
//
// Accumulator fragments (the layout wgmma leaves in registers, identical to mma.sync m16n8k16's C layout per
// warp; g = lane/4, t = lane%4): in each 16-row x 8-column tile, c0,c1 = C[g][2t..2t+1], c2,c3 = C[g+8][2t..2t+1].
// The register A operand uses mma.sync's A layout: a0 = A[g][2t..2t+1], a1 = A[g+8][2t..], a2 = A[g][2t+8..],
// a3 = A[g+8][2t+8..] — so accumulator tiles 2k and 2k+1 pack straight into the A fragment of k-step k.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace loom::cuda::flash {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// 2^x on the special-function unit (flush-to-zero; 2^-inf = 0). Plain exp2f adds range fix-ups we don't need:
// arguments are ≤ 0 (scores minus a running max or the logsumexp).
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte asynchronous copy global -> shared; when !valid the destination is zero-filled (src-size 0) and
// `src` is not read (it must still be a valid address expression, so callers pass the tile base).
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
               "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int pending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(pending));
}

// Two floats rounded to the 16-bit type T and packed into one register (low half = lo).
template <typename T>
struct Pack16;
template <>
struct Pack16<__nv_bfloat16> {
  __device__ __forceinline__ static uint32_t pack(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
};
template <>
struct Pack16<__half> {
  __device__ __forceinline__ static uint32_t pack(float lo, float hi) {
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
};

template <typename T>
struct Vec2;
template <>
struct Vec2<__nv_bfloat16> {
  using type = __nv_bfloat162;
};
template <>
struct Vec2<__half> {
  using type = __half2;
};
__device__ __forceinline__ float2 to_float2(__nv_bfloat162 v) { return __bfloat1622float2(v); }
__device__ __forceinline__ float2 to_float2(__half2 v) { return __half22float2(v); }

// Whether thread `tid`'s column chunk in load_tile_atoms<.., width, ..> lies inside a head of `dim` columns
// (each thread always copies chunk tid % (width/8); columns past a head dim below the tile width are zero-filled).
template <int width>
__device__ __forceinline__ bool col_ok(int tid, int dim) {
  return (tid % (width / 8)) * 8 < dim;
}

// Max / sum across the 4 threads of a quad (the threads that share one accumulator row).
__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// Shared per-launch arguments. Row t of q for head h of batch b is at qkv + (b*T + t)*qkv_stride + h*dqk, of k
// at + H*dqk + h*dqk, of v at + 2*H*dqk + h*dv; of out/dout at (b*T + t)*out_stride + h*dv. The kernels' tile
// widths DQK >= dqk and DV >= dv (32, 64 or 128 each); the columns past dqk or dv are zero-filled and never
// stored.
template <typename T>
struct Params {
  const T* qkv;
  const T* out;
  const T* dout;
  T* out_w;   // forward output
  T* dqkv;
  float* lse;        // [B, H, T]
  float* dsum;       // [B, H, T] rowsum(dO∘O)
  float* dq_accum;   // [B, T, H, dqk] f32, or null
  int seq, heads, dqk, dv;
  int64_t qkv_stride, out_stride;
  float scale, scale_log2;
  bool causal;

  __device__ __forceinline__ int64_t q_col(int h) const { return int64_t(h) * dqk; }
  __device__ __forceinline__ int64_t k_col(int h) const { return int64_t(heads + h) * dqk; }
  __device__ __forceinline__ int64_t v_col(int h) const { return 2 * int64_t(heads) * dqk + int64_t(h) * dv; }
  __device__ __forceinline__ int64_t o_col(int h) const { return int64_t(h) * dv; }
};

}  // namespace loom::cuda::flash
