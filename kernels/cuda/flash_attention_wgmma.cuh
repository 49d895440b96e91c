// Hopper tensor-core helpers shared by the flash-attention kernels: wgmma (asynchronous warpgroup MMA) with
// operands in shared memory described by matrix descriptors, and the 128-byte-swizzled "atom" tile layout it
// reads.
//
// Atom layout: a tile of `rows` rows and `width` 16-bit columns is stored as [width/64][rows][64]; within an
// atom, row r is 128 bytes and its 16-byte chunk c sits at chunk c ^ (r % 8); atoms start on 1024-byte
// boundaries. For wgmma this one layout is both
//   K-major  (rows = M or N, columns = K): descriptor at atom (k/64), byte 2·(k % 64) of row 0, stride byte
//            offset 1024 (8-row groups), leading byte offset unused (16);
//   MN-major (rows = K, columns = M or N): descriptor at row k, leading byte offset = rows·128 (next 64 columns),
//            stride byte offset 1024 (next 8 rows of K); the instruction's transpose flag set.
// A tile narrower than 64 columns (tile width 32) uses the first width/8 chunks of each 128-byte row (atom_cols):
// one layout for every width, read K-major over fewer k-steps, or MN-major with N = 32, the first 4 of the
// canonical MN-major layout's 8 16-byte columns per row (PTX ISA "Canonical Layouts": ((T,8,m),(8,k))).
// Accumulator and register-A fragments follow mma.sync's C and A layouts per warp (warp w of the warpgroup
// holds rows 16w..16w+15).
#pragma once
#include <type_traits>

#include "kernels/cuda/flash_attention_common.cuh"

namespace loom::cuda::flash {

// Columns a tile of `width` columns occupies in atom layout: whole 64-column atoms.
constexpr int atom_cols(int width) { return (width + 63) / 64 * 64; }

// Element offset of (row, 16-byte chunk) in a [width/64][rows][64] swizzled atom tile.
template <int rows>
__device__ __forceinline__ int atom_off(int row, int chunk) {
  return (chunk >> 3) * rows * 64 + row * 64 + (((chunk & 7) ^ (row & 7)) << 3);
}

// Copies `rows` rows of `width` elements (row r at src + r*stride) into an atom-layout tile with cp.async; rows at
// or past `valid_rows`, and this thread's column chunk when !col_ok (see col_ok), are zero-filled. All `threads`
// threads of the block call this.
template <int rows, int width, int threads, typename T>
__device__ __forceinline__ void load_tile_atoms(T* dst, const T* src, int64_t stride, int valid_rows, bool col_ok,
                                                int tid) {
  constexpr int chunks = width / 8;
  static_assert(rows * chunks % threads == 0 && threads % chunks == 0, "tile copy must split evenly over the block");
#pragma unroll
  for (int j = 0; j < rows * chunks / threads; ++j) {
    const int i = tid + j * threads, r = i / chunks, c = i % chunks;
    const bool ok = r < valid_rows && col_ok;
    cp_async_16(dst + atom_off<rows>(r, c), ok ? src + r * stride + c * 8 : src, ok);
  }
}

// wgmma shared-memory matrix descriptor (PTX ISA "Matrix Descriptor Format"): start address, leading and stride
// byte offsets (all >> 4), layout type 1 = 128-byte swizzle. Base offset 0: atoms are 1024-byte aligned.
__device__ __forceinline__ uint64_t smem_desc(uint32_t addr, uint32_t lbo_bytes, uint32_t sbo_bytes) {
  return uint64_t((addr & 0x3FFFF) >> 4) | (uint64_t((lbo_bytes >> 4) & 0x3FFF) << 16) |
         (uint64_t((sbo_bytes >> 4) & 0x3FFF) << 32) | (uint64_t(1) << 62);
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_wait_all() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }
// Waits until at most `pending` of this warpgroup's committed wgmma groups are still in flight (oldest first).
template <int pending>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(pending) : "memory");
}
// Orders this thread's ordinary (generic-proxy) shared-memory writes, cp.async included, before later reads by
// the tensor cores' async proxy; followed by a barrier for the other threads' writes.
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
// Pins registers that an in-flight wgmma reads or writes: the compiler may not move their uses across this.
template <int n>
__device__ __forceinline__ void pin(float (&r)[n]) {
#pragma unroll
  for (int i = 0; i < n; ++i) asm volatile("" : "+f"(r[i])::"memory");
}
template <int n>
__device__ __forceinline__ void pin(uint32_t (&r)[n][4]) {
#pragma unroll
  for (int i = 0; i < n; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) asm volatile("" : "+r"(r[i][j])::"memory");
}

