// Error checks for CUDA runtime and cuBLAS calls in the CUDA backend.
//
// Contract: every CUDA/cuBLAS call in kernels/cuda goes through LOOM_CUDA_CALL / LOOM_CUBLAS_CALL, and every
// kernel launch is followed by LOOM_CUDA_LAUNCHED(what). A failure throws loom::Error naming the call (or the
// kernel), file:line and the library's error string. Named apart from kernels/cuda/cuda_check.h (written for
// the flash-attention kernels) so both headers can be included in one file.
#pragma once
#include <cublasLt.h>
#include <cuda_runtime.h>

#include "core/error.h"

namespace loom::cuda {

[[noreturn]] inline void throw_cuda_error(cudaError_t err, const char* call, const char* file, int line) {
  fail("CUDA error at ", file, ":", line, ": ", call, " failed: ", cudaGetErrorName(err), " (",
       cudaGetErrorString(err), ")");
}

[[noreturn]] inline void throw_cublas_error(cublasStatus_t status, const char* call, const char* file, int line) {
  fail("cuBLAS error at ", file, ":", line, ": ", call, " failed: status ", static_cast<int>(status), " (",
       cublasLtGetStatusString(status), ")");
}

}  // namespace loom::cuda

#define LOOM_CUDA_CALL(call)                                                                      \
  do {                                                                                            \
    const cudaError_t loom_cuda_err_ = (call);                                                    \
    if (loom_cuda_err_ != cudaSuccess) ::loom::cuda::throw_cuda_error(loom_cuda_err_, #call, __FILE__, __LINE__); \
  } while (0)

#define LOOM_CUBLAS_CALL(call)                                                                    \
  do {                                                                                            \
    const cublasStatus_t loom_cublas_status_ = (call);                                            \
    if (loom_cublas_status_ != CUBLAS_STATUS_SUCCESS)                                             \
      ::loom::cuda::throw_cublas_error(loom_cublas_status_, #call, __FILE__, __LINE__);           \
  } while (0)

// After a <<<...>>> launch: reports a bad configuration (or an earlier asynchronous fault) at once.
#define LOOM_CUDA_LAUNCHED(kernel_name)                                                           \
  do {                                                                                            \
    const cudaError_t loom_cuda_err_ = cudaGetLastError();                                        \
    if (loom_cuda_err_ != cudaSuccess)                                                            \
      ::loom::cuda::throw_cuda_error(loom_cuda_err_, "launch of " kernel_name, __FILE__, __LINE__); \
  } while (0)
