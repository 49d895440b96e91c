// Hopper asynchronous-copy and synchronisation helpers for the warp-specialised kernels
// (flash_attention_fwd_ws.cuh, flash_attention_bwd_ws.cuh): TMA tile loads (cp.async.bulk.tensor), bulk f32
// reduce-adds into global memory (cp.reduce.async.bulk), mbarriers that count their bytes, named barriers, and
// register reallocation between warpgroups (setmaxnreg). Thin wrappers over the PTX instructions (PTX ISA 8.0+,
// sm_90); all shared-memory operands are 32-bit shared-window addresses (smem_addr).
//
// mbarrier protocol used here: a barrier completes a phase when its pending arrivals reach zero and the bytes
// announced with arrive_expect_tx have all landed; phases alternate parity 0, 1, 0, ... starting at 0.
// wait(bar, parity) returns once the phase of that parity has completed; on a fresh barrier, waiting on parity 1
// returns at once (the phase "before" phase 0 counts as complete), which lets a producer pass its first round of
// "slot empty" waits without a consumer having arrived.
#pragma once
#include <cuda.h>

#include <cstdint>

namespace loom::cuda::flash {

// The three TMA views of the packed qkv buffer the forward reads (built on the host by head_view in
// flash_attention_tma.cu), passed as one __grid_constant__ kernel parameter so that their parameter-space addresses
// can be given to cp.async.bulk.tensor. Each is 4-D {head dim, heads, seq, batch} over its operand's columns.
struct TmaViews {
  CUtensorMap q, k, v;
};

__device__ __forceinline__ void mbarrier_init(uint32_t bar, uint32_t arrivals) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(arrivals) : "memory");
}
// Makes barrier initialisation visible to the async proxy (TMA's complete_tx); followed by __syncthreads.
__device__ __forceinline__ void fence_mbarrier_init() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
// One arrival that also announces `bytes` more to land on this phase (the TMA loads issued next).
__device__ __forceinline__ void mbarrier_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbarrier_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
// Spins until the phase of the given parity has completed (acquire: the data it guards is then visible).
__device__ __forceinline__ void mbarrier_wait(uint32_t bar, uint32_t parity) {
  uint32_t done = 0;
  do {
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
  } while (!done);
}

// Loads the box of `view` at coordinates {c0, c1, c2, c3} (innermost first) into shared memory at dst (1024-byte
// aligned for the 128-byte swizzle); the bytes land on `bar`'s current phase. Out-of-bounds elements are
// zero-filled and still count towards the phase's bytes.
__device__ __forceinline__ void tma_load_4d(uint32_t dst, const CUtensorMap* view, uint32_t bar, int c0, int c1,
                                            int c2, int c3) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, %5}], "
      "[%6];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(view)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(bar)
      : "memory");
}
__device__ __forceinline__ void prefetch_tma_view(const CUtensorMap* view) {
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(view)) : "memory");
}

// Adds `bytes` (a multiple of 16) of f32 from shared memory at src element-wise into global memory at dst (both
// 16-byte aligned): one bulk reduce, no tensor map, done by the TMA unit in the async proxy (the writers of src
// fence.proxy.async before they release it). Joins the thread's current bulk group; bulk_commit closes the group.
__device__ __forceinline__ void bulk_reduce_add_f32(float* dst, uint32_t src, uint32_t bytes) {
  asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;\n" ::"l"(dst), "r"(src),
               "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void bulk_commit() { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }
// Waits until at most `pending` of this thread's committed bulk groups still read their shared-memory source
// (the source may then be overwritten; the global writes may still be in flight).
template <int pending>
__device__ __forceinline__ void bulk_wait_read() {
  asm volatile("cp.async.bulk.wait_group.read %0;\n" ::"n"(pending) : "memory");
}
// Waits until at most `pending` of this thread's committed bulk groups are incomplete (writes done).
template <int pending>
__device__ __forceinline__ void bulk_wait() {
  asm volatile("cp.async.bulk.wait_group %0;\n" ::"n"(pending) : "memory");
}

// Named barriers 1..15 (0 is __syncthreads). sync blocks until `threads` threads (a multiple of 32) have
// arrived at barrier `id`, counting itself; arrive adds this warp's threads without waiting.
__device__ __forceinline__ void named_barrier_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
__device__ __forceinline__ void named_barrier_arrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

// Sets this warpgroup's per-thread register count (every thread of the warpgroup executes it): dec hands
// registers back to the block's pool, inc waits until the pool holds enough.
template <int regs>
__device__ __forceinline__ void setmaxnreg_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(regs));
}
template <int regs>
__device__ __forceinline__ void setmaxnreg_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(regs));
}

}  // namespace loom::cuda::flash
