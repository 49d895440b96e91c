// Internal to the flash-attention kernels: the launchers flash_attention.cu dispatches to. Each is defined and
// explicitly instantiated (bf16/fp16 × every pair of LOOM_FLASH_TILE_PAIRS, or of LOOM_FLASH_WS_TILE_PAIRS for
// the warp-specialised kernels) in its own translation unit (flash_attention_fwd.cu, flash_attention_fwd_ws.cu,
// flash_attention_bwd.cu, flash_attention_bwd_ws.cu), so that they compile in parallel.
#pragma once
#include <cuda.h>
#include <cuda_runtime.h>

#include "kernels/backend.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/flash_attention_common.cuh"

namespace loom::cuda::flash {

// The tile width a head dim runs in: 32, 64 or 128, the columns past the head dim zero-filled. Three widths
// per operand keep the tensor-core work of a pruned head within 1.8x of its own from 24 up (72 in 128; 40 in
// 64: 1.6x), 8 and 16 taking 4x and 2x of products that are small beside the softmax's fixed cost per score,
// for 9 instantiations per dtype and direction. Widths 48 and 96 would cut 40 and 72 to 1.2x and 1.33x for 7
// more pairs each (wgmma takes any N that is a multiple of 8; the K steps are 16).
constexpr int tile_width(int64_t head_dim) { return head_dim <= 32 ? 32 : head_dim <= 64 ? 64 : 128; }

// Applies X(DQK, DV) to every (q/k tile width, v tile width) pair: the instantiations and the dispatch.
#define LOOM_FLASH_TILE_PAIRS(X) \
  X(32, 32) X(32, 64) X(32, 128) X(64, 32) X(64, 64) X(64, 128) X(128, 32) X(128, 64) X(128, 128)

// The pairs the warp-specialised TMA kernels are instantiated for (the forward, flash_attention_fwd_ws.cuh, says
// why); the others run the cp.async kernels (flash_attention_fwd.cuh, flash_attention_bwd.cuh).
#define LOOM_FLASH_WS_TILE_PAIRS(X) X(64, 64) X(64, 128) X(128, 64) X(128, 128)
template <int DQK, int DV>
constexpr bool kForwardWs = (DQK == 64 || DQK == 128) && (DV == 64 || DV == 128);

// Queues the forward on `stream`. p carries qkv, out_w, lse and the shape fields; DQK >= p.dqk, DV >= p.dv.
// The kForwardWs<DQK, DV> pairs run the warp-specialised kernel (launch_forward_ws), the others the cp.async one.
// d64_query_rows (128 or 192): the 64x64 pair's block height (flash_attention_forward); other pairs ignore it.
// max_blocks (≥ -1): the warp-specialised kernel's grid (flash_attention_forward); the cp.async kernel ignores it.
template <typename T, int DQK, int DV>
void launch_forward(const AttentionShape& s, const Params<T>& p, cudaStream_t stream, int d64_query_rows,
                    int max_blocks);

// Queues the warp-specialised forward (kForwardWs<DQK, DV> pairs only). max_blocks = kFlashBlocksAuto: the choice
// flash_attention.h states; max_blocks = 0: one block per tile (a query block of one (batch, head)); max_blocks > 0: min(max_blocks, tiles) persistent blocks, each walking the
// tiles blockIdx.x, blockIdx.x + gridDim.x, ... (flash_attention_fwd_order.h gives the order). Builds the TMA
// views of qkv on the host; throws loom::Error where the tiles exceed 2^31 - 1, or naming the view and the shape
// where the tensor-map rules do not hold or the driver cannot encode them.
template <typename T, int DQK, int DV>
void launch_forward_ws(const AttentionShape& s, const Params<T>& p, cudaStream_t stream, int d64_query_rows,
                       int max_blocks);

// The warp-specialised TMA backward (flash_attention_bwd_ws.cuh) runs the same pairs, in the atomic-dQ mode
// only; the deterministic mode and the 32-wide pairs run flash_attention_bwd.cuh's cp.async kernels.
template <int DQK, int DV>
constexpr bool kBackwardWs = kForwardWs<DQK, DV>;

// Floats of the f32 dQ accumulator launch_backward needs for this shape in the atomic mode: B·T·H·dqk
// (row-major), or B·H·ceil(T/kBr)·kBr·DQK where the warp-specialised kernel adds whole tiles (tile-major; see
// flash_attention_dq_layout.h). Defined in flash_attention_bwd.cu, where the layout is chosen.
template <int DQK, int DV>
int64_t dq_accum_floats(const AttentionShape& s);

// Queues the backward on `stream`: p carries qkv, out, dout, lse, dqkv, the shape fields, and the workspace
// pointers dsum ([B, H, T] f32) and dq_accum (dq_accum_floats<DQK, DV> f32, null = deterministic dQ pass).
template <typename T, int DQK, int DV>
void launch_backward(const AttentionShape& s, const Params<T>& p, cudaStream_t stream);

// Queues the warp-specialised backward's main kernel (kBackwardWs<DQK, DV> pairs, p.dq_accum set: dQ is added
// into it); launch_backward runs the D = rowsum(dO∘O) pass, zeroes dq_accum before and converts it after. Throws
// loom::Error as launch_forward_ws.
template <typename T, int DQK, int DV>
void launch_backward_ws(const AttentionShape& s, const Params<T>& p, cudaStream_t stream);

// The TMA view of one operand's head columns in a [B, T, row_elems] buffer of 16-bit elements (bf16 or f16):
// 4-D {head_dim, heads, seq, batch} starting at `base` (head 0's first column of token 0), strides in bytes
// {head_dim, row_elems, row_elems·seq}·2; boxes of {64, 1, box_rows, 1} elements with the 128-byte swizzle, i.e.
// one atom of flash_attention_wgmma.cuh's tile layout. dims[0] is the real head dim, so the box columns past it
// and the rows past seq are out of bounds and zero-filled by the TMA unit (their bytes still count towards the
// mbarrier's transaction). base must be 16-byte aligned and head_dim, row_elems multiples of 8 (the callers'
// checks); throws loom::Error naming `name` and the shape where the batch stride reaches 2^40 bytes or the driver
// cannot encode the view. Defined in flash_attention_tma.cu.
CUtensorMap head_view(const void* base, bool bf16, int64_t head_dim, int64_t row_elems, const AttentionShape& s,
                      uint32_t box_rows, const char* name);

// Raises a kernel's dynamic shared-memory limit (needed above 48 KB); cheap, so done on every launch rather
// than cached (no global state, so no thread-safety question).
template <typename Kernel>
void set_smem(Kernel kernel, int bytes) {
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
}

}  // namespace loom::cuda::flash
