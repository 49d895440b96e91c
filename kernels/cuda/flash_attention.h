// FlashAttention-2 forward and backward on CUDA, over the trainer's fused QKV layout; head dims whose tiles are
// 64 or 128 wide take a FlashAttention-3 style forward (TMA loads, warp-specialised ping-pong warpgroups) and,
// with atomic dQ (deterministic = false), a FlashAttention-3 style backward (TMA loads by a producer warpgroup).
// Hopper only (sm_90a: the tensor-core products are wgmma); any other GPU gets a loom::Error saying so.
//
// Layout (see kernels/backend.h, AttentionShape): qkv is [B, T, H*Dqk (q) | H*Dqk (k) | H*Dv (v)] per token,
// row stride H*(2*Dqk+Dv) elements, each head contiguous; out and dout are [B, T, H*Dv]; lse is [B, H, T]
// float32 (natural-log logsumexp of each row of scale·q·kᵀ after masking); dqkv has qkv's layout.
// Nothing is transposed or copied: the kernels read q, k, v straight out of qkv.
//
// Supported: dtype BF16 or F16 (fp32 accumulation everywhere); head dims Dqk and Dv each a multiple of 8 from 8
// to 128, equal or not (pruned heads) — each runs in the next tile width of 32, 64 or 128 (zero-filled columns;
// the tensor-core work is that of the tile widths), tuned for 64 and 128; any T ≥ 1 (ragged: partial tiles are
// masked); causal (key j visible to query i iff j ≤ i) or not; any finite scale > 0. qkv, out, dout and dqkv
// must be 16-byte aligned. Anything else throws
// loom::Error naming the unsupported field (flash_attention_check says why up front).
//
// Rows with no visible key cannot occur with these masks; if they did, out would be 0 and lse +inf
// (FlashAttention's convention), and the backward would give them zero gradient.
//
// Threads and streams: all work is queued on `stream` (asynchronous) on the current device; the caller keeps
// the buffers alive until the stream has passed it. Functions are thread-safe (no mutable global state: the
// driver's tensor-map encoder is looked up once, in a function-local static; each launch sets its kernel's
// shared-memory limit). All pointers are device pointers owned by the caller; buffers must
// not overlap. Every CUDA call and launch is checked (loom::Error).
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <string>

#include "core/dtype.h"
#include "kernels/backend.h"

namespace loom::cuda {

// flash_attention_forward's max_blocks default: the launcher chooses (see there).
constexpr int kFlashBlocksAuto = -1;
// Non-causal forwards of at most this many query blocks per (batch, head) run persistent under kFlashBlocksAuto.
constexpr int kFlashPersistentQueryBlocks = 32;

// Returns "" if (shape, dtype) is supported by these kernels, otherwise a sentence saying why not.
std::string flash_attention_check(const AttentionShape& shape, DType dtype);

// The tile width a supported head dim (q/k or v) runs in: 32, 64 or 128. A head costs the tensor-core work of
// its two tile widths, so pruning a head dim within one tile saves none of it.
int flash_attention_tile_width(int64_t head_dim);

// out = softmax(scale · q kᵀ [+ causal mask]) v per batch and head; lse = the rows' logsumexp.
// qkv: [B, T, qkv_width] of dtype; out: [B, T, H*Dv] of dtype (fully written); lse: [B, H, T] f32 (written).
// d64_query_rows: the query rows per block of the 64x64 tile pair's forward (head dims 33..64 both): 128 (two
// consumer warpgroups) or 192 (three, more reuse of each K/V tile but up to 191 padded rows per sequence); 0
// chooses by seq (flash_attention_d64_query_rows). Other pairs ignore it. Anything else throws loom::Error.
// max_blocks: the grid of the warp-specialised kernel (both tile widths 64 or 128; a tile is one query block of
// one (batch, head)). 0: one block per tile. N > 0: persistent, min(N, tiles) blocks each running tiles
// blockIdx, blockIdx + blocks, ..., so that a tile's loads overlap the previous one's output stores (a block's
// first tile still pays the start-up); a block takes a whole SM (its registers), so the SM count is the natural
// N. out and lse are bit-identical for every value: a tile's arithmetic does not depend on the block that runs
// it. kFlashBlocksAuto (-1, the default): the launcher's choice, measured on an H100 (docs/PERF.md): persistent
// with one block per SM for non-causal launches of at most kFlashPersistentQueryBlocks query blocks per
// (batch, head) (up to 4k tokens at d128; there the overlap gained 3-18 % of the forward), one block per tile
// otherwise (at 8k and 16k tokens and causal, the static round-robin of persistent blocks measured 1-15 % slower
// than the hardware's own scheduling of one-tile blocks). The pairs with a 32-wide tile (cp.async kernel) ignore
// it. Below -1 throws loom::Error before any device call; so do shapes of more than 2^31 - 1 tiles (on the
// warp-specialised pairs).
void flash_attention_forward(const AttentionShape& shape, DType dtype, const void* qkv, void* out, float* lse,
                             cudaStream_t stream, int d64_query_rows = 0, int max_blocks = kFlashBlocksAuto);
// The query rows per block the 64x64 pair's forward runs when left to choose, from a sweep on an H100
// (docs/PERF.md): 192 from seq 2048 on; below that 128 when causal (the diagonal's masked part of a 192-row
// block is the larger waste there) or when 192-row blocks pad more than 1.2x the rows 128-row ones do (a ViT's
// 197 tokens: 384 rows instead of 256), else 192.
int flash_attention_d64_query_rows(int64_t seq, bool causal);

// Bytes of device scratch memory flash_attention_backward needs (the row sums D = rowsum(dO∘O) [B, H, T], and
// unless deterministic a float32 dQ accumulator: B·T·H·Dqk floats, or B·H·ceil(T/kBr)·kBr·(q/k tile width) where
// the kernel adds whole query-block tiles, kBr = 64 or 128). 256-byte aligned pointer required.
size_t flash_attention_backward_workspace_bytes(const AttentionShape& shape, bool deterministic);

// Writes dqkv (all of it: dq, dk, dv) given the forward's inputs qkv, its outputs out and lse, and dout.
// workspace: at least flash_attention_backward_workspace_bytes(shape, deterministic) bytes, clobbered.
// deterministic = false: dQ is accumulated across key blocks with float atomics (fastest; the low bits of dq
// may differ between runs). deterministic = true: dQ is computed by a separate pass without atomics, so
// repeated runs give bit-identical dqkv (about 10% lower forward+backward throughput on H100 at d128).
void flash_attention_backward(const AttentionShape& shape, DType dtype, const void* qkv, const void* out,
                              const void* dout, const float* lse, void* dqkv, void* workspace,
                              size_t workspace_bytes, bool deterministic, cudaStream_t stream);

}  // namespace loom::cuda
