// CUDA error checking: every runtime call and every kernel launch is checked, and a failure becomes a
// loom::Error naming the call, the source location and CUDA's own description.
//
// Contract: CUDA_CHECK(expr) evaluates expr (a cudaError_t) once and throws loom::Error if it is not
// cudaSuccess. CUDA_CHECK_LAUNCH(name) checks cudaGetLastError() right after a <<<...>>> launch, so a bad
// launch configuration (too much shared memory, a zero grid) is reported at the launch that caused it.
// Asynchronous faults inside a kernel surface at the next synchronising call, which is checked the same way.
#pragma once
#include <cuda_runtime.h>

#include "core/error.h"

#define CUDA_CHECK(call)                                                                                 \
  do {                                                                                                   \
    cudaError_t loom_cuda_err_ = (call);                                                                 \
    if (loom_cuda_err_ != cudaSuccess)                                                                   \
      ::loom::fail("CUDA call failed: ", #call, " at ", __FILE__, ":", __LINE__, ": ",                   \
                   cudaGetErrorName(loom_cuda_err_), " (", cudaGetErrorString(loom_cuda_err_), ")"); \
  } while (0)

#define CUDA_CHECK_LAUNCH(kernel_name)                                                                   \
  do {                                                                                                   \
    cudaError_t loom_cuda_err_ = cudaGetLastError();                                                     \
    if (loom_cuda_err_ != cudaSuccess)                                                                   \
      ::loom::fail("CUDA kernel launch failed: ", kernel_name, " at ", __FILE__, ":", __LINE__, ": ",    \
                   cudaGetErrorName(loom_cuda_err_), " (", cudaGetErrorString(loom_cuda_err_), ")"); \
  } while (0)
