// Fused LayerNorm forward and backward over the last dimension (C) of N rows; statistics in f32. Rows with
// C % 8 == 0, C <= 1024 and 16-byte aligned tensors (GPT-2 124M/350M, DeiT-S/B) take the vectorised kernels that
// keep a row in one warp's registers; other rows the general one-warp-per-row kernels.
//
// Masked embedding channels (pruning): the statistics cover K of the C channels, the other C - K entries of
// every row being exact zeros (Backend::layernorm_forward). The kernels take K as the float `count` and the
// number of zero entries as `zeros`: mean = Σx/K, var = (Σ(x - mean)² - zeros·mean²)/K, and the backward's row
// means divide by K. With K = C both reduce to the unmasked arithmetic, rounding included.
#include "kernels/cuda/cuda_ops.cuh"

namespace loom::cuda {

namespace {

constexpr int kWarpsPerBlock = 4;

// One warp per row, two passes over the row (the second hits L1/L2):
//   mean = Σx/K,  var = (Σ(x - mean)² - zeros·mean²)/K (biased),  rstd = 1/√(var + eps),
//   out = (x - mean)·rstd·w + b
// b may be null. mean and rstd are saved in f32 for the backward.
template <typename T>
__global__ void layernorm_forward_kernel(T* out, float* mean, float* rstd, const T* x, const T* w, const T* b,
                                         int64_t N, int64_t C, float eps, float count, float zeros) {
  const int lane = threadIdx.x % 32;
  const int64_t row = blockIdx.x * int64_t{blockDim.x / 32} + threadIdx.x / 32;
  if (row >= N) return;
  const T* xr = x + row * C;
  float sum = 0.f;
  for (int64_t c = lane; c < C; c += 32) sum += to_f32(xr[c]);
  const float m = warp_sum(sum) / count;
  float sq = 0.f;
  for (int64_t c = lane; c < C; c += 32) {
    const float d = to_f32(xr[c]) - m;
    sq += d * d;
  }
  const float r = rsqrtf(fmaxf(warp_sum(sq) - zeros * m * m, 0.f) / count + eps);
  T* outr = out + row * C;
  for (int64_t c = lane; c < C; c += 32) {
    const float y = (to_f32(xr[c]) - m) * r * to_f32(w[c]) + (b ? to_f32(b[c]) : 0.f);
    outr[c] = from_f32<T>(y);
  }
  if (lane == 0) {
    mean[row] = m;
    rstd[row] = r;
  }
}

// With x̂ = (x - mean)·rstd and g = dout·w, per row:
//   dx += rstd·(g - mean_c(g) - x̂·mean_c(g·x̂))   (means over the K counted channels: Σ_c / count)
// and the parameter gradients dw = Σ_n dout·x̂, db = Σ_n dout, summed deterministically: each warp owns the
// rows row ≡ warp (mod all warps of the grid), accumulating per-column sums in its own shared-memory slice
// (each lane owns columns lane, lane+32, ...); at the end the block adds its warps' slices in warp order and
// writes one partial row per block to dw_partials/db_partials [gridDim.x, C]; add_partial_sums finishes.
template <typename T>
__global__ void layernorm_backward_kernel(T* dx, float* dw_partials, float* db_partials, const T* dout,
                                          const T* x, const T* w, const float* mean, const float* rstd, int64_t N,
                                          int64_t C, float count) {
  extern __shared__ float shared[];  // [warps][2][C]: dw then db sums of each warp
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  float* dw_sum = shared + int64_t{warp} * 2 * C;
  float* db_sum = dw_sum + C;
  for (int64_t c = lane; c < C; c += 32) dw_sum[c] = db_sum[c] = 0.f;

  const int64_t total_warps = int64_t{gridDim.x} * warps;
  for (int64_t row = blockIdx.x * int64_t{warps} + warp; row < N; row += total_warps) {
    const T* xr = x + row * C;
    const T* dr = dout + row * C;
    const float m = mean[row], r = rstd[row];
    float sum_g = 0.f, sum_gx = 0.f;
    for (int64_t c = lane; c < C; c += 32) {
      const float g = to_f32(dr[c]) * to_f32(w[c]);
      sum_g += g;
      sum_gx += g * (to_f32(xr[c]) - m) * r;
    }
    const float mean_g = warp_sum(sum_g) / count;
    const float mean_gx = warp_sum(sum_gx) / count;
    T* dxr = dx + row * C;
    for (int64_t c = lane; c < C; c += 32) {
      const float d = to_f32(dr[c]);
      const float xhat = (to_f32(xr[c]) - m) * r;
      const float g = d * to_f32(w[c]);
      dxr[c] = from_f32<T>(to_f32(dxr[c]) + r * (g - mean_g - xhat * mean_gx));
      dw_sum[c] += d * xhat;
      db_sum[c] += d;
    }
  }
  __syncthreads();
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    float dw = 0.f, db = 0.f;
    for (int k = 0; k < warps; ++k) {
      dw += shared[int64_t{k} * 2 * C + c];
      db += shared[int64_t{k} * 2 * C + C + c];
    }
    dw_partials[blockIdx.x * C + c] = dw;
    db_partials[blockIdx.x * C + c] = db;
  }
}

// 16 bytes of T: the unit of the vectorized backward's loads and stores (8 bf16/f16 or 4 f32).
template <typename T>
struct alignas(16) Pack16 {
  static constexpr int kSize = 16 / sizeof(T);
  T e[kSize];
};

constexpr int kVecWarpsPerBlock = 4;

// The same math as layernorm_backward_kernel for rows that fit one warp's registers (C % 8 == 0, C <= 1024,
// 16-byte aligned pointers), read once and written once:
//   mean_g = Σ_c dout·w / C,  mean_gx = Σ_c dout·w·x̂ / C,  dx += rstd·(dout·w - mean_g - x̂·mean_gx)
//   dw_partial += dout·x̂,  db_partial += dout
// Lane l owns columns (k·32 + l)·P .. +P-1 for chunk k < kChunks (P = 8 for bf16/f16, 4 for f32) in every
// row, so its x, dout and dx stay in registers between the two row reductions, and its dw/db sums are
// per-lane registers too (kChunks is a template argument so the register arrays have compile-time indices).
// Warp w of a block handles rows ≡ blockIdx.x·kVecWarpsPerBlock + w (mod all warps of the grid); at the end
// the block adds its warps' sums in warp order in shared memory and writes one partial row per block to
// dw_partials/db_partials [gridDim.x, C], so the result is deterministic for a given grid.
template <typename T, int kChunks>
__global__ void __launch_bounds__(kVecWarpsPerBlock * 32)
    layernorm_backward_vec_kernel(T* dx, float* dw_partials, float* db_partials, const T* dout, const T* x,
                                  const T* w, const float* mean, const float* rstd, int64_t N, int C,
                                  float count) {
  using Pack = Pack16<T>;
  constexpr int P = Pack::kSize;
  extern __shared__ float shared[];  // [warps][2][C]: dw then db sums of each warp
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  float dw_acc[kChunks][P], db_acc[kChunks][P];
#pragma unroll
  for (int k = 0; k < kChunks; ++k)
#pragma unroll
    for (int i = 0; i < P; ++i) dw_acc[k][i] = db_acc[k][i] = 0.f;

  const int64_t total_warps = int64_t{gridDim.x} * kVecWarpsPerBlock;
  for (int64_t row = blockIdx.x * int64_t{kVecWarpsPerBlock} + warp; row < N; row += total_warps) {
    const Pack* xr = reinterpret_cast<const Pack*>(x + row * C);
    const Pack* dr = reinterpret_cast<const Pack*>(dout + row * C);
    Pack* dxr = reinterpret_cast<Pack*>(dx + row * C);
    const float m = mean[row], r = rstd[row];
    Pack xv[kChunks], dv[kChunks], dxv[kChunks];
#pragma unroll
    for (int k = 0; k < kChunks; ++k) {
      const int v = k * 32 + lane;  // index of this lane's pack in the row
      if (v * P < C) {
        xv[k] = xr[v];
        dv[k] = dr[v];
        dxv[k] = dxr[v];
      }
    }
    float sum_g = 0.f, sum_gx = 0.f;
#pragma unroll
    for (int k = 0; k < kChunks; ++k) {
      const int v = k * 32 + lane;
      if (v * P >= C) continue;
      const Pack wv = reinterpret_cast<const Pack*>(w)[v];
#pragma unroll
      for (int i = 0; i < P; ++i) {
        const float g = to_f32(dv[k].e[i]) * to_f32(wv.e[i]);
        sum_g += g;
        sum_gx += g * (to_f32(xv[k].e[i]) - m) * r;
      }
    }
    const float mean_g = warp_sum(sum_g) / count;
    const float mean_gx = warp_sum(sum_gx) / count;
#pragma unroll
    for (int k = 0; k < kChunks; ++k) {
      const int v = k * 32 + lane;
      if (v * P >= C) continue;
      const Pack wv = reinterpret_cast<const Pack*>(w)[v];
      Pack out;
#pragma unroll
      for (int i = 0; i < P; ++i) {
        const float d = to_f32(dv[k].e[i]);
        const float xhat = (to_f32(xv[k].e[i]) - m) * r;
        const float g = d * to_f32(wv.e[i]);
        out.e[i] = from_f32<T>(to_f32(dxv[k].e[i]) + r * (g - mean_g - xhat * mean_gx));
        dw_acc[k][i] += d * xhat;
        db_acc[k][i] += d;
      }
      dxr[v] = out;
    }
  }

  float* dw_sum = shared + int64_t{warp} * 2 * C;
  float* db_sum = dw_sum + C;
#pragma unroll
  for (int k = 0; k < kChunks; ++k) {
    const int c0 = (k * 32 + lane) * P;
    if (c0 >= C) continue;
#pragma unroll
    for (int i = 0; i < P; ++i) {
      dw_sum[c0 + i] = dw_acc[k][i];
      db_sum[c0 + i] = db_acc[k][i];
    }
  }
  __syncthreads();
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    float dw = 0.f, db = 0.f;
    for (int k = 0; k < kVecWarpsPerBlock; ++k) {
      dw += shared[k * 2 * C + c];
      db += shared[k * 2 * C + C + c];
    }
    dw_partials[blockIdx.x * int64_t{C} + c] = dw;
    db_partials[blockIdx.x * int64_t{C} + c] = db;
  }
}

