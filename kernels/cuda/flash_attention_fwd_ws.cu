// Launcher of the warp-specialised forward (flash_attention_fwd_ws.cuh); its TMA views are built by head_view
// (flash_attention_tma.cu). Its own translation unit so that it compiles in parallel with the other kernels.
#include <algorithm>

#include "kernels/cuda/flash_attention.h"
#include "kernels/cuda/flash_attention_fwd_ws.cuh"
#include "kernels/cuda/flash_attention_launch.cuh"

namespace loom::cuda::flash {

namespace {

int device_attribute(cudaDeviceAttr attr) {
  int device = 0, value = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  CUDA_CHECK(cudaDeviceGetAttribute(&value, attr, device));
  return value;
}

// The tile order (flash_attention_fwd_order.h): causal sections sized to half of this device's L2.
FwdTileOrder tile_order(const AttentionShape& s, int block_rows, int kv_bytes_per_token) {
  const int64_t l2_bytes = s.causal ? device_attribute(cudaDevAttrL2CacheSize) : 0;
  return fwd_tile_order(s.batch, s.heads, s.seq, block_rows, s.causal, kv_bytes_per_token, l2_bytes);
}

// The grid for max_blocks (flash_attention.h): kFlashBlocksAuto persistent (one block per SM) for non-causal
// launches of at most kFlashPersistentQueryBlocks query blocks per (batch, head), else one block per tile.
int grid_blocks(const AttentionShape& s, const FwdTileOrder& order, int max_blocks) {
  if (max_blocks == kFlashBlocksAuto)
    max_blocks = !s.causal && order.n_qblocks <= kFlashPersistentQueryBlocks
                     ? device_attribute(cudaDevAttrMultiProcessorCount) : 0;
  return max_blocks > 0 ? std::min(max_blocks, order.tiles) : order.tiles;
}

template <typename T, int DQK, int DV, int Consumers>
void launch_forward_ws_tile(const AttentionShape& s, const Params<T>& p, cudaStream_t stream, int max_blocks) {
  using Tile = WsFwdTile<DQK, DV, Consumers>;
  const FwdTileOrder order = tile_order(s, Tile::kBr, (DQK + DV) * 2);  // K and V bytes per token
  const int64_t H = s.heads, row = s.qkv_width();
  TmaViews views;
  views.q = head_view(p.qkv, kIsBf16<T>, s.qk_dim, row, s, Tile::kBr, "q (of qkv)");
  views.k = head_view(p.qkv + H * s.qk_dim, kIsBf16<T>, s.qk_dim, row, s, Tile::kBc, "k (of qkv)");
  views.v = head_view(p.qkv + 2 * H * s.qk_dim, kIsBf16<T>, s.v_dim, row, s, Tile::kBc, "v (of qkv)");
  auto kernel = flash_fwd_ws_kernel<T, DQK, DV, Consumers>;
  set_smem(kernel, Tile::kSmemBytes);
  kernel<<<grid_blocks(s, order, max_blocks), Tile::kThreads, Tile::kSmemBytes, stream>>>(p, views, order);
  CUDA_CHECK_LAUNCH("flash_fwd_ws_kernel");
}

}  // namespace

template <typename T, int DQK, int DV>
void launch_forward_ws(const AttentionShape& s, const Params<T>& p, cudaStream_t stream, int d64_query_rows,
                       int max_blocks) {
  if constexpr (DQK == 64 && DV == 64) {
    if (d64_query_rows == 192) return launch_forward_ws_tile<T, DQK, DV, 3>(s, p, stream, max_blocks);
  }
  launch_forward_ws_tile<T, DQK, DV, 2>(s, p, stream, max_blocks);
}

#define LOOM_FLASH_FWD_WS(DQK, DV)                                                                            \
  template void launch_forward_ws<__nv_bfloat16, DQK, DV>(const AttentionShape&, const Params<__nv_bfloat16>&, \
                                                          cudaStream_t, int, int);                            \
  template void launch_forward_ws<__half, DQK, DV>(const AttentionShape&, const Params<__half>&, cudaStream_t,  \
                                                   int, int);
LOOM_FLASH_WS_TILE_PAIRS(LOOM_FLASH_FWD_WS)
#undef LOOM_FLASH_FWD_WS

}  // namespace loom::cuda::flash
