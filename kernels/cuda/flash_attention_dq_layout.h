// Where the warp-specialised backward (flash_attention_bwd_ws.cuh) keeps dQ of one query block: the f32 tile of
// kBr query rows x kDqk head-dim columns (kDqk = the q/k tile width) in the order the consumers' wgmma
// accumulators leave it, so that a warp's float4 stores of its fragments are 512 contiguous bytes (no bank
// conflict) and the tile is one contiguous range for one bulk reduce-add. The same order is used in shared
// memory and, tile by tile, in the global accumulator ([B, H, ceil(T/kBr), kBr·kDqk] f32); the kernel's writer
// and flash_bwd_dq_convert_tiles_kernel's reader both go through DqTileLayout::offset, so the two cannot disagree.
// Plain constexpr C++ (host and device: the CUDA targets build with --expt-relaxed-constexpr), so that a CPU test
// checks the map (tests/unit/flash_dq_layout_test.cc).
//
// The split is BwdTile's (flash_attention_bwd_steps.cuh): 2 consumer warpgroups of 128 threads; kBr = 128: warpgroup
// w takes rows [64w, 64w + 64), all kDqk columns (N = kDqk); kBr = 64: all rows, columns [w·kDqk/2, ...) (N =
// kDqk/2). In a warpgroup's 64 x N accumulator, thread t (0..127; warp t/32, lane t%32) holds acc[4n + 2r + c] =
// (row 16·(t/32) + (t%32)/4 + 8r, column 8n + 2·(t%4) + c). Chunk n = acc[4n .. 4n+3] of consumer thread
// u = 128·w + t goes to floats [4·(256n + u), 4·(256n + u) + 4): consecutive threads, consecutive 16 bytes.
#pragma once
#include <cstdint>

namespace loom::cuda::flash {

template <int kBr, int kDqk>
struct DqTileLayout {
  static_assert(kBr == 64 || kBr == 128, "kBr is 64 or 128 (BwdTile)");
  static_assert(kDqk % 16 == 0, "q/k tile width: a multiple of 16");
  static constexpr int kConsumerThreads = 256;
  static constexpr int kWarpgroupN = kBr == 128 ? kDqk : kDqk / 2;  // N of a warpgroup's dQ accumulator
  static constexpr int kFloats = kBr * kDqk;

  // Float offset of element (row, col) of the tile, row < kBr, col < kDqk.
  static constexpr int offset(int row, int col) {
    const int warpgroup = kBr == 128 ? row / 64 : col / kWarpgroupN;
    const int r64 = row % 64, cw = col % kWarpgroupN;
    const int thread = 128 * warpgroup + 32 * (r64 / 16) + 4 * (r64 % 8) + (cw % 8) / 2;
    return 4 * (kConsumerThreads * (cw / 8) + thread) + 2 * ((r64 % 16) / 8) + cw % 2;
  }
  // Float offset of the tile of query block `qblock` (rows [kBr·qblock, kBr·qblock + kBr)) of (batch, head) in the
  // global accumulator [batch][heads][ceil(seq/kBr)][kFloats].
  static constexpr int64_t tile_start(int64_t batch, int head, int qblock, int heads, int seq) {
    return ((batch * heads + head) * ((seq + kBr - 1) / kBr) + qblock) * kFloats;
  }
  // Floats of that accumulator.
  static constexpr int64_t accumulator_floats(int64_t batch, int64_t heads, int64_t seq) {
    return batch * heads * ((seq + kBr - 1) / kBr) * kFloats;
  }
};

}  // namespace loom::cuda::flash
