// count_nonfinite for the CUDA backend: one kernel counts the NaN and ±Inf elements of a whole list of
// tensors, and only the 8-byte count is copied to the host. The CPU twin is kernels/cpu/cpu_finite.cc.
#include <algorithm>
#include <string>
#include <vector>

#include "kernels/cuda/cuda_backend.cuh"
#include "kernels/cuda/cuda_op_check.cuh"
#include "kernels/cuda/cuda_ops.cuh"

namespace loom::cuda {
namespace {

constexpr int kThreads = 256;
constexpr unsigned kMaxGridY = 65535;  // CUDA's limit on gridDim.y

struct FiniteInput {
  const void* data;
  int64_t n;
  Elem elem;
};

// An element is NaN or ±Inf exactly when its exponent bits are all ones; testing the bits needs no
// conversion, so every storage type is judged by its own format:
//   f32 0x7f800000, bf16 0x7f80, f16 0x7c00.
__device__ __forceinline__ bool is_nonfinite(const void* p, int64_t i, Elem e) {
  switch (e) {
    case Elem::BF16: return (static_cast<const uint16_t*>(p)[i] & 0x7f80u) == 0x7f80u;
    case Elem::F16: return (static_cast<const uint16_t*>(p)[i] & 0x7c00u) == 0x7c00u;
    default: return (static_cast<const uint32_t*>(p)[i] & 0x7f800000u) == 0x7f800000u;
  }
}

// *count += Σ_t Σ_i [inputs[t][i] is not finite]. blockIdx.y (strided by gridDim.y) picks the tensor,
// blockIdx.x/threadIdx.x stride over its elements; each block adds its integer total with one atomic, so
// the count is exact and independent of the order.
__global__ void count_nonfinite_kernel(unsigned long long* count, const FiniteInput* inputs, int64_t num_inputs) {
  __shared__ unsigned long long warp_counts[kThreads / 32];
  unsigned long long local = 0;
  for (int64_t t = blockIdx.y; t < num_inputs; t += gridDim.y) {
    const FiniteInput in = inputs[t];
    LOOM_GRID_STRIDE(i, in.n) local += is_nonfinite(in.data, i, in.elem);
  }
  for (int o = 16; o > 0; o >>= 1) local += __shfl_xor_sync(0xffffffffu, local, o);
  if (threadIdx.x % 32 == 0) warp_counts[threadIdx.x / 32] = local;
  __syncthreads();
  if (threadIdx.x == 0) {
    unsigned long long block_total = 0;
    for (int w = 0; w < kThreads / 32; ++w) block_total += warp_counts[w];
    if (block_total) atomicAdd(count, block_total);
  }
}

}  // namespace

int64_t CudaBackend::count_nonfinite(const std::vector<Tensor>& tensors) {
  op_contract::float_list(op_check("count_nonfinite"), tensors);
  std::vector<FiniteInput> inputs;
  int64_t largest = 0;
  for (const Tensor& t : tensors) {
    if (t.numel() == 0) continue;
    inputs.push_back({t.raw(), t.numel(), elem_of(t.dtype())});
    largest = std::max(largest, t.numel());
  }
  if (inputs.empty()) return 0;
  activate();
  const size_t table_bytes = inputs.size() * sizeof(FiniteInput);
  ScratchBuffer table(table_bytes);
  ScratchBuffer count(sizeof(unsigned long long));
  // The table is pageable host memory: cudaMemcpyAsync stages it before returning, and the stream
  // synchronisation below keeps `inputs` alive until the kernel has run in any case.
  LOOM_CUDA_CALL(cudaMemcpyAsync(table.as<FiniteInput>(), inputs.data(), table_bytes, cudaMemcpyHostToDevice, stream_));
  LOOM_CUDA_CALL(cudaMemsetAsync(count.as<unsigned long long>(), 0, sizeof(unsigned long long), stream_));
  const dim3 grid(std::min<unsigned>(grid_for(largest, kThreads), 1024),
                  static_cast<unsigned>(std::min<size_t>(inputs.size(), kMaxGridY)));
  count_nonfinite_kernel<<<grid, kThreads, 0, stream_>>>(count.as<unsigned long long>(), table.as<FiniteInput>(),
                                                          static_cast<int64_t>(inputs.size()));
  LOOM_CUDA_LAUNCHED("count_nonfinite_kernel");
  unsigned long long host = 0;
  LOOM_CUDA_CALL(cudaMemcpyAsync(&host, count.as<unsigned long long>(), sizeof host, cudaMemcpyDeviceToHost, stream_));
  wait_for_host_read(stream_);
  return static_cast<int64_t>(host);
}

}  // namespace loom::cuda
