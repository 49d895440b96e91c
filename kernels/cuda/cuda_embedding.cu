// Token embedding forward and a deterministic backward.
//
// The backward must not use float atomics (their summation order varies run to run). Instead the token ids
// are sorted together with their positions (a stable radix sort, so equal ids keep ascending positions);
// each run of equal ids is then owned by one thread block, which sums its dout rows in that order and adds
// the sum to its dtable row. So every dtable row is written by exactly one block, in a fixed order.
#include <cub/device/device_radix_sort.cuh>

#include "kernels/cuda/cuda_ops.cuh"

namespace loom::cuda {

namespace {

// out[n, c] = table[ids[n], c]; an id outside [0, V) flags kBadEmbeddingId and writes zeros.
template <typename T>
__global__ void embedding_forward_kernel(T* out, const int32_t* ids, const T* table, int64_t N, int64_t V,
                                         int64_t C, int* error_flag) {
  LOOM_GRID_STRIDE(i, N * C) {
    const int64_t n = i / C, c = i % C;
    const int32_t id = ids[n];
    if (id < 0 || id >= V) {
      if (c == 0) atomicOr(error_flag, kBadEmbeddingId);
      out[i] = from_f32<T>(0.f);
    } else {
      out[i] = table[id * C + c];
    }
  }
}

// keys[n] = ids[n] (an id outside [0, V) becomes V, which sorts last and is skipped, and is flagged);
// positions[n] = n.
__global__ void embedding_sort_input_kernel(int32_t* keys, int32_t* positions, const int32_t* ids, int64_t N,
                                            int64_t V, int* error_flag) {
  LOOM_GRID_STRIDE(n, N) {
    int32_t id = ids[n];
    if (id < 0 || id >= V) {
      atomicOr(error_flag, kBadEmbeddingId);
      id = static_cast<int32_t>(V);
    }
    keys[n] = id;
    positions[n] = static_cast<int32_t>(n);
  }
}

// Block i owns the run of equal sorted ids that starts at i (other blocks exit at once):
//   dtable[id, c] += Σ_{j in run, ascending} dout[positions[j], c]
template <typename T>
__global__ void embedding_backward_kernel(T* dtable, const T* dout, const int32_t* sorted_ids,
                                          const int32_t* positions, int64_t N, int64_t V, int64_t C) {
  const int64_t start = blockIdx.x;
  const int32_t id = sorted_ids[start];
  if (id >= V || (start > 0 && sorted_ids[start - 1] == id)) return;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    float sum = 0.f;
    for (int64_t j = start; j < N && sorted_ids[j] == id; ++j) sum += to_f32(dout[positions[j] * C + c]);
    T& dst = dtable[int64_t{id} * C + c];
    dst = from_f32<T>(to_f32(dst) + sum);
  }
}

int bits_for(int64_t max_value) {
  int bits = 1;
  while ((int64_t{1} << bits) <= max_value) ++bits;
  return bits;
}

}  // namespace

template <typename T>
void embedding_forward(T* out, const int32_t* ids, const T* table, int64_t N, int64_t V, int64_t C,
                       int* error_flag, cudaStream_t stream) {
  if (N * C == 0) return;
  embedding_forward_kernel<<<grid_for(N * C), 256, 0, stream>>>(out, ids, table, N, V, C, error_flag);
  LOOM_CUDA_LAUNCHED("embedding_forward_kernel");
}

template <typename T>
void embedding_backward(T* dtable, const T* dout, const int32_t* ids, int64_t N, int64_t V, int64_t C,
                        int* error_flag, cudaStream_t stream) {
  if (N == 0 || C == 0) return;
  LOOM_CHECK(N < (int64_t{1} << 31) && V < (int64_t{1} << 31) - 1, "embedding_backward: N ", N, " or V ", V,
             " too large for 32-bit sort keys");
  const size_t bytes = static_cast<size_t>(N) * sizeof(int32_t);
  ScratchBuffer keys(bytes), positions(bytes), sorted_keys(bytes), sorted_positions(bytes);
  embedding_sort_input_kernel<<<grid_for(N), 256, 0, stream>>>(keys.as<int32_t>(), positions.as<int32_t>(), ids,
                                                               N, V, error_flag);
  LOOM_CUDA_LAUNCHED("embedding_sort_input_kernel");

  const int end_bit = bits_for(V);  // keys are in [0, V]
  size_t temp_bytes = 0;
  LOOM_CUDA_CALL(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, keys.as<int32_t>(), sorted_keys.as<int32_t>(),
                                                 positions.as<int32_t>(), sorted_positions.as<int32_t>(),
                                                 static_cast<int>(N), 0, end_bit, stream));
  ScratchBuffer temp(temp_bytes);
  LOOM_CUDA_CALL(cub::DeviceRadixSort::SortPairs(temp.as<void>(), temp_bytes, keys.as<int32_t>(),
                                                 sorted_keys.as<int32_t>(), positions.as<int32_t>(),
                                                 sorted_positions.as<int32_t>(), static_cast<int>(N), 0, end_bit,
                                                 stream));

  const int threads = static_cast<int>(std::min<int64_t>(256, (C + 31) / 32 * 32));
  embedding_backward_kernel<<<static_cast<unsigned>(N), threads, 0, stream>>>(
      dtable, dout, sorted_keys.as<int32_t>(), sorted_positions.as<int32_t>(), N, V, C);
  LOOM_CUDA_LAUNCHED("embedding_backward_kernel");
}

#define LOOM_INSTANTIATE(T)                                                                                   \
  template void embedding_forward<T>(T*, const int32_t*, const T*, int64_t, int64_t, int64_t, int*, cudaStream_t); \
  template void embedding_backward<T>(T*, const T*, const int32_t*, int64_t, int64_t, int64_t, int*, cudaStream_t);
LOOM_INSTANTIATE(float)
LOOM_INSTANTIATE(bf16)
LOOM_INSTANTIATE(f16)
#undef LOOM_INSTANTIATE

}  // namespace loom::cuda