// Rows of at most 1024 columns, as in layernorm_backward_vec_kernel; kChunks 16-byte packs per lane.
template <typename T>
constexpr int kMaxVecChunks = 1024 / (32 * Pack16<T>::kSize);

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Launches layernorm_backward_vec_kernel<T, chunks> (chunks >= kChunks) with one block per resident slot of
// the GPU (fewer when N is small), then adds the partial rows into dw and db.
template <typename T, int kChunks>
void layernorm_backward_vec(int chunks, T* dx, T* dw, T* db, const T* dout, const T* x, const T* w,
                            const float* mean, const float* rstd, int64_t N, int C, float count,
                            cudaStream_t stream) {
  if constexpr (kChunks < kMaxVecChunks<T>) {
    if (chunks > kChunks) {
      layernorm_backward_vec<T, kChunks + 1>(chunks, dx, dw, db, dout, x, w, mean, rstd, N, C, count, stream);
      return;
    }
  }
  const auto kernel = layernorm_backward_vec_kernel<T, kChunks>;
  constexpr int threads = kVecWarpsPerBlock * 32;
  const size_t shared_bytes = static_cast<size_t>(kVecWarpsPerBlock) * 2 * C * sizeof(float);
  int device = 0, sms = 0, blocks_per_sm = 0;
  LOOM_CUDA_CALL(cudaGetDevice(&device));
  LOOM_CUDA_CALL(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  LOOM_CUDA_CALL(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks_per_sm, kernel, threads, shared_bytes));
  const int64_t blocks = std::min<int64_t>(int64_t{sms} * std::max(blocks_per_sm, 1),
                                           (N + kVecWarpsPerBlock - 1) / kVecWarpsPerBlock);
  ScratchBuffer partials(static_cast<size_t>(2 * blocks * C) * sizeof(float));
  float* dw_partials = partials.as<float>();
  float* db_partials = dw_partials + blocks * C;
  kernel<<<static_cast<unsigned>(blocks), threads, shared_bytes, stream>>>(dx, dw_partials, db_partials, dout, x,
                                                                          w, mean, rstd, N, C, count);
  LOOM_CUDA_LAUNCHED("layernorm_backward_vec_kernel");
  add_partial_sums(dw, dw_partials, blocks, C, stream);
  if (db) add_partial_sums(db, db_partials, blocks, C, stream);
}

