// Forward launcher (flash_attention_launch.cuh): the warp-specialised TMA kernel (flash_attention_fwd_ws.cu) for
// the kForwardWs pairs, else the cp.async kernel of flash_attention_fwd.cuh.
#include "kernels/cuda/flash_attention_fwd.cuh"
#include "kernels/cuda/flash_attention_launch.cuh"

namespace loom::cuda::flash {

template <typename T, int DQK, int DV>
void launch_forward(const AttentionShape& s, const Params<T>& p, cudaStream_t stream, int d64_query_rows,
                    int max_blocks) {
  if constexpr (kForwardWs<DQK, DV>) {
    launch_forward_ws<T, DQK, DV>(s, p, stream, d64_query_rows, max_blocks);
  } else {
    using Tile = FwdTile<DQK, DV>;
    auto kernel = flash_fwd_kernel<T, DQK, DV>;
    set_smem(kernel, Tile::kSmemBytes);
    const dim3 grid((s.seq + Tile::kBr - 1) / Tile::kBr, s.heads, s.batch);
    kernel<<<grid, Tile::kThreads, Tile::kSmemBytes, stream>>>(p);
    CUDA_CHECK_LAUNCH("flash_fwd_kernel");
  }
}

#define LOOM_FLASH_FWD(DQK, DV)                                                                            \
  template void launch_forward<__nv_bfloat16, DQK, DV>(const AttentionShape&, const Params<__nv_bfloat16>&, \
                                                       cudaStream_t, int, int);                            \
  template void launch_forward<__half, DQK, DV>(const AttentionShape&, const Params<__half>&, cudaStream_t, int, \
                                                int);
LOOM_FLASH_TILE_PAIRS(LOOM_FLASH_FWD)
#undef LOOM_FLASH_FWD

}  // namespace loom::cuda::flash
