// Backward launcher (flash_attention_launch.cuh); the kernels are in flash_attention_bwd.cuh, the
// warp-specialised main kernel in flash_attention_bwd_ws.cuh (launched by flash_attention_bwd_ws.cu).
#include <algorithm>
#include <type_traits>

#include "kernels/cuda/flash_attention_bwd.cuh"
#include "kernels/cuda/flash_attention_launch.cuh"

namespace loom::cuda::flash {
namespace {

// The one place the atomic mode's dQ accumulator layout is chosen: tile-major where the warp-specialised kernel adds
// whole dQ tiles with bulk reduces (its pairs), row-major where flash_bwd_kernel adds dQ with atomics.
template <int DQK, int DV>
constexpr bool kTileMajorDq = kBackwardWs<DQK, DV>;
template <int DQK, int DV>
using DqAccum = std::conditional_t<kTileMajorDq<DQK, DV>, TileMajorDq<BwdTile<DQK, DV>::kBr, DQK>, RowMajorDq>;

// flash_bwd_kernel, dQ by atomics into p.dq_accum (kAtomicDq) or left to flash_bwd_dq_kernel.
template <typename T, int DQK, int DV, bool kAtomicDq>
void launch_bwd_kernel(const AttentionShape& s, const Params<T>& p, cudaStream_t stream) {
  using Tile = BwdTile<DQK, DV>;
  auto kernel = flash_bwd_kernel<T, DQK, DV, kAtomicDq>;
  set_smem(kernel, Tile::kSmemBytes);
  const dim3 grid((s.seq + Tile::kBc - 1) / Tile::kBc, s.heads, s.batch);
  kernel<<<grid, Tile::kThreads, Tile::kSmemBytes, stream>>>(p);
  CUDA_CHECK_LAUNCH("flash_bwd_kernel");
}

// dq (in dqkv) = scale · dq_accum, with the convert kernel of the accumulator's layout.
template <typename T, typename Accum>
void launch_dq_convert(const AttentionShape& s, const Params<T>& p, cudaStream_t stream) {
  if constexpr (std::is_same_v<Accum, RowMajorDq>) {
    flash_bwd_dq_convert_rows_kernel<T><<<s.batch * s.seq, 128, 0, stream>>>(p);
    CUDA_CHECK_LAUNCH("flash_bwd_dq_convert_rows_kernel");
  } else {
    const int row_pairs = static_cast<int>((s.seq + 15) / 16 * 8);  // rows t, t + 8 with t % 16 < 8
    const int threads = static_cast<int>(std::min<int64_t>(256, (s.heads * s.qk_dim / 2 + 31) / 32 * 32));
    flash_bwd_dq_convert_tiles_kernel<T, Accum::kBr, Accum::kDqk>
        <<<s.batch * row_pairs, threads, 0, stream>>>(p, row_pairs);
    CUDA_CHECK_LAUNCH("flash_bwd_dq_convert_tiles_kernel");
  }
}

}  // namespace

// D, then (atomic mode) dK, dV and dQ into the zeroed f32 accumulator by the warp-specialised kernel (the
// kBackwardWs pairs) or flash_bwd_kernel, and dQ's conversion; (deterministic mode) dK, dV by flash_bwd_kernel
// and dQ by flash_bwd_dq_kernel.
template <typename T, int DQK, int DV>
void launch_backward(const AttentionShape& s, const Params<T>& p, cudaStream_t stream) {
  // The D and dQ-convert kernels take one block per token row: B·T blocks.
  LOOM_CHECK(s.batch * s.seq < (int64_t{1} << 31), "flash attention: batch ", s.batch, " x seq ", s.seq,
             " tokens exceed the grid limit of the backward's row kernels");
  flash_bwd_dsum_kernel<T, DV><<<s.batch * s.seq, 128, 0, stream>>>(p);
  CUDA_CHECK_LAUNCH("flash_bwd_dsum_kernel");
  if (p.dq_accum) {
    CUDA_CHECK(cudaMemsetAsync(p.dq_accum, 0, dq_accum_floats<DQK, DV>(s) * sizeof(float), stream));
    if constexpr (kBackwardWs<DQK, DV>) launch_backward_ws<T, DQK, DV>(s, p, stream);
    else launch_bwd_kernel<T, DQK, DV, true>(s, p, stream);
    launch_dq_convert<T, DqAccum<DQK, DV>>(s, p, stream);
  } else {
    launch_bwd_kernel<T, DQK, DV, false>(s, p, stream);
    using Tile = DqTile<DQK, DV>;
    auto kernel = flash_bwd_dq_kernel<T, DQK, DV>;
    set_smem(kernel, Tile::kSmemBytes);
    const dim3 grid((s.seq + Tile::kBr - 1) / Tile::kBr, s.heads, s.batch);
    kernel<<<grid, Tile::kThreads, Tile::kSmemBytes, stream>>>(p);
    CUDA_CHECK_LAUNCH("flash_bwd_dq_kernel");
  }
}

template <int DQK, int DV>
int64_t dq_accum_floats(const AttentionShape& s) {
  return DqAccum<DQK, DV>::floats(s.batch, s.seq, s.heads, s.qk_dim);
}

#define LOOM_FLASH_BWD(DQK, DV)                                                                             \
  template int64_t dq_accum_floats<DQK, DV>(const AttentionShape&);                                          \
  template void launch_backward<__nv_bfloat16, DQK, DV>(const AttentionShape&, const Params<__nv_bfloat16>&, \
                                                        cudaStream_t);                                      \
  template void launch_backward<__half, DQK, DV>(const AttentionShape&, const Params<__half>&, cudaStream_t);
LOOM_FLASH_TILE_PAIRS(LOOM_FLASH_BWD)
#undef LOOM_FLASH_BWD

}  // namespace loom::cuda::flash