// The same math as layernorm_forward_kernel for rows that fit one warp's registers (C % 8 == 0, C <= 1024,
// 16-byte aligned pointers): x is read once with 16-byte loads and both passes run over the registers,
//   mean = Σx/K,  var = (Σ(x - mean)² - zeros·mean²)/K (biased),  rstd = 1/√(var + eps),  out = (x - mean)·rstd·w + b
// so the variance keeps the two-pass form (no Σx² - mean² cancellation for rows with a large mean). Lane l
// owns columns (k·32 + l)·P .. +P-1 for chunk k < kChunks, as in layernorm_backward_vec_kernel; one warp per
// row. b may be null.
template <typename T, int kChunks>
__global__ void __launch_bounds__(kVecWarpsPerBlock * 32)
    layernorm_forward_vec_kernel(T* out, float* mean, float* rstd, const T* x, const T* w, const T* b, int64_t N,
                                 int C, float eps, float count, float zeros) {
  using Pack = Pack16<T>;
  constexpr int P = Pack::kSize;
  const int lane = threadIdx.x % 32;
  const int64_t row = blockIdx.x * int64_t{kVecWarpsPerBlock} + threadIdx.x / 32;
  if (row >= N) return;  // the whole warp leaves together: row is the same for all its lanes
  const Pack* xr = reinterpret_cast<const Pack*>(x + row * C);
  float xv[kChunks][P];
  float sum = 0.f;
#pragma unroll
  for (int k = 0; k < kChunks; ++k) {
    const int v = k * 32 + lane;  // index of this lane's pack in the row
    if (v * P >= C) continue;
    const Pack p = xr[v];
#pragma unroll
    for (int i = 0; i < P; ++i) {
      xv[k][i] = to_f32(p.e[i]);
      sum += xv[k][i];
    }
  }
  const float m = warp_sum(sum) / count;
  float sq = 0.f;
#pragma unroll
  for (int k = 0; k < kChunks; ++k) {
    if ((k * 32 + lane) * P >= C) continue;
#pragma unroll
    for (int i = 0; i < P; ++i) {
      const float d = xv[k][i] - m;
      sq += d * d;
    }
  }
  const float r = rsqrtf(fmaxf(warp_sum(sq) - zeros * m * m, 0.f) / count + eps);
  Pack* outr = reinterpret_cast<Pack*>(out + row * C);
#pragma unroll
  for (int k = 0; k < kChunks; ++k) {
    const int v = k * 32 + lane;
    if (v * P >= C) continue;
    const Pack wv = reinterpret_cast<const Pack*>(w)[v];
    Pack bv;
    if (b) bv = reinterpret_cast<const Pack*>(b)[v];
    Pack o;
#pragma unroll
    for (int i = 0; i < P; ++i)
      o.e[i] = from_f32<T>((xv[k][i] - m) * r * to_f32(wv.e[i]) + (b ? to_f32(bv.e[i]) : 0.f));
    outr[v] = o;
  }
  if (lane == 0) {
    mean[row] = m;
    rstd[row] = r;
  }
}

