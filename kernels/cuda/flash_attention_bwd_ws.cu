// Launcher of the warp-specialised backward's main kernel (flash_attention_bwd_ws.cuh); launch_backward
// (flash_attention_bwd.cu) runs the passes around it. Its own translation unit so that it compiles in parallel
// with the other kernels.
#include "kernels/cuda/flash_attention_bwd_ws.cuh"
#include "kernels/cuda/flash_attention_launch.cuh"

namespace loom::cuda::flash {

template <typename T, int DQK, int DV>
void launch_backward_ws(const AttentionShape& s, const Params<T>& p, cudaStream_t stream) {
  using Tile = WsBwdTile<DQK, DV>;
  LOOM_CHECK(p.dq_accum != nullptr, "flash attention: the warp-specialised backward needs the dQ accumulator");
  const int64_t H = s.heads, row = s.qkv_width();
  BwdTmaViews views;
  views.q = head_view(p.qkv, kIsBf16<T>, s.qk_dim, row, s, Tile::kBr, "q (of qkv)");
  views.k = head_view(p.qkv + H * s.qk_dim, kIsBf16<T>, s.qk_dim, row, s, Tile::kBc, "k (of qkv)");
  views.v = head_view(p.qkv + 2 * H * s.qk_dim, kIsBf16<T>, s.v_dim, row, s, Tile::kBc, "v (of qkv)");
  views.dout = head_view(p.dout, kIsBf16<T>, s.v_dim, s.out_width(), s, Tile::kBr, "dout");
  auto kernel = flash_bwd_ws_kernel<T, DQK, DV>;
  set_smem(kernel, Tile::kSmemBytes);
  const dim3 grid((s.seq + Tile::kBc - 1) / Tile::kBc, s.heads, s.batch);
  kernel<<<grid, Tile::kThreads, Tile::kSmemBytes, stream>>>(p, views);
  CUDA_CHECK_LAUNCH("flash_bwd_ws_kernel");
}

#define LOOM_FLASH_BWD_WS(DQK, DV)                                                                             \
  template void launch_backward_ws<__nv_bfloat16, DQK, DV>(const AttentionShape&, const Params<__nv_bfloat16>&, \
                                                           cudaStream_t);                                      \
  template void launch_backward_ws<__half, DQK, DV>(const AttentionShape&, const Params<__half>&, cudaStream_t);
LOOM_FLASH_WS_TILE_PAIRS(LOOM_FLASH_BWD_WS)
#undef LOOM_FLASH_BWD_WS

}  // namespace loom::cuda::flash
