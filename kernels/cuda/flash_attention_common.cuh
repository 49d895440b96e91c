// Device helpers shared by the flash-attention kernels: tensor-core tiles (mma.sync m16n8k16 with fp32
// accumulators), ldmatrix fragment loads, cp.async copies into swizzled shared-memory tiles.
//
// Fragment layouts (PTX ISA, mma.m16n8k16, g = lane/4, t = lane%4):
//   A 16x16 (row-major): a0 = A[g][2t..2t+1], a1 = A[g+8][2t..], a2 = A[g][2t+8..], a3 = A[g+8][2t+8..]
//   B 16x8  (k x n):     b0 = B[2t..2t+1][g],  b1 = B[2t+8..2t+9][g]
//   C 16x8  (fp32):      c0,c1 = C[g][2t..2t+1], c2,c3 = C[g+8][2t..2t+1]
// A C tile of S feeds the A operand of the next product directly (the P·V trick): S tiles 2k and 2k+1 become
// the A fragment for k-step k.
//
// Shared-memory tiles hold rows of W 16-bit elements (W = 64 or 128, i.e. 8 or 16 chunks of 16 bytes); chunk c
// of row r is stored at chunk c ^ (r & 7), so the 8 rows one ldmatrix phase reads hit 8 different bank groups
// (see swz for 32-element rows).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace loom::cuda::flash {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// Element offset of (row, 16-byte chunk) in a swizzled tile with `width` elements per row. Rows of 32
// elements (64 bytes, two rows per 128-byte bank cycle) swizzle by (row/2) & 3 instead.
template <int width>
__device__ __forceinline__ int swz(int row, int chunk) {
  static_assert(width == 32 || width % 64 == 0, "swizzle defined for rows of 32 or 64k elements");
  if constexpr (width == 32) return row * width + ((chunk ^ ((row >> 1) & 3)) << 3);
  return row * width + ((chunk ^ (row & 7)) << 3);
}

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

// Shared-memory byte address of (row, chunk) in a swizzled tile of `width` elements per row.
template <int width>
__device__ __forceinline__ uint32_t tile_addr(const void* tile, int row, int chunk) {
  return smem_addr(tile) + swz<width>(row, chunk) * 2;
}
// Address of (row + drow, chunk ^ dchunk) from the address of (row, chunk): one XOR and an immediate add, so
// unrolled fragment loads don't each hold an address register. Valid when drow is a multiple of 8, dchunk's
// bits are disjoint from chunk's, dchunk < width/8, and the tile starts on a (2·width)-byte boundary.
template <int width>
__device__ __forceinline__ uint32_t tile_step(uint32_t addr, int drow, int dchunk) {
  return (addr ^ (dchunk << 4)) + drow * width * 2;
}

// Returns x unchanged but opaque to the optimiser. Applied to the fragment base addresses once per loop
// iteration, it stops the compiler from hoisting every tile_step variant out of the loop into its own register
// (which spilled); each variant is then one XOR next to its load.
__device__ __forceinline__ uint32_t opaque(uint32_t x) {
  asm volatile("" : "+r"(x));
  return x;
}

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

template <typename T>
struct MmaOp;
template <>
struct MmaOp<__nv_bfloat16> {
  // c += a · b on one 16x8x16 tile, bf16 inputs, fp32 accumulators.
  __device__ __forceinline__ static void run(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  __device__ __forceinline__ static uint32_t pack(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
};
template <>
struct MmaOp<__half> {
  __device__ __forceinline__ static void run(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
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

// A operand for k-step k from accumulator tiles s[2k], s[2k+1] (rounded to T).
template <typename T>
__device__ __forceinline__ void acc_to_a(uint32_t (&a)[4], const float (&lo)[4], const float (&hi)[4]) {
  a[0] = MmaOp<T>::pack(lo[0], lo[1]);
  a[1] = MmaOp<T>::pack(lo[2], lo[3]);
  a[2] = MmaOp<T>::pack(hi[0], hi[1]);
  a[3] = MmaOp<T>::pack(hi[2], hi[3]);
}

// Copies `rows` rows of `width` elements (row r at src + r*stride) into a swizzled shared tile; rows at or past
// `valid_rows` are zero-filled. Each thread always copies the same 16-byte column chunk (tid % (width/8)), so
// head dims below the tile width are handled by one per-thread flag: `col_ok` = that chunk is inside the head
// (see col_ok); otherwise the thread zero-fills. All `threads` threads of the block call this.
template <int rows, int width, int threads, typename T>
__device__ __forceinline__ void load_tile(T* dst, const T* src, int64_t stride, int valid_rows, bool col_ok,
                                          int tid) {
  constexpr int chunks = width / 8;
  static_assert(rows * chunks % threads == 0 && threads % chunks == 0, "tile copy must split evenly over the block");
#pragma unroll
  for (int j = 0; j < rows * chunks / threads; ++j) {
    const int i = tid + j * threads, r = i / chunks, c = i % chunks;
    const bool ok = r < valid_rows && col_ok;
    cp_async_16(dst + swz<width>(r, c), ok ? src + r * stride + c * 8 : src, ok);
  }
}
// Whether thread `tid`'s column chunk in load_tile<.., width, ..> lies inside a head of `dim` columns.
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
// width D (64 or 128) is at least max(dqk, dv); the columns past dqk or dv are zero-filled and never stored.
template <typename T>
struct Params {
  const T* qkv;
  const T* out;
  const T* dout;
  T* out_w;   // forward output
  T* dqkv;
  float* lse;        // [B, H, T]
  float* dsum;       // [B, H, T] rowsum(dO∘O)
  float* dq_accum;   // [B, T, H, D] f32, or null
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