// The inline assembly of one wgmma.mma_async m64nNk16 (f32 accumulators, 16-bit inputs), spelled out per N and
// type because asm operand lists must be literal: operands %0 .. %(N/2 - 1) are the accumulators d; for _SS then
// the two descriptors, scale_d and the transpose flags, for _RS the four A registers, B's descriptor and scale_d.
#define LOOM_WGMMA_D4(i) "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3])
#define LOOM_WGMMA_D8(i) LOOM_WGMMA_D4(i), LOOM_WGMMA_D4(i + 4)
#define LOOM_WGMMA_D16(i) LOOM_WGMMA_D8(i), LOOM_WGMMA_D8(i + 8)
#define LOOM_WGMMA_D32(i) LOOM_WGMMA_D16(i), LOOM_WGMMA_D16(i + 16)
#define LOOM_WGMMA_D64(i) LOOM_WGMMA_D32(i), LOOM_WGMMA_D32(i + 32)
#define LOOM_WGMMA_N16_REGS "{%0, %1, %2, %3, %4, %5, %6, %7}"
#define LOOM_WGMMA_N32_REGS "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}"
#define LOOM_WGMMA_N64_REGS "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define LOOM_WGMMA_N128_REGS "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"
#define LOOM_WGMMA_SS(SHAPE, TYPE, REGS, A, B, S, TA, TB, ...)                                                 \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" #S ", 0;\nwgmma.mma_async.sync.aligned." SHAPE ".f32." TYPE \
               "." TYPE " " REGS ", %" #A ", %" #B ", p, 1, 1, %" #TA ", %" #TB ";\n}\n"                          \
               : __VA_ARGS__                                                                                    \
               : "l"(desc_a), "l"(desc_b), "r"(scale_d), "n"(kTransA), "n"(kTransB))
#define LOOM_WGMMA_RS(SHAPE, TYPE, REGS, A0, A1, A2, A3, B, S, ...)                                            \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" #S ", 0;\nwgmma.mma_async.sync.aligned." SHAPE ".f32." TYPE \
               "." TYPE " " REGS ", {%" #A0 ", %" #A1 ", %" #A2 ", %" #A3 "}, %" #B ", p, 1, 1, 1;\n}\n"             \
               : __VA_ARGS__                                                                                    \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(scale_d))

template <typename T>
constexpr bool kIsBf16 = std::is_same_v<T, __nv_bfloat16>;

