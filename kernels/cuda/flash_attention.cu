// Host side of the flash-attention API: argument checks, workspace layout, dispatch over (dtype, q/k tile width,
// v tile width) to the launchers of flash_attention_fwd.cu / flash_attention_bwd.cu (instantiated there only,
// for bf16/fp16 × LOOM_FLASH_TILE_PAIRS, which lets the two halves compile in parallel).
#include "kernels/cuda/flash_attention.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/flash_attention_launch.cuh"

namespace loom::cuda {
namespace {

using flash::Params;

constexpr size_t kAlign = 256;
size_t round_up(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }
bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

void check_supported(const AttentionShape& s, DType dtype) {
  const std::string why = flash_attention_check(s, dtype);
  if (!why.empty()) fail("flash attention: ", why);
  int device = 0, major = 0, minor = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  if (major != 9 || minor != 0)
    fail("flash attention: needs a Hopper GPU (compute capability 9.0, built for sm_90a); device ", device,
         " has ", major, ".", minor);
}

template <typename T>
Params<T> make_params(const AttentionShape& s) {
  Params<T> p{};
  p.seq = static_cast<int>(s.seq);
  p.heads = static_cast<int>(s.heads);
  p.dqk = static_cast<int>(s.qk_dim);
  p.dv = static_cast<int>(s.v_dim);
  p.qkv_stride = s.qkv_width();
  p.out_stride = s.out_width();
  p.scale = static_cast<float>(s.scale);
  p.scale_log2 = static_cast<float>(s.scale * 1.4426950408889634);
  p.causal = s.causal;
  return p;
}

// Calls fn.template operator()<T, DQK, DV>() for the runtime dtype and the tile widths of the two head dims
// (flash::tile_width; the columns past a head dim are zero-filled).
template <typename T, typename Fn>
void dispatch_tiles(const AttentionShape& s, Fn&& fn) {
  const int dqk = flash::tile_width(s.qk_dim), dv = flash::tile_width(s.v_dim);
#define LOOM_FLASH_CASE(DQK, DV) \
  if (dqk == DQK && dv == DV) return fn.template operator()<T, DQK, DV>();
  LOOM_FLASH_TILE_PAIRS(LOOM_FLASH_CASE)
#undef LOOM_FLASH_CASE
  fail("flash attention: no kernel for tile widths ", dqk, " x ", dv);  // unreachable after the checks
}
template <typename Fn>
void dispatch(DType dtype, const AttentionShape& s, Fn&& fn) {
  if (dtype == DType::BF16) return dispatch_tiles<__nv_bfloat16>(s, fn);
  dispatch_tiles<__half>(s, fn);
}

}  // namespace

std::string flash_attention_check(const AttentionShape& s, DType dtype) {
  if (dtype != DType::BF16 && dtype != DType::F16)
    return detail::concat("dtype ", dtype_name(dtype), " is not supported (bf16 or f16)");
  for (const auto& [name, d] : {std::pair{"q/k head dim ", s.qk_dim}, std::pair{"v head dim ", s.v_dim}})
    if (d < 8 || d > 128 || d % 8 != 0)
      return detail::concat(name, d, " is not supported (a multiple of 8 from 8 to 128)");
  if (s.batch < 1 || s.seq < 1 || s.heads < 1)
    return detail::concat("batch ", s.batch, ", seq ", s.seq, ", heads ", s.heads, " must all be >= 1");
  if (s.seq > INT32_MAX / 2 || s.heads > 65535 || s.batch > 65535)
    return detail::concat("seq ", s.seq, " / heads ", s.heads, " / batch ", s.batch, " exceed the grid limits");
  if (!(std::isfinite(s.scale) && s.scale > 0)) return detail::concat("softmax scale ", s.scale, " must be finite and > 0");
  return "";
}

int flash_attention_tile_width(int64_t head_dim) { return flash::tile_width(head_dim); }

int flash_attention_d64_query_rows(int64_t seq, bool causal) {
  const auto padded = [seq](int64_t rows) { return (seq + rows - 1) / rows * rows; };
  if (seq >= 2048) return 192;
  return causal || padded(192) * 5 > padded(128) * 6 ? 128 : 192;
}

void flash_attention_forward(const AttentionShape& s, DType dtype, const void* qkv, void* out, float* lse,
                             cudaStream_t stream, int d64_query_rows, int max_blocks) {
  LOOM_CHECK(d64_query_rows == 0 || d64_query_rows == 128 || d64_query_rows == 192,
             "flash_attention_forward: d64_query_rows ", d64_query_rows, " must be 0 (choose), 128 or 192");
  LOOM_CHECK(max_blocks >= kFlashBlocksAuto, "flash_attention_forward: max_blocks ", max_blocks,
             " must be -1 (the launcher's choice), 0 (a block per tile) or > 0 (persistent blocks)");
  check_supported(s, dtype);
  LOOM_CHECK(qkv && out && lse, "flash_attention_forward: null pointer (qkv, out or lse)");
  LOOM_CHECK(aligned16(qkv) && aligned16(out), "flash_attention_forward: qkv and out must be 16-byte aligned");
  const int rows = d64_query_rows ? d64_query_rows : flash_attention_d64_query_rows(s.seq, s.causal);
  dispatch(dtype, s, [&]<typename T, int DQK, int DV>() {
    Params<T> p = make_params<T>(s);
    p.qkv = static_cast<const T*>(qkv);
    p.out_w = static_cast<T*>(out);
    p.lse = lse;
    flash::launch_forward<T, DQK, DV>(s, p, stream, rows, max_blocks);
  });
}

size_t flash_attention_backward_workspace_bytes(const AttentionShape& s, bool deterministic) {
  const size_t rows = static_cast<size_t>(s.batch * s.seq * s.heads);
  size_t bytes = round_up(rows * sizeof(float));
  if (!deterministic) {
    int64_t dq_floats = 0;  // the layout (and so the size) depends on the tile pair; T does not matter
    dispatch_tiles<float>(s, [&]<typename, int DQK, int DV>() { dq_floats = flash::dq_accum_floats<DQK, DV>(s); });
    bytes += round_up(static_cast<size_t>(dq_floats) * sizeof(float));
  }
  return bytes;
}

void flash_attention_backward(const AttentionShape& s, DType dtype, const void* qkv, const void* out,
                              const void* dout, const float* lse, void* dqkv, void* workspace,
                              size_t workspace_bytes, bool deterministic, cudaStream_t stream) {
  check_supported(s, dtype);
  LOOM_CHECK(qkv && out && dout && lse && dqkv && workspace,
             "flash_attention_backward: null pointer (qkv, out, dout, lse, dqkv or workspace)");
  const size_t need = flash_attention_backward_workspace_bytes(s, deterministic);
  LOOM_CHECK(workspace_bytes >= need, "flash_attention_backward: workspace of ", workspace_bytes,
             " bytes is smaller than the ", need, " bytes needed");
  LOOM_CHECK(aligned16(qkv) && aligned16(out) && aligned16(dout) && aligned16(dqkv),
             "flash_attention_backward: qkv, out, dout and dqkv must be 16-byte aligned");
  const size_t rows = static_cast<size_t>(s.batch * s.seq * s.heads);
  LOOM_CHECK(reinterpret_cast<uintptr_t>(workspace) % kAlign == 0,
             "flash_attention_backward: workspace must be 256-byte aligned");
  dispatch(dtype, s, [&]<typename T, int DQK, int DV>() {
    Params<T> p = make_params<T>(s);
    p.qkv = static_cast<const T*>(qkv);
    p.out = static_cast<const T*>(out);
    p.dout = static_cast<const T*>(dout);
    p.lse = const_cast<float*>(lse);
    p.dqkv = static_cast<T*>(dqkv);
    // Workspace: D = rowsum(dO∘O) [B, H, T], then (atomic mode) the f32 dQ accumulator (flash::dq_accum_floats).
    char* ws = static_cast<char*>(workspace);
    p.dsum = reinterpret_cast<float*>(ws);
    p.dq_accum = deterministic ? nullptr : reinterpret_cast<float*>(ws + round_up(rows * sizeof(float)));
    flash::launch_backward<T, DQK, DV>(s, p, stream);
  });
}

}  // namespace loom::cuda
