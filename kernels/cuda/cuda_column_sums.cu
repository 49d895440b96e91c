// Deterministic column sums: dst[j] += Σ_r src[r, j]. They are every linear layer's bias gradient
// (dbias[o] += Σ_n dout[n, o], CudaBackend::matmul_backward), add_position_backward's sum over the batch, and
// (stage 2 alone) the end of LayerNorm's dw/db. Two passes, no float atomics: the order of the additions depends
// only on the shape and on whether src's rows are 16-byte aligned, never on timing or on the GPU, so results are
// identical from run to run, rank to rank and card to card.
#include <limits>

#include "kernels/cuda/cuda_ops.cuh"

namespace loom::cuda {

namespace {

// Stage 1's launch shape. A block is kRowLanes warps over one tile of 32·K columns; each thread keeps
// kUnroll 16-byte loads in flight, so a block has 32·kRowLanes·kUnroll·16 B = 32 KiB outstanding, and
// kTargetBlocks blocks (about two per SM of an H100) keep DRAM busy. A part has at least kMinRowsPerPart rows,
// so the partials (parts·width f32, written once and read back from L2) stay a few percent of the input.
constexpr int kRowLanes = 16;
constexpr int kUnroll = 4;
constexpr int64_t kTargetBlocks = 256;
constexpr int64_t kMinRowsPerPart = 64;

// Stage 1 (the bias-gradient kernel): partials[p, j] = Σ_{r in part p} src[r, j] for src [rows, width], in f32.
//   Grid (tiles of 32·K columns, parts of rows_per_part rows); block (32, kRowLanes).
//   Thread (x, y) owns the K columns [K·pack, K·pack + K), pack = tile·32 + x, and the rows
//   r = begin + y, begin + y + kRowLanes, ... < end of its part: a warp reads 32·K contiguous elements of a row
//   (512 bytes with K·sizeof(T) = 16, coalesced 16-byte loads), so src is read exactly once.
//   lane_sum[y][j] = Σ_{its rows, ascending} src[r, j];  partials[p, j] = Σ_{y = 0 .. kRowLanes-1} lane_sum[y][j]
//   in lane order. K = 1 (one element per thread) for rows that are not 16-byte aligned.
template <int K, typename T>
__global__ void __launch_bounds__(32 * kRowLanes)
    column_partials_kernel(float* partials, const T* src, int64_t rows, int64_t width, int64_t rows_per_part) {
  constexpr int kTile = 32 * K;
  __shared__ float lane_sums[kRowLanes][kTile];
  const int64_t tile_start = blockIdx.x * int64_t{kTile};
  const int64_t pack = blockIdx.x * int64_t{32} + threadIdx.x;
  const int64_t begin = blockIdx.y * rows_per_part, end = min(rows, begin + rows_per_part);
  float sum[K] = {};
  if (pack * K < width) {
    int64_t r = begin + threadIdx.y;
    for (; r + (kUnroll - 1) * kRowLanes < end; r += kUnroll * kRowLanes) {
      float v[kUnroll][K];  // all loads issued before the first add
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) load_pack<K>(v[u], src + (r + u * kRowLanes) * width, pack);
#pragma unroll
      for (int u = 0; u < kUnroll; ++u)
#pragma unroll
        for (int e = 0; e < K; ++e) sum[e] += v[u][e];
    }
    for (; r < end; r += kRowLanes) {
      float v[K];
      load_pack<K>(v, src + r * width, pack);
#pragma unroll
      for (int e = 0; e < K; ++e) sum[e] += v[e];
    }
  }
#pragma unroll
  for (int e = 0; e < K; ++e) lane_sums[threadIdx.y][K * threadIdx.x + e] = sum[e];
  __syncthreads();
  for (int c = threadIdx.y * 32 + threadIdx.x; c < kTile && tile_start + c < width; c += 32 * kRowLanes) {
    float total = 0.f;
#pragma unroll
    for (int y = 0; y < kRowLanes; ++y) total += lane_sums[y][c];
    partials[blockIdx.y * width + tile_start + c] = total;
  }
}

// Stage 2: dst[j] += Σ_p partials[p, j]. A block covers 32 columns with blockDim.y part-lanes: lane y sums parts
// p = y, y + blockDim.y, ... in ascending order, then the lane sums are added in lane order, so the result is
// deterministic while thousands of parts are still read in parallel.
template <typename T>
__global__ void add_partials_kernel(T* dst, const float* partials, int64_t parts, int64_t width) {
  __shared__ float lane_sums[32][33];  // [y][x], padded against bank conflicts
  const int64_t j = blockIdx.x * int64_t{32} + threadIdx.x;
  float sum = 0.f;
  if (j < width)
    for (int64_t p = threadIdx.y; p < parts; p += blockDim.y) sum += partials[p * width + j];
  lane_sums[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.y == 0 && j < width) {
    float total = 0.f;
    for (unsigned y = 0; y < blockDim.y; ++y) total += lane_sums[y][threadIdx.x];
    dst[j] = from_f32<T>(to_f32(dst[j]) + total);
  }
}

// Both stages with K elements per thread (K·sizeof(T) = 16: src 16-byte aligned and width % K == 0; else 1).
// parts: enough for kTargetBlocks blocks, at most one per kMinRowsPerPart rows (so at most kTargetBlocks,
// far below the grid's 65535 in y), then evened out so that no part is empty.
template <int K, typename T>
void add_column_sums_by(T* dst, const T* src, int64_t rows, int64_t width, cudaStream_t stream) {
  const int64_t tiles = (width + 32 * K - 1) / (32 * K);
  const int64_t most_parts = (rows + kMinRowsPerPart - 1) / kMinRowsPerPart;
  const int64_t wanted = std::clamp<int64_t>((kTargetBlocks + tiles - 1) / tiles, 1, most_parts);
  const int64_t rows_per_part = (rows + wanted - 1) / wanted;
  const int64_t parts = (rows + rows_per_part - 1) / rows_per_part;
  LOOM_CHECK(tiles <= std::numeric_limits<int32_t>::max(), "column sums: width ", width, " is too wide");
  ScratchBuffer partials(static_cast<size_t>(parts * width) * sizeof(float));
  column_partials_kernel<K><<<dim3(static_cast<unsigned>(tiles), static_cast<unsigned>(parts)),
                              dim3(32, kRowLanes), 0, stream>>>(partials.as<float>(), src, rows, width,
                                                                rows_per_part);
  LOOM_CUDA_LAUNCHED("column_partials_kernel");
  add_partial_sums(dst, partials.as<float>(), parts, width, stream);
}

}  // namespace

