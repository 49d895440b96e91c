// Fused LayerNorm forward and backward over the last dimension (C) of N rows; statistics in f32.
//
// Vectorised kernels (rows of C % P == 0 elements, P = 16 / sizeof(T), C <= 8192, 16-byte aligned tensors: every
// width the configs and the pruner produce): a row lives in the registers of one "row group" of 1 to 8 warps, read
// once with 16-byte loads and written once (RowPlan says how rows are spread). Other rows take the general
// one-warp-per-row kernels.
//
// Masked embedding channels (pruning): the statistics cover K of the C channels, the other C - K entries of
// every row being exact zeros (Backend::layernorm_forward). The kernels take K as the float `count` and the
// number of zero entries as `zeros`: mean = Σx/K, var = (Σ(x - mean)² - zeros·mean²)/K, and the backward's row
// means divide by K. With K = C both reduce to the unmasked arithmetic, rounding included.
//
// The residual stream (x, and dx in the backward) has its own element type R: T itself, or f32 beside bf16/f16
// out, dout, w and b (train.residual_dtype f32). Arithmetic is f32 either way; only loads and stores differ.
#include "kernels/cuda/cuda_ops.cuh"

namespace loom::cuda {

namespace {

constexpr int kWarpsPerBlock = 4;

// One warp per row, two passes over the row (the second hits L1/L2):
//   mean = Σx/K,  var = (Σ(x - mean)² - zeros·mean²)/K (biased),  rstd = 1/√(var + eps),
//   out = (x - mean)·rstd·w + b
// b may be null. mean and rstd are saved in f32 for the backward.
template <typename T, typename R>
__global__ void layernorm_forward_kernel(T* out, float* mean, float* rstd, const R* x, const T* w, const T* b,
                                         int64_t N, int64_t C, float eps, float count, float zeros) {
  const int lane = threadIdx.x % 32;
  const int64_t row = blockIdx.x * int64_t{blockDim.x / 32} + threadIdx.x / 32;
  if (row >= N) return;
  const R* xr = x + row * C;
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
template <typename T, typename R>
__global__ void layernorm_backward_kernel(R* dx, float* dw_partials, float* db_partials, const T* dout,
                                          const R* x, const T* w, const float* mean, const float* rstd, int64_t N,
                                          int64_t C, float count) {
  extern __shared__ float shared[];  // [warps][2][C]: dw then db sums of each warp
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  float* dw_sum = shared + int64_t{warp} * 2 * C;
  float* db_sum = dw_sum + C;
  for (int64_t c = lane; c < C; c += 32) dw_sum[c] = db_sum[c] = 0.f;

  const int64_t total_warps = int64_t{gridDim.x} * warps;
  for (int64_t row = blockIdx.x * int64_t{warps} + warp; row < N; row += total_warps) {
    const R* xr = x + row * C;
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
    R* dxr = dx + row * C;
    for (int64_t c = lane; c < C; c += 32) {
      const float d = to_f32(dr[c]);
      const float xhat = (to_f32(xr[c]) - m) * r;
      const float g = d * to_f32(w[c]);
      dxr[c] = from_f32<R>(to_f32(dxr[c]) + r * (g - mean_g - xhat * mean_gx));
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

// How the vectorised kernels spread rows of C = packs·P elements (P = Pack16<T>::kSize; x and dx are read as
// ResidualPack<R, P>, 16 bytes when R = T, 32 when R is f32 beside bf16/f16): a row group of `tpr`
// threads (tpr / 32 warps) holds one row, thread t of the group owning the packs t, t + tpr, ...,
// t + (chunks - 1)·tpr that are < packs; a block holds `groups` row groups (blockDim = groups·tpr).
// Up to kMaxRowElems elements per thread (4 packs of bf16/f16, 8 of f32) keep the backward's per-thread
// registers (x, dout, dx and the dw/db sums: 168 at 3 packs of bf16, 223 at 4) within the 255 a thread may
// hold; rows wider than one warp can hold in that many get more warps (up to kMaxRowWarps, so C <= 8192) and
// reduce across them through shared memory. Narrow rows share a block of kBlockThreads threads, so a block
// has at most kMaxRowWarps warps. An f32 residual beside bf16/f16 doubles the registers of x and dx, so such rows
// take half the elements per thread (16: C <= 4096 on the vectorised kernels).
constexpr int kMaxRowElems = 32, kMaxRowWarps = 8, kBlockThreads = 128;
template <typename T, typename R>
constexpr int kMaxChunks = (sizeof(R) > sizeof(T) ? kMaxRowElems / 2 : kMaxRowElems) / Pack16<T>::kSize;

// P elements of the residual stream (x, dx) loaded or stored together with a Pack16<T> of the same columns:
// Pack16<T> itself when R = T, two 16-byte halves when R is f32 beside a 16-bit T.
template <typename R, int P>
struct alignas(16) ResidualPack {
  R e[P];
};

struct RowPlan {
  int tpr = 0, chunks = 0, groups = 0;
  int threads() const { return tpr * groups; }
};

// The plan for rows of C elements, or tpr = 0 when they need the general kernels.
template <typename T, typename R>
RowPlan plan_rows(int64_t C) {
  constexpr int P = Pack16<T>::kSize;
  RowPlan plan;
  if (C % P != 0) return plan;
  const int64_t packs = C / P;
  const int64_t warps = (packs + 32 * kMaxChunks<T, R> - 1) / (32 * kMaxChunks<T, R>);
  if (warps > kMaxRowWarps) return plan;
  plan.tpr = static_cast<int>(32 * warps);
  plan.chunks = static_cast<int>((packs + plan.tpr - 1) / plan.tpr);
  plan.groups = std::max(1, kBlockThreads / plan.tpr);
  return plan;
}

// Sums v[0..n) over this thread's row group; every thread of the group gets the same totals. With one warp per
// row it is a warp reduction; with several, every thread of the block must call it together (it synchronises
// the block): the warps' sums go to scratch[parity] ([warps of the block][n] floats), added in warp order.
// Alternating `parity` between calls makes one barrier per call enough: a thread can only overwrite a half
// after every thread has passed the barrier of the call in between, i.e. finished reading it.
template <int n>
__device__ __forceinline__ void row_group_sum(float (&v)[n], float* scratch, int warps_per_row, int& parity) {
#pragma unroll
  for (int i = 0; i < n; ++i) v[i] = warp_sum(v[i]);
  if (warps_per_row == 1) return;
  const int warp = threadIdx.x / 32, first = warp - warp % warps_per_row;
  float* half = scratch + parity * (blockDim.x / 32) * n;
  if (threadIdx.x % 32 == 0)
#pragma unroll
    for (int i = 0; i < n; ++i) half[warp * n + i] = v[i];
  __syncthreads();
#pragma unroll
  for (int i = 0; i < n; ++i) {
    float total = 0.f;
    for (int k = 0; k < warps_per_row; ++k) total += half[(first + k) * n + i];
    v[i] = total;
  }
  parity ^= 1;
}

// The forward of layernorm_forward_kernel on a RowPlan: x is read once with 16-byte loads and both passes run
// over registers, so the variance keeps the two-pass form (no Σx² - mean² cancellation for rows with a large
// mean):
//   mean = Σx/K,  var = (Σ(x - mean)² - zeros·mean²)/K (biased),  rstd = 1/√(var + eps),
//   out = (x - mean)·rstd·w + b
// One row per row group. b may be null.
template <typename T, typename R, int kChunks, bool kOneWarp>
__global__ void __launch_bounds__(kMaxRowWarps * 32)
    layernorm_forward_vec_kernel(T* out, float* mean, float* rstd, const R* x, const T* w, const T* b, int64_t N,
                                 int C, int row_threads, float eps, float count, float zeros) {
  using Pack = Pack16<T>;
  constexpr int P = Pack::kSize;
  using XPack = ResidualPack<R, P>;
  __shared__ float scratch[2 * kMaxRowWarps];
  const int tpr = kOneWarp ? 32 : row_threads;
  const int packs = C / P, t = threadIdx.x % tpr, warps_per_row = tpr / 32;
  const int64_t row = blockIdx.x * int64_t{blockDim.x / tpr} + threadIdx.x / tpr;
  const bool active = row < N;  // inactive threads still join the barriers of row_group_sum
  const XPack* xr = reinterpret_cast<const XPack*>(x + (active ? row : 0) * C);
  float xv[kChunks][P];
  float sum[1] = {0.f};
#pragma unroll
  for (int k = 0; k < kChunks; ++k) {
    const int v = k * tpr + t;  // index of this thread's pack in the row
    const bool ok = active && v < packs;
    XPack p;
    if (ok) p = xr[v];
#pragma unroll
    for (int i = 0; i < P; ++i) {
      xv[k][i] = ok ? to_f32(p.e[i]) : 0.f;
      sum[0] += xv[k][i];
    }
  }
  int parity = 0;
  row_group_sum(sum, scratch, warps_per_row, parity);
  const float m = sum[0] / count;
  float sq[1] = {0.f};
#pragma unroll
  for (int k = 0; k < kChunks; ++k) {
    if (k * tpr + t >= packs) continue;
#pragma unroll
    for (int i = 0; i < P; ++i) {
      const float d = xv[k][i] - m;
      sq[0] += d * d;
    }
  }
  row_group_sum(sq, scratch, warps_per_row, parity);
  if (!active) return;
  const float r = rsqrtf(fmaxf(sq[0] - zeros * m * m, 0.f) / count + eps);
  Pack* outr = reinterpret_cast<Pack*>(out + row * C);
#pragma unroll
  for (int k = 0; k < kChunks; ++k) {
    const int v = k * tpr + t;
    if (v >= packs) continue;
    const Pack wv = reinterpret_cast<const Pack*>(w)[v];
    Pack bv;
    if (b) bv = reinterpret_cast<const Pack*>(b)[v];
    Pack o;
#pragma unroll
    for (int i = 0; i < P; ++i)
      o.e[i] = from_f32<T>((xv[k][i] - m) * r * to_f32(wv.e[i]) + (b ? to_f32(bv.e[i]) : 0.f));
    outr[v] = o;
  }
  if (t == 0) {
    mean[row] = m;
    rstd[row] = r;
  }
}

// The backward of layernorm_backward_kernel on a RowPlan, x, dout and dx read once and dx written once:
//   mean_g = Σ_c dout·w / K,  mean_gx = Σ_c dout·w·x̂ / K,  dx += rstd·(dout·w - mean_g - x̂·mean_gx)
//   dw_partial += dout·x̂,  db_partial += dout
// Row group j of block b handles rows ≡ b·groups + j (mod all row groups of the grid); its threads keep their
// columns' dw/db sums in registers across rows (the same columns in every row; w is re-read from L1, which
// costs less than the registers holding it would in occupancy). At the end the block
// adds its groups' sums in group order in shared memory ([2][C] floats, only when groups > 1) and writes one
// partial row per block to dw_partials/db_partials [gridDim.x, C] (db_partials may be null: no bias), so the
// result is deterministic for a given grid; add_partial_sums finishes.
template <typename T, typename R, int kChunks, bool kOneWarp>
__global__ void __launch_bounds__(kMaxRowWarps * 32)
    layernorm_backward_vec_kernel(R* dx, float* dw_partials, float* db_partials, const T* dout, const R* x,
                                  const T* w, const float* mean, const float* rstd, int64_t N, int C,
                                  int row_threads, float count) {
  using Pack = Pack16<T>;
  constexpr int P = Pack::kSize;
  using XPack = ResidualPack<R, P>;
  extern __shared__ float block_sums[];  // [2][C]: dw then db, when groups > 1
  __shared__ float scratch[2 * kMaxRowWarps * 2];
  const int tpr = kOneWarp ? 32 : row_threads;
  const int packs = C / P, t = threadIdx.x % tpr, group = threadIdx.x / tpr, groups = blockDim.x / tpr;
  const int warps_per_row = tpr / 32;
  const Pack* wp = reinterpret_cast<const Pack*>(w);
  float dw_acc[kChunks][P], db_acc[kChunks][P];
#pragma unroll
  for (int k = 0; k < kChunks; ++k)
#pragma unroll
    for (int i = 0; i < P; ++i) dw_acc[k][i] = db_acc[k][i] = 0.f;

  int parity = 0;
  const int64_t stride = int64_t{gridDim.x} * groups;
  // The trip count is the same for every thread of the block (row_group_sum may synchronise it).
  for (int64_t first = int64_t{blockIdx.x} * groups; first < N; first += stride) {
    const int64_t row = first + group;
    const bool active = row < N;
    const XPack* xr = reinterpret_cast<const XPack*>(x + (active ? row : 0) * C);
    const Pack* dr = reinterpret_cast<const Pack*>(dout + (active ? row : 0) * C);
    XPack* dxr = reinterpret_cast<XPack*>(dx + (active ? row : 0) * C);
    XPack xv[kChunks], dxv[kChunks];
    Pack dv[kChunks];
#pragma unroll
    for (int k = 0; k < kChunks; ++k) {
      const int v = k * tpr + t;
      if (active && v < packs) {
        xv[k] = xr[v];
        dv[k] = dr[v];
        dxv[k] = dxr[v];
      }
    }
    const float m = active ? mean[row] : 0.f, r = active ? rstd[row] : 0.f;
    float sums[2] = {0.f, 0.f};  // Σ g, Σ g·x̂
#pragma unroll
    for (int k = 0; k < kChunks; ++k) {
      if (!active || k * tpr + t >= packs) continue;
      const Pack wv = wp[k * tpr + t];
#pragma unroll
      for (int i = 0; i < P; ++i) {
        const float g = to_f32(dv[k].e[i]) * to_f32(wv.e[i]);
        sums[0] += g;
        sums[1] += g * (to_f32(xv[k].e[i]) - m) * r;
      }
    }
    row_group_sum(sums, scratch, warps_per_row, parity);
    if (!active) continue;
    const float mean_g = sums[0] / count, mean_gx = sums[1] / count;
#pragma unroll
    for (int k = 0; k < kChunks; ++k) {
      const int v = k * tpr + t;
      if (v >= packs) continue;
      const Pack wv = wp[v];
      XPack o;
#pragma unroll
      for (int i = 0; i < P; ++i) {
        const float d = to_f32(dv[k].e[i]);
        const float xhat = (to_f32(xv[k].e[i]) - m) * r;
        const float g = d * to_f32(wv.e[i]);
        o.e[i] = from_f32<R>(to_f32(dxv[k].e[i]) + r * (g - mean_g - xhat * mean_gx));
        dw_acc[k][i] += d * xhat;
        db_acc[k][i] += d;
      }
      dxr[v] = o;
    }
  }

  float* dw_row = dw_partials + int64_t{blockIdx.x} * C;
  float* db_row = db_partials ? db_partials + int64_t{blockIdx.x} * C : nullptr;
  if (groups == 1) {  // this thread's columns are its block's sums
#pragma unroll
    for (int k = 0; k < kChunks; ++k) {
      const int c0 = (k * tpr + t) * P;
      if (c0 >= C) continue;
#pragma unroll
      for (int i = 0; i < P; ++i) {
        dw_row[c0 + i] = dw_acc[k][i];
        if (db_row) db_row[c0 + i] = db_acc[k][i];
      }
    }
    return;
  }
  // Every group covers all C columns; group 0 writes them, the others add in group order.
  for (int j = 0; j < groups; ++j) {
    if (group == j) {
#pragma unroll
      for (int k = 0; k < kChunks; ++k) {
        const int c0 = (k * tpr + t) * P;
        if (c0 >= C) continue;
#pragma unroll
        for (int i = 0; i < P; ++i) {
          block_sums[c0 + i] = j == 0 ? dw_acc[k][i] : block_sums[c0 + i] + dw_acc[k][i];
          block_sums[C + c0 + i] = j == 0 ? db_acc[k][i] : block_sums[C + c0 + i] + db_acc[k][i];
        }
      }
    }
    __syncthreads();
  }
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    dw_row[c] = block_sums[c];
    if (db_row) db_row[c] = block_sums[C + c];
  }
}

// Calls fn.template operator()<chunks, one_warp>() for plan.chunks (in [kChunks, kMaxChunks<T, R>]) and whether a
// row takes one warp: the register arrays of the vectorised kernels need the chunks at compile time, and a
// compile-time row group of one warp (the common case, C <= 1024 for bf16) saves the registers of run-time
// row-group indexing (11 at 3 chunks of bf16, the difference between 2 and 3 blocks per SM).
template <typename T, typename R, int kChunks = 1, typename Fn>
void with_chunks(const RowPlan& plan, Fn&& fn) {
  if constexpr (kChunks < kMaxChunks<T, R>) {
    if (plan.chunks > kChunks) return with_chunks<T, R, kChunks + 1>(plan, fn);
  }
  if (plan.tpr == 32) return fn.template operator()<kChunks, true>();
  fn.template operator()<kChunks, false>();
}

// Launches layernorm_backward_vec_kernel with as many blocks as the GPU holds at once (fewer when N is small),
// then adds the partial rows into dw and db.
template <typename T, typename R>
void layernorm_backward_vec(const RowPlan& plan, R* dx, T* dw, T* db, const T* dout, const R* x, const T* w,
                            const float* mean, const float* rstd, int64_t N, int C, float count, cudaStream_t stream) {
  with_chunks<T, R>(plan, [&]<int kChunks, bool kOneWarp>() {
    const auto kernel = layernorm_backward_vec_kernel<T, R, kChunks, kOneWarp>;
    const size_t shared_bytes = plan.groups > 1 ? 2 * static_cast<size_t>(C) * sizeof(float) : 0;
    if (shared_bytes > 48 * 1024)
      LOOM_CUDA_CALL(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(shared_bytes)));
    int device = 0, sms = 0, blocks_per_sm = 0;
    LOOM_CUDA_CALL(cudaGetDevice(&device));
    LOOM_CUDA_CALL(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    LOOM_CUDA_CALL(
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks_per_sm, kernel, plan.threads(), shared_bytes));
    const int64_t blocks = std::min<int64_t>(int64_t{sms} * std::max(blocks_per_sm, 1),
                                             (N + plan.groups - 1) / plan.groups);
    ScratchBuffer partials(static_cast<size_t>((db ? 2 : 1) * blocks * C) * sizeof(float));
    float* dw_partials = partials.as<float>();
    float* db_partials = db ? dw_partials + blocks * C : nullptr;
    kernel<<<static_cast<unsigned>(blocks), plan.threads(), shared_bytes, stream>>>(
        dx, dw_partials, db_partials, dout, x, w, mean, rstd, N, C, plan.tpr, count);
    LOOM_CUDA_LAUNCHED("layernorm_backward_vec_kernel");
    add_partial_sums(dw, dw_partials, blocks, C, stream);
    if (db) add_partial_sums(db, db_partials, blocks, C, stream);
  });
}

}  // namespace

std::string layernorm_vectorised_rule(int64_t C, DType dtype) {
  const auto rule = [C](auto tag) -> std::string {
    using T = decltype(tag);
    if (plan_rows<T, T>(C).tpr > 0) return "";
    return "width " + std::to_string(C) + " is not a multiple of " + std::to_string(Pack16<T>::kSize) + " up to " +
           std::to_string(kMaxRowWarps * 32 * kMaxChunks<T, T> * Pack16<T>::kSize) +
           " (the vectorised kernels that hold a row in registers)";
  };
  return dtype == DType::F32 ? rule(float{}) : rule(bf16{});
}

template <typename T, typename R>
void layernorm_forward(T* out, float* mean, float* rstd, const R* x, const T* w, const T* b, int64_t N, int64_t C,
                       float eps, int64_t K, cudaStream_t stream) {
  if (N == 0) return;
  const float count = static_cast<float>(K), zeros = static_cast<float>(C - K);
  const RowPlan plan = plan_rows<T, R>(C);
  if (plan.tpr > 0 && is_aligned16(out) && is_aligned16(x) && is_aligned16(w) && (!b || is_aligned16(b))) {
    with_chunks<T, R>(plan, [&]<int kChunks, bool kOneWarp>() {
      const int64_t blocks = (N + plan.groups - 1) / plan.groups;
      layernorm_forward_vec_kernel<T, R, kChunks, kOneWarp><<<static_cast<unsigned>(blocks), plan.threads(), 0, stream>>>(
          out, mean, rstd, x, w, b, N, static_cast<int>(C), plan.tpr, eps, count, zeros);
      LOOM_CUDA_LAUNCHED("layernorm_forward_vec_kernel");
    });
    return;
  }
  constexpr int kRowsPerBlock = 8;
  const auto blocks = static_cast<unsigned>((N + kRowsPerBlock - 1) / kRowsPerBlock);
  layernorm_forward_kernel<<<blocks, kRowsPerBlock * 32, 0, stream>>>(out, mean, rstd, x, w, b, N, C, eps, count,
                                                                      zeros);
  LOOM_CUDA_LAUNCHED("layernorm_forward_kernel");
}

template <typename T, typename R>
void layernorm_backward(R* dx, T* dw, T* db, const T* dout, const R* x, const T* w, const float* mean,
                        const float* rstd, int64_t N, int64_t C, int64_t K, cudaStream_t stream) {
  if (N == 0) return;
  const float count = static_cast<float>(K);
  const RowPlan plan = plan_rows<T, R>(C);
  if (plan.tpr > 0 && is_aligned16(dx) && is_aligned16(dout) && is_aligned16(x) && is_aligned16(w)) {
    layernorm_backward_vec(plan, dx, dw, db, dout, x, w, mean, rstd, N, static_cast<int>(C), count, stream);
    return;
  }
  // The general case: 512 blocks of up to 4 warps fill an H100 a few times over; fewer when N is small. Each warp
  // needs 2·C floats of shared memory, so very wide rows get fewer warps per block. Every block writes a partial
  // row, so the second stage reads blocks·C floats.
  int device = 0, max_shared = 0;
  LOOM_CUDA_CALL(cudaGetDevice(&device));
  LOOM_CUDA_CALL(cudaDeviceGetAttribute(&max_shared, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  const size_t warp_bytes = 2 * static_cast<size_t>(C) * sizeof(float);
  LOOM_CHECK(warp_bytes <= static_cast<size_t>(max_shared), "layernorm_backward: rows of ", C,
             " elements take the general kernel (not a multiple of ", Pack16<T>::kSize, " elements, a misaligned "
             "tensor, or wider than ", kMaxRowWarps * 32 * kMaxRowElems, "), which needs ", warp_bytes,
             " bytes of shared memory per warp; the GPU offers ", max_shared);
  const int warps = static_cast<int>(std::min<size_t>(kWarpsPerBlock, max_shared / warp_bytes));
  const int64_t blocks = std::min<int64_t>(512, (N + warps - 1) / warps);
  const size_t shared_bytes = warps * warp_bytes;
  if (shared_bytes > 48 * 1024)
    LOOM_CUDA_CALL(cudaFuncSetAttribute(layernorm_backward_kernel<T, R>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(shared_bytes)));
  ScratchBuffer partials(static_cast<size_t>(2 * blocks * C) * sizeof(float));
  float* dw_partials = partials.as<float>();
  float* db_partials = dw_partials + blocks * C;
  layernorm_backward_kernel<<<static_cast<unsigned>(blocks), warps * 32, shared_bytes, stream>>>(
      dx, dw_partials, db_partials, dout, x, w, mean, rstd, N, C, count);
  LOOM_CUDA_LAUNCHED("layernorm_backward_kernel");
  add_partial_sums(dw, dw_partials, blocks, C, stream);
  if (db) add_partial_sums(db, db_partials, blocks, C, stream);
}

// (T, R): every dtype with its own residual stream, and bf16/f16 with an f32 one.
#define LOOM_INSTANTIATE(T, R)                                                                                    \
  template void layernorm_forward<T, R>(T*, float*, float*, const R*, const T*, const T*, int64_t, int64_t, float, \
                                        int64_t, cudaStream_t);                                                   \
  template void layernorm_backward<T, R>(R*, T*, T*, const T*, const R*, const T*, const float*, const float*,     \
                                         int64_t, int64_t, int64_t, cudaStream_t);
LOOM_INSTANTIATE(float, float)
LOOM_INSTANTIATE(bf16, bf16)
LOOM_INSTANTIATE(f16, f16)
LOOM_INSTANTIATE(bf16, float)
LOOM_INSTANTIATE(f16, float)
#undef LOOM_INSTANTIATE

}  // namespace loom::cuda