// Launches layernorm_forward_vec_kernel<T, chunks> (chunks >= kChunks), one warp per row.
template <typename T, int kChunks>
void layernorm_forward_vec(int chunks, T* out, float* mean, float* rstd, const T* x, const T* w, const T* b,
                           int64_t N, int C, float eps, float count, float zeros, cudaStream_t stream) {
  if constexpr (kChunks < kMaxVecChunks<T>) {
    if (chunks > kChunks) {
      layernorm_forward_vec<T, kChunks + 1>(chunks, out, mean, rstd, x, w, b, N, C, eps, count, zeros, stream);
      return;
    }
  }
  const int64_t blocks = (N + kVecWarpsPerBlock - 1) / kVecWarpsPerBlock;
  layernorm_forward_vec_kernel<T, kChunks><<<static_cast<unsigned>(blocks), kVecWarpsPerBlock * 32, 0, stream>>>(
      out, mean, rstd, x, w, b, N, C, eps, count, zeros);
  LOOM_CUDA_LAUNCHED("layernorm_forward_vec_kernel");
}

}  // namespace

std::string layernorm_vectorised_rule(int64_t C) {
  if (C % 8 == 0 && C <= 1024) return "";
  return "width " + std::to_string(C) + " is not a multiple of 8 up to 1024 (the vectorised warp-per-row kernels)";
}