// d (+)= A · B with both operands in shared memory; kTransA / kTransB = 1 reads that operand MN-major.
// scale_d = 0 overwrites d. N (a multiple of 8 for the instruction) is one of the widths the kernels use.
template <typename T, int N, int kTransA, int kTransB>
__device__ __forceinline__ void wgmma_ss(float (&d)[N / 2], uint64_t desc_a, uint64_t desc_b, int scale_d) {
  static_assert(N == 16 || N == 32 || N == 64 || N == 128, "wgmma tile widths used here");
  if constexpr (N == 16) {
    if constexpr (kIsBf16<T>) LOOM_WGMMA_SS("m64n16k16", "bf16", LOOM_WGMMA_N16_REGS, 8, 9, 10, 11, 12, LOOM_WGMMA_D8(0));
    else LOOM_WGMMA_SS("m64n16k16", "f16", LOOM_WGMMA_N16_REGS, 8, 9, 10, 11, 12, LOOM_WGMMA_D8(0));
  } else if constexpr (N == 32) {
    if constexpr (kIsBf16<T>) LOOM_WGMMA_SS("m64n32k16", "bf16", LOOM_WGMMA_N32_REGS, 16, 17, 18, 19, 20, LOOM_WGMMA_D16(0));
    else LOOM_WGMMA_SS("m64n32k16", "f16", LOOM_WGMMA_N32_REGS, 16, 17, 18, 19, 20, LOOM_WGMMA_D16(0));
  } else if constexpr (N == 64) {
    if constexpr (kIsBf16<T>) LOOM_WGMMA_SS("m64n64k16", "bf16", LOOM_WGMMA_N64_REGS, 32, 33, 34, 35, 36, LOOM_WGMMA_D32(0));
    else LOOM_WGMMA_SS("m64n64k16", "f16", LOOM_WGMMA_N64_REGS, 32, 33, 34, 35, 36, LOOM_WGMMA_D32(0));
  } else {
    if constexpr (kIsBf16<T>) LOOM_WGMMA_SS("m64n128k16", "bf16", LOOM_WGMMA_N128_REGS, 64, 65, 66, 67, 68, LOOM_WGMMA_D64(0));
    else LOOM_WGMMA_SS("m64n128k16", "f16", LOOM_WGMMA_N128_REGS, 64, 65, 66, 67, 68, LOOM_WGMMA_D64(0));
  }
}

// d (+)= a · B, A from registers (the mma.sync A-fragment layout), B from shared memory read transposed
// (MN-major); d is the m64nN accumulator tile in the C layout.
template <typename T, int N>
__device__ __forceinline__ void wgmma_rs(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t desc_b, int scale_d) {
  static_assert(N == 32 || N == 64 || N == 128, "wgmma tile widths used here");
  if constexpr (N == 32) {
    if constexpr (kIsBf16<T>) LOOM_WGMMA_RS("m64n32k16", "bf16", LOOM_WGMMA_N32_REGS, 16, 17, 18, 19, 20, 21, LOOM_WGMMA_D16(0));
    else LOOM_WGMMA_RS("m64n32k16", "f16", LOOM_WGMMA_N32_REGS, 16, 17, 18, 19, 20, 21, LOOM_WGMMA_D16(0));
  } else if constexpr (N == 64) {
    if constexpr (kIsBf16<T>) LOOM_WGMMA_RS("m64n64k16", "bf16", LOOM_WGMMA_N64_REGS, 32, 33, 34, 35, 36, 37, LOOM_WGMMA_D32(0));
    else LOOM_WGMMA_RS("m64n64k16", "f16", LOOM_WGMMA_N64_REGS, 32, 33, 34, 35, 36, 37, LOOM_WGMMA_D32(0));
  } else {
    if constexpr (kIsBf16<T>) LOOM_WGMMA_RS("m64n128k16", "bf16", LOOM_WGMMA_N128_REGS, 64, 65, 66, 67, 68, 69, LOOM_WGMMA_D64(0));
    else LOOM_WGMMA_RS("m64n128k16", "f16", LOOM_WGMMA_N128_REGS, 64, 65, 66, 67, 68, 69, LOOM_WGMMA_D64(0));
  }
}

#undef LOOM_WGMMA_D4
#undef LOOM_WGMMA_D8
#undef LOOM_WGMMA_D16
#undef LOOM_WGMMA_D32
#undef LOOM_WGMMA_D64
#undef LOOM_WGMMA_N16_REGS
#undef LOOM_WGMMA_N32_REGS
#undef LOOM_WGMMA_N64_REGS
#undef LOOM_WGMMA_N128_REGS
#undef LOOM_WGMMA_SS
#undef LOOM_WGMMA_RS

}  // namespace loom::cuda::flash
