// Helpers shared by the kernel benchmarks (bench/attention, bench/kernels): event-timed medians, random inputs,
// the card's DRAM bandwidth and the JSON result files. Host code; every CUDA call is checked (loom::Error).
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "core/tensor.h"
#include "kernels/cuda/cuda_check.h"

namespace loom::bench {

// Median milliseconds of fn() over `reps` runs, each bracketed by events on the legacy default stream (fn's
// work must be queued there), after `warmup` untimed runs.
inline double median_ms(const std::function<void()>& fn, int warmup, int reps) {
  for (int i = 0; i < warmup; ++i) fn();
  CUDA_CHECK(cudaDeviceSynchronize());
  cudaEvent_t start, stop;
  CUDA_CHECK(cudaEventCreate(&start));
  CUDA_CHECK(cudaEventCreate(&stop));
  std::vector<float> t;
  for (int i = 0; i < reps; ++i) {
    CUDA_CHECK(cudaEventRecord(start));
    fn();
    CUDA_CHECK(cudaEventRecord(stop));
    CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    t.push_back(ms);
  }
  CUDA_CHECK(cudaEventDestroy(start));
  CUDA_CHECK(cudaEventDestroy(stop));
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// Unit-variance values from a xorshift generator (fast enough for 10^8 elements), rounded to the 16-bit `t`
// (BF16 or F16) as raw bits.
inline void fill_random(std::vector<uint16_t>& v, DType t, uint64_t seed) {
  uint64_t x = seed | 1;
  for (auto& e : v) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    const float u = float((x >> 40) & 0xffffff) / float(1 << 24);  // [0, 1)
    const float n = (u - 0.5f) * 3.4641016f;                         // unit variance
    e = t == DType::BF16 ? float_to_bf16(n) : float_to_f16(n);
  }
}

// A tensor of `shape` on GPU 0 holding uniform values in [lo, hi) (xorshift, seeded) rounded to dtype.
inline Tensor random_on_gpu(const Shape& shape, DType dtype, uint64_t seed, float lo, float hi) {
  std::vector<float> v(static_cast<size_t>(shape_numel(shape)));
  uint64_t x = seed | 1;
  for (auto& e : v) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    e = lo + (hi - lo) * float((x >> 40) & 0xffffff) / float(1 << 24);
  }
  return Tensor::from_vector(v, shape, dtype).to(Device::cuda(0));
}

// Peak DRAM bandwidth of the current device in bytes per second (2 transfers per memory clock).
inline double peak_dram_bytes_per_s() {
  int device = 0, clock_khz = 0, bus_bits = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  CUDA_CHECK(cudaDeviceGetAttribute(&clock_khz, cudaDevAttrMemoryClockRate, device));
  CUDA_CHECK(cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, device));
  return 2.0 * clock_khz * 1e3 * bus_bits / 8;
}

// Writes `results` to `path` (nothing when path is empty); loom::Error if the file cannot be written.
inline void write_json(const std::string& path, const nlohmann::json& results) {
  if (path.empty()) return;
  std::ofstream f(path);
  f << results.dump(1) << "\n";
  LOOM_CHECK(f.good(), "cannot write ", path);
}

}  // namespace loom::bench