template <typename T>
void layernorm_forward(T* out, float* mean, float* rstd, const T* x, const T* w, const T* b, int64_t N, int64_t C,
                       float eps, int64_t K, cudaStream_t stream) {
  if (N == 0) return;
  const float count = static_cast<float>(K), zeros = static_cast<float>(C - K);
  if (layernorm_vectorised_rule(C).empty() && aligned16(out) && aligned16(x) && aligned16(w) && (!b || aligned16(b))) {
    const int pack = Pack16<T>::kSize;
    const int chunks = static_cast<int>((C + 32 * pack - 1) / (32 * pack));
    layernorm_forward_vec<T, 1>(chunks, out, mean, rstd, x, w, b, N, static_cast<int>(C), eps, count, zeros, stream);
    return;
  }
  constexpr int kRowsPerBlock = 8;
  const auto blocks = static_cast<unsigned>((N + kRowsPerBlock - 1) / kRowsPerBlock);
  layernorm_forward_kernel<<<blocks, kRowsPerBlock * 32, 0, stream>>>(out, mean, rstd, x, w, b, N, C, eps, count,
                                                                      zeros);
  LOOM_CUDA_LAUNCHED("layernorm_forward_kernel");
}

template <typename T>
void layernorm_backward(T* dx, T* dw, T* db, const T* dout, const T* x, const T* w, const float* mean,
                        const float* rstd, int64_t N, int64_t C, int64_t K, cudaStream_t stream) {
  if (N == 0) return;
  const float count = static_cast<float>(K);
  if (layernorm_vectorised_rule(C).empty() && aligned16(dx) && aligned16(dout) && aligned16(x) && aligned16(w)) {
    const int pack = Pack16<T>::kSize;
    const int chunks = static_cast<int>((C + 32 * pack - 1) / (32 * pack));
    layernorm_backward_vec<T, 1>(chunks, dx, dw, db, dout, x, w, mean, rstd, N, static_cast<int>(C), count, stream);
    return;
  }
  // The general case: 512 blocks of 4 warps fill an H100 a few times over; fewer when N is small. Every block writes a partial
  // row, so the second stage reads blocks·C floats.
  const int64_t blocks = std::min<int64_t>(512, (N + kWarpsPerBlock - 1) / kWarpsPerBlock);
  const size_t shared_bytes = static_cast<size_t>(kWarpsPerBlock) * 2 * C * sizeof(float);
  if (shared_bytes > 48 * 1024)
    LOOM_CUDA_CALL(cudaFuncSetAttribute(layernorm_backward_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(shared_bytes)));
  ScratchBuffer partials(static_cast<size_t>(2 * blocks * C) * sizeof(float));
  float* dw_partials = partials.as<float>();
  float* db_partials = dw_partials + blocks * C;
  layernorm_backward_kernel<<<static_cast<unsigned>(blocks), kWarpsPerBlock * 32, shared_bytes, stream>>>(
      dx, dw_partials, db_partials, dout, x, w, mean, rstd, N, C, count);
  LOOM_CUDA_LAUNCHED("layernorm_backward_kernel");
  add_partial_sums(dw, dw_partials, blocks, C, stream);
  if (db) add_partial_sums(db, db_partials, blocks, C, stream);
}

#define LOOM_INSTANTIATE(T)                                                                                     \
  template void layernorm_forward<T>(T*, float*, float*, const T*, const T*, const T*, int64_t, int64_t, float, \
                                     int64_t, cudaStream_t);                                                   \
  template void layernorm_backward<T>(T*, T*, T*, const T*, const T*, const T*, const float*, const float*,     \
                                      int64_t, int64_t, int64_t, cudaStream_t);
LOOM_INSTANTIATE(float)
LOOM_INSTANTIATE(bf16)
LOOM_INSTANTIATE(f16)
#undef LOOM_INSTANTIATE

}  // namespace loom::cuda
