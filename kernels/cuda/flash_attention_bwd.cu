// Backward launcher (flash_attention_launch.cuh); the kernels are in flash_attention_bwd.cuh.
#include "kernels/cuda/flash_attention_bwd.cuh"
#include "kernels/cuda/flash_attention_launch.cuh"

namespace loom::cuda::flash {

template <typename T, int DQK, int DV>
void launch_backward(const AttentionShape& s, const Params<T>& p, cudaStream_t stream) {
  const int64_t rows = s.batch * s.seq * s.heads;
  {
    const int threads = 256;
    const int64_t blocks = (rows * 32 + threads - 1) / threads;
    flash_bwd_dsum_kernel<T, DV><<<blocks, threads, 0, stream>>>(p, rows);
    CUDA_CHECK_LAUNCH("flash_bwd_dsum_kernel");
  }
  if (p.dq_accum) CUDA_CHECK(cudaMemsetAsync(p.dq_accum, 0, rows * s.qk_dim * sizeof(float), stream));
  {
    using Tile = BwdTile<DQK, DV>;
    auto kernel = p.dq_accum ? flash_bwd_kernel<T, DQK, DV, true> : flash_bwd_kernel<T, DQK, DV, false>;
    set_smem(kernel, Tile::kSmemBytes);
    const dim3 grid((s.seq + Tile::kBc - 1) / Tile::kBc, s.heads, s.batch);
    kernel<<<grid, Tile::kThreads, Tile::kSmemBytes, stream>>>(p);
    CUDA_CHECK_LAUNCH("flash_bwd_kernel");
  }
  if (!p.dq_accum) {
    using Tile = DqTile<DQK, DV>;
    auto kernel = flash_bwd_dq_kernel<T, DQK, DV>;
    set_smem(kernel, Tile::kSmemBytes);
    const dim3 grid((s.seq + Tile::kBr - 1) / Tile::kBr, s.heads, s.batch);
    kernel<<<grid, Tile::kThreads, Tile::kSmemBytes, stream>>>(p);
    CUDA_CHECK_LAUNCH("flash_bwd_dq_kernel");
  } else {
    const int threads = 256;
    const int64_t pairs = rows * s.qk_dim / 2;
    flash_bwd_dq_convert_kernel<T><<<(pairs + threads - 1) / threads, threads, 0, stream>>>(p, pairs);
    CUDA_CHECK_LAUNCH("flash_bwd_dq_convert_kernel");
  }
}

#define LOOM_FLASH_BWD(DQK, DV)                                                                             \
  template void launch_backward<__nv_bfloat16, DQK, DV>(const AttentionShape&, const Params<__nv_bfloat16>&, \
                                                        cudaStream_t);                                      \
  template void launch_backward<__half, DQK, DV>(const AttentionShape&, const Params<__half>&, cudaStream_t);
LOOM_FLASH_TILE_PAIRS(LOOM_FLASH_BWD)
#undef LOOM_FLASH_BWD

}  // namespace loom::cuda::flash
