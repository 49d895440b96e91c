// Launcher of the warp-specialised forward (flash_attention_fwd_ws.cuh) and the host side of its TMA views.
// Its own translation unit so that it compiles in parallel with the cp.async forward and the backward.
#include <cudaTypedefs.h>

#include "kernels/cuda/flash_attention_fwd_ws.cuh"
#include "kernels/cuda/flash_attention_launch.cuh"

namespace loom::cuda::flash {
namespace {

// cuTensorMapEncodeTiled from the driver, fetched through the runtime so that nothing links libcuda directly.
// Looked up once (a function-local static: thread-safe initialisation, never changed after).
PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static const PFN_cuTensorMapEncodeTiled_v12000 encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
    CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &found));
    LOOM_CHECK(found == cudaDriverEntryPointSuccess && fn != nullptr,
               "flash attention: the CUDA driver has no cuTensorMapEncodeTiled (a CUDA 12.0+ driver is needed)");
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
  }();
  return encode;
}

constexpr uint64_t kMaxTmaStride = uint64_t(1) << 40;  // cuTensorMapEncodeTiled: strides < 2^40 bytes

// The TMA view of one operand's columns of qkv: 4-D {head_dim, heads, seq, batch} starting at `base` (the
// operand's first column of token 0), strides in bytes {head_dim, qkv row, one batch's rows}·2; boxes of
// {64, 1, box_rows, 1} elements with the 128-byte swizzle, i.e. one atom of the shared-memory tile layout.
// dims[0] is the real head dim, so the box columns past it (a head dim below the tile width) and the rows past
// seq are out of bounds and zero-filled by the TMA unit.
template <typename T>
CUtensorMap qkv_view(const T* base, int64_t head_dim, const AttentionShape& s, uint32_t box_rows, const char* name) {
  const uint64_t row_bytes = uint64_t(s.qkv_width()) * sizeof(T);
  const cuuint64_t dims[4] = {cuuint64_t(head_dim), cuuint64_t(s.heads), cuuint64_t(s.seq), cuuint64_t(s.batch)};
  const cuuint64_t strides[3] = {cuuint64_t(head_dim) * sizeof(T), row_bytes, row_bytes * uint64_t(s.seq)};
  const cuuint32_t box[4] = {64, 1, box_rows, 1};
  const cuuint32_t element_strides[4] = {1, 1, 1, 1};
  CUtensorMap view;
  const CUresult r = tensor_map_encoder()(
      &view, kIsBf16<T> ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 4,
      const_cast<T*>(base), dims, strides, box, element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
      CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS)
    fail("flash attention: cuTensorMapEncodeTiled failed (CUresult ", int(r), ") for the ", name,
         " view of qkv: head dim ", head_dim, ", heads ", s.heads, ", seq ", s.seq, ", batch ", s.batch,
         ", qkv row of ", s.qkv_width(), " elements, box rows ", box_rows);
  return view;
}

}  // namespace

template <typename T, int DQK, int DV>
void launch_forward_ws(const AttentionShape& s, const Params<T>& p, cudaStream_t stream) {
  using Tile = WsFwdTile<DQK, DV>;
  // TMA needs 16-byte aligned bases and strides that are multiples of 16 bytes below 2^40. flash_attention_forward
  // has checked that qkv is 16-byte aligned and that the head dims (so the column offsets of k and v and the qkv
  // row) are multiples of 8 elements; the batch stride is what remains.
  const uint64_t batch_bytes = uint64_t(s.qkv_width()) * sizeof(T) * uint64_t(s.seq);
  LOOM_CHECK(batch_bytes < kMaxTmaStride, "flash attention: one batch of qkv spans ", batch_bytes,
             " bytes, beyond the TMA stride limit of 2^40 (seq ", s.seq, ", qkv row of ", s.qkv_width(), ")");
  const int64_t H = s.heads;
  TmaViews views;
  views.q = qkv_view(p.qkv, s.qk_dim, s, Tile::kBr, "q");
  views.k = qkv_view(p.qkv + H * s.qk_dim, s.qk_dim, s, Tile::kBc, "k");
  views.v = qkv_view(p.qkv + 2 * H * s.qk_dim, s.v_dim, s, Tile::kBc, "v");
  auto kernel = flash_fwd_ws_kernel<T, DQK, DV>;
  set_smem(kernel, Tile::kSmemBytes);
  const dim3 grid((s.seq + Tile::kBr - 1) / Tile::kBr, s.heads, s.batch);
  kernel<<<grid, Tile::kThreads, Tile::kSmemBytes, stream>>>(p, views);
  CUDA_CHECK_LAUNCH("flash_fwd_ws_kernel");
}

#define LOOM_FLASH_FWD_WS(DQK, DV)                                                                            \
  template void launch_forward_ws<__nv_bfloat16, DQK, DV>(const AttentionShape&, const Params<__nv_bfloat16>&, \
                                                          cudaStream_t);                                      \
  template void launch_forward_ws<__half, DQK, DV>(const AttentionShape&, const Params<__half>&, cudaStream_t);
LOOM_FLASH_WS_TILE_PAIRS(LOOM_FLASH_FWD_WS)
#undef LOOM_FLASH_FWD_WS

}  // namespace loom::cuda::flash
