// Host side of the flash-attention TMA views (declared in flash_attention_launch.cuh): the driver's tensor-map
// encoder and the 4-D head view both warp-specialised kernels read their 16-bit operands through.
#include <cudaTypedefs.h>

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

}  // namespace

CUtensorMap head_view(const void* base, bool bf16, int64_t head_dim, int64_t row_elems, const AttentionShape& s,
                      uint32_t box_rows, const char* name) {
  // TMA needs a 16-byte aligned base and strides that are multiples of 16 bytes below 2^40. The public entry
  // points have checked that the buffers are 16-byte aligned and the head dims (so the column offsets and the
  // row lengths) multiples of 8 elements; the batch stride is what remains.
  const uint64_t row_bytes = uint64_t(row_elems) * 2, batch_bytes = row_bytes * uint64_t(s.seq);
  LOOM_CHECK(batch_bytes < kMaxTmaStride, "flash attention: one batch of ", name, " spans ", batch_bytes,
             " bytes, beyond the TMA stride limit of 2^40 (seq ", s.seq, ", row of ", row_elems, " elements)");
  const cuuint64_t dims[4] = {cuuint64_t(head_dim), cuuint64_t(s.heads), cuuint64_t(s.seq), cuuint64_t(s.batch)};
  const cuuint64_t strides[3] = {cuuint64_t(head_dim) * 2, row_bytes, batch_bytes};
  const cuuint32_t box[4] = {64, 1, box_rows, 1};
  const cuuint32_t element_strides[4] = {1, 1, 1, 1};
  CUtensorMap view;
  const CUresult r = tensor_map_encoder()(
      &view, bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 4, const_cast<void*>(base),
      dims, strides, box, element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
      CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS)
    fail("flash attention: cuTensorMapEncodeTiled failed (CUresult ", int(r), ") for the ", name,
         " view: head dim ", head_dim, ", heads ", s.heads, ", seq ", s.seq, ", batch ", s.batch, ", row of ",
         row_elems, " elements, box rows ", box_rows);
  return view;
}

}  // namespace loom::cuda::flash
