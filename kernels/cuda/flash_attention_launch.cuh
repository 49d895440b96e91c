// Internal to the flash-attention kernels: the launchers flash_attention.cu dispatches to. Each is defined and
// explicitly instantiated (bf16/fp16 × tile width 64/128) in its own translation unit, flash_attention_fwd.cu
// and flash_attention_bwd.cu, so the two halves compile in parallel.
#pragma once
#include <cuda_runtime.h>

#include "kernels/backend.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/flash_attention_common.cuh"

namespace loom::cuda::flash {

// Queues the forward on `stream`. p carries qkv, out_w, lse and the shape fields.
template <typename T, int D>
void launch_forward(const AttentionShape& s, const Params<T>& p, cudaStream_t stream);

// Queues the backward on `stream`: p carries qkv, out, dout, lse, dqkv, the shape fields, and the workspace
// pointers dsum ([B, H, T] f32) and dq_accum ([B, T, H, dqk] f32, null = deterministic dQ pass).
template <typename T, int D>
void launch_backward(const AttentionShape& s, const Params<T>& p, cudaStream_t stream);

// Raises a kernel's dynamic shared-memory limit (needed above 48 KB); cheap, so done on every launch rather
// than cached (no global state, so no thread-safety question).
template <typename Kernel>
void set_smem(Kernel kernel, int bytes) {
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
}

}  // namespace loom::cuda::flash
