// The CUDA backend's entry points (kernels/cuda). This header has no CUDA dependency, so kernels/backend.cc
// can include it from plain C++.
//
// CudaBackend computes every Backend op on one GPU with bf16/f16 (or f32) activations and weights, f32 master
// weights, optimizer moments and reductions. Its extra contract, beyond kernels/backend.h:
// - Float tensors of one call share one dtype (F32, BF16 or F16), except: LayerNorm mean/rstd, cross-entropy
//   losses and the attention `saved` probabilities are F32; convert() takes any two float dtypes;
//   accumulate_sum_squares() any float dtypes; accumulate_sum() F32 x (losses); adamw_update() takes F32
//   param/m/v and any float grad/compute_copy.
// - Work is queued on the backend's own stream; synchronize() waits for it. Ids and targets are checked on
//   the GPU: an id outside [0, V) (or a target outside [-1, vocab)) is skipped and reported as loom::Error by
//   the next synchronize().
// - Deterministic: no float atomics; the same inputs give bit-identical outputs run to run on one GPU model
//   (within a process always; across processes with GemmAlgorithm::Heuristic, the default, or in
//   deterministic mode: a timed GEMM algorithm choice may differ between processes).
// - Not thread-safe (one thread drives a backend); the allocator and copy function are thread-safe. CUDA
//   tensors are allocated on the backend's device when the process has backends on one device only (any
//   thread may allocate), else on the calling thread's current device.
#pragma once
#include <cstdint>
#include <memory>

#include "kernels/backend.h"

namespace loom {

// A backend on CUDA device `device` (0-based). The first one created installs the caching CUDA allocator
// (register_allocator) and the host/device copy function (register_device_copy). Throws loom::Error when
// the device does not exist or CUDA/cuBLAS fail to initialise.
std::unique_ptr<Backend> make_cuda_backend(int device);

// Number of visible CUDA devices; 0 when there is no GPU or no driver. Never throws.
int cuda_device_count();

// How many times this process has blocked for data from a GPU so far: every Tensor copy from a CUDA device to
// the host, and every wait of a CUDA backend for its own device-to-host copies (synchronize(),
// synchronize_and_read(), sum_squares(), count_nonfinite(), ...). Tests use it to assert that a training step
// reads the device once. Thread-safe (a relaxed atomic counter); never throws.
int64_t cuda_host_reads();

}  // namespace loom
