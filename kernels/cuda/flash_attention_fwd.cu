// Forward launcher (flash_attention_launch.cuh); the kernel is in flash_attention_fwd.cuh.
#include "kernels/cuda/flash_attention_fwd.cuh"
#include "kernels/cuda/flash_attention_launch.cuh"

namespace loom::cuda::flash {

template <typename T, int D>
void launch_forward(const AttentionShape& s, const Params<T>& p, cudaStream_t stream) {
  using Tile = FwdTile<D>;
  auto kernel = flash_fwd_kernel<T, D>;
  set_smem(kernel, Tile::kSmemBytes);
  const dim3 grid((s.seq + Tile::kBr - 1) / Tile::kBr, s.heads, s.batch);
  kernel<<<grid, Tile::kThreads, Tile::kSmemBytes, stream>>>(p);
  CUDA_CHECK_LAUNCH("flash_fwd_kernel");
}

template void launch_forward<__nv_bfloat16, 64>(const AttentionShape&, const Params<__nv_bfloat16>&, cudaStream_t);
template void launch_forward<__nv_bfloat16, 128>(const AttentionShape&, const Params<__nv_bfloat16>&, cudaStream_t);
template void launch_forward<__half, 64>(const AttentionShape&, const Params<__half>&, cudaStream_t);
template void launch_forward<__half, 128>(const AttentionShape&, const Params<__half>&, cudaStream_t);

}  // namespace loom::cuda::flash