template <typename T>
void add_partial_sums(T* dst, const float* partials, int64_t parts, int64_t width, cudaStream_t stream) {
  if (width == 0) return;
  const dim3 block(32, static_cast<unsigned>(std::clamp<int64_t>(parts, 1, 32)));
  const auto blocks = static_cast<unsigned>((width + 31) / 32);
  add_partials_kernel<<<blocks, block, 0, stream>>>(dst, partials, parts, width);
  LOOM_CUDA_LAUNCHED("add_partials_kernel");
}

template <typename T>
void add_column_sums(T* dst, const T* src, int64_t rows, int64_t width, cudaStream_t stream) {
  if (width == 0 || rows == 0) return;
  constexpr int kPack = Pack16<T>::kSize;
  if (is_aligned16(src) && width % kPack == 0)
    add_column_sums_by<kPack>(dst, src, rows, width, stream);
  else
    add_column_sums_by<1>(dst, src, rows, width, stream);
}

#define LOOM_INSTANTIATE(T)                                                              \
  template void add_column_sums<T>(T*, const T*, int64_t, int64_t, cudaStream_t);        \
  template void add_partial_sums<T>(T*, const float*, int64_t, int64_t, cudaStream_t);
LOOM_INSTANTIATE(float)
LOOM_INSTANTIATE(bf16)
LOOM_INSTANTIATE(f16)
#undef LOOM_INSTANTIATE

}  // namespace loom::cuda
