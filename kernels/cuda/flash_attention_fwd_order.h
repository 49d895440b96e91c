// The order in which the warp-specialised forward (flash_attention_fwd_ws.cuh) runs its tiles, a tile being one
// query block of one (batch, head): launch index (or, persistent, the index a block walks: blockIdx.x,
// blockIdx.x + gridDim.x, ...) -> (query block, head, batch). Plain constexpr C++ (host and device: the CUDA
// targets build with --expt-relaxed-constexpr), 32-bit arithmetic, so that a CPU test checks the map
// (tests/unit/flash_fwd_order_test.cc) and a kernel decodes a tile with a few 32-bit divisions.
//
// Not causal: every tile costs the same; query block fastest, then head, then batch (consecutive tiles share K/V).
// Causal: query block q walks min(n, (q + 1)·kBr / kBc) key blocks, so tiles are ordered longest first
// (query block from the last down) to keep the short ones for the tail of the launch, with the (batch, head)
// pairs fastest — in sections of `section` pairs, so that the K and V of the pairs in flight stay in L2 (a
// section is sized to half of it: fwd_tile_order). Only launches of at least kLongestFirstQueryBlocks query blocks
// per pair take sections of more than one pair: on an H100 (docs/PERF.md) the order across pairs ran the causal
// forward 12 % faster at d128 and 16k tokens, 21 % at d64 and 8k, but 5-22 % slower from 512 to 2k tokens (d64
// also at 4k, 22 query blocks of 192 rows), where each pair's few tiles running side by side share their K/V
// loads; sections of one pair are the order of one block per tile before (each pair longest first).
#pragma once
#include <algorithm>
#include <cstdint>

#include "core/error.h"

namespace loom::cuda::flash {

constexpr int kLongestFirstQueryBlocks = 32;

struct FwdTileOrder {
  int tiles;      // n_qblocks · heads · batch, < 2^31
  int n_qblocks;  // query blocks per (batch, head)
  int heads;
  int section;    // causal: (batch, head) pairs per section, 1 ≤ section ≤ batch·heads; not causal: unused (1)
  bool causal;
};

struct FwdTileCoord {
  int qblock, head, batch;
};

// Tile `tile` (0 ≤ tile < o.tiles) of the order o. Causal: section s holds pairs [s·section, s·section + width)
// (width = section, or what is left for the last one) and their width·n_qblocks tiles; within it, tile i is
// pair s·section + i % width at rank i / width (rank 0 = the last query block, the longest).
constexpr FwdTileCoord fwd_tile_coord(int tile, const FwdTileOrder& o) {
  if (!o.causal) {
    const int pair = tile / o.n_qblocks;
    return {tile - pair * o.n_qblocks, pair % o.heads, pair / o.heads};
  }
  const int span = o.section * o.n_qblocks;  // the tiles of a full section
  const int first_pair = tile / span * o.section, i = tile % span;
  const int left = o.tiles / o.n_qblocks - first_pair;
  const int width = left < o.section ? left : o.section;
  const int rank = i / width, pair = first_pair + i % width;
  return {o.n_qblocks - 1 - rank, pair % o.heads, pair / o.heads};
}

// The order of a launch over [batch, heads] pairs of seq tokens in query blocks of block_rows. Causal sections
// (from kLongestFirstQueryBlocks query blocks on; one pair below): as many pairs as fill half of an L2 cache of
// l2_bytes with their K and V (seq · kv_bytes_per_token each), at least one, at most all. Throws loom::Error if the tiles do not fit in 31 bits (the kernel decodes and steps
// through them in 32-bit arithmetic).
inline FwdTileOrder fwd_tile_order(int64_t batch, int64_t heads, int64_t seq, int block_rows, bool causal,
                                   int64_t kv_bytes_per_token, int64_t l2_bytes) {
  const int64_t n_qblocks = (seq + block_rows - 1) / block_rows, pairs = batch * heads;
  const int64_t tiles = n_qblocks * pairs;
  LOOM_CHECK(tiles <= INT32_MAX, "flash attention: the forward's ", tiles, " tiles (batch ", batch, " x heads ",
             heads, " x ", n_qblocks, " query blocks of ", block_rows, " rows) exceed 2^31 - 1");
  int64_t section = 1;
  if (causal && n_qblocks >= kLongestFirstQueryBlocks)
    section = std::max<int64_t>(1, std::min(pairs, l2_bytes / 2 / (seq * kv_bytes_per_token)));
  return {int(tiles), int(n_qblocks), int(heads), int(section), causal};
}

}  // namespace loom::cuda::flash
