// What a training run will hold in device memory, estimated from the model's shape before anything is
// allocated, so that a run which cannot fit stops at once with the estimate and the device's free memory
// instead of failing in an allocation minutes later ("out of memory allocating 10509778944 bytes").
//
// Per rank (a tensor rank holds 1/R of every split matrix, heads and MLP neurons; ZeRO-1 splits the moments
// over the data ranks), in bytes:
//   weights      fp32 master copy, plus the compute-dtype copy when the compute dtype is narrower (CUDA bf16)
//   gradients    one per weight, in the compute dtype
//   optimizer    AdamW's two fp32 moments
//   activations  what the model keeps per micro-batch for its backward, as the models allocate it: per block
//                the LayerNorm outputs and statistics, QKV, attention output, the backend's saved attention
//                state (the CPU keeps B·H·T² probabilities, flash attention B·H·T statistics), MLP before and
//                after GELU, the residuals; the final norm and the logits (GPT: B·T·Vp/R, its largest tensor);
//                the backward's scratch; the batch itself.
// Not counted: the backend's workspaces and a text sampler's second activation set (both small), the
// allocator's rounding and fragmentation. tests/unit/memory_estimate_test.cc holds the estimate against the
// CPU allocator's measured peak of real training steps.
// Thread-safety: pure functions.
#pragma once
#include <cstdint>
#include <string>

#include "core/config.pb.h"
#include "core/dtype.h"
#include "kernels/backend.h"
#include "trainer/models/model_shape.h"

namespace loom {

struct MemoryEstimate {
  int64_t parameters = 0;  // this rank's parameter count
  int64_t weights = 0, gradients = 0, optimizer = 0, activations = 0;  // bytes
  int64_t total() const { return weights + gradients + optimizer + activations; }
  // "2.31 GiB (weights 0.46, gradients 0.23, AdamW moments 0.93, activations 0.69 GiB)"
  std::string describe() const;
};

// The estimate for one rank of a run of `shape` as `cfg` configures it (data.batch_size, data.seq_len,
// parallel.tensor / sequence / zero1 / data) on `backend`, computing in `compute`.
MemoryEstimate estimate_training_memory(const ModelShape& shape, const config::RunConfig& cfg, const Backend& backend,
                                        DType compute);

// Returns when `estimate` fits in `available` bytes on `device` (or `available` is unknown: negative); else
// throws loom::Error naming both, the parts, and what to change.
void check_memory_fits(const MemoryEstimate& estimate, int64_t available, const std::string& device);

// "1.50 GiB", "12.0 MiB", "512 B".
std::string format_bytes(double bytes);

}  // namespace loom
