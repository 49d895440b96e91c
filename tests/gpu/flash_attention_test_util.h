// Helpers shared by the flash-attention device tests (flash_attention_test.cc, flash_attention_persistent_fwd_test.cc):
// the GPU check every test starts with, a device buffer that can be poisoned with NaN, and 16-bit conversions.
// Header-only; everything is inline.
#pragma once
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "core/dtype.h"
#include "kernels/cuda/cuda_check.h"

namespace loom::flash_test {

inline bool gpu_visible() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}
#define SKIP_WITHOUT_GPU() \
  if (!::loom::flash_test::gpu_visible()) GTEST_SKIP() << "no CUDA GPU visible"

// Device buffer owned by a test; throws loom::Error if cudaMalloc fails.
struct DeviceBuffer {
  void* ptr = nullptr;
  size_t bytes = 0;
  explicit DeviceBuffer(size_t n) : bytes(n) { CUDA_CHECK(cudaMalloc(&ptr, std::max<size_t>(n, 1))); }
  ~DeviceBuffer() { cudaFree(ptr); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void poison() { CUDA_CHECK(cudaMemset(ptr, 0xff, bytes)); }  // 0xffff.. is NaN in bf16, f16 and f32
};

inline uint16_t to_half_bits(float f, DType t) { return t == DType::BF16 ? float_to_bf16(f) : float_to_f16(f); }
inline float from_half_bits(uint16_t h, DType t) { return t == DType::BF16 ? bf16_to_float(h) : f16_to_float(h); }

}  // namespace loom::flash_test
