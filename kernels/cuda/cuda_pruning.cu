// CudaBackend's structural-pruning ops (kernels/backend.h states the math; the CPU twins are in
// kernels/cpu/cpu_pruning.cc): per-position dot products along one axis, masks, and the distillation loss.
// Everything is summed in f32 in a fixed order, so results are bit-identical run to run.
#include <algorithm>

#include "kernels/cuda/cuda_backend.cuh"
#include "kernels/cuda/cuda_op_check.cuh"
#include "kernels/cuda/cuda_ops.cuh"

namespace loom::cuda {
namespace {

constexpr int kThreads = 256;

// Long contiguous runs (inner >= 32): one block per position i,
//   out[i] = Σ_o Σ_n a[o, i, n]·b[o, i, n],
// the threads striding over n (coalesced), then a block reduction.
template <typename T>
__global__ void dot_rows_kernel(float* out, const T* a, const T* b, int64_t outer, int64_t D, int64_t inner) {
  __shared__ float scratch[32];
  const int64_t i = blockIdx.x;
  float sum = 0.f;
  for (int64_t o = 0; o < outer; ++o) {
    const int64_t base = (o * D + i) * inner;
    for (int64_t n = threadIdx.x; n < inner; n += blockDim.x) sum += to_f32(a[base + n]) * to_f32(b[base + n]);
  }
  sum = block_sum(sum, scratch);
  if (threadIdx.x == 0) out[i] = sum;
}

// Short runs (inner < 32, e.g. the input columns of a weight): the tensor is `rows` = outer rows of width
// W = D·inner; stage 1 gives each thread one column j and a slice of rows [p·rows_per_part, ...), summed in
// ascending order: partials[p, j] = Σ_{o in slice p} a[o, j]·b[o, j] (coalesced across the threads).
template <typename T>
__global__ void dot_column_partials_kernel(float* partials, const T* a, const T* b, int64_t rows, int64_t width,
                                           int64_t rows_per_part) {
  const int64_t j = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (j >= width) return;
  const int64_t begin = blockIdx.y * rows_per_part, end = min(rows, begin + rows_per_part);
  float sum = 0.f;
  for (int64_t o = begin; o < end; ++o) sum += to_f32(a[o * width + j]) * to_f32(b[o * width + j]);
  partials[blockIdx.y * width + j] = sum;
}

// Stage 2: out[i] = Σ_p Σ_{n < inner} partials[p, i·inner + n], p then n ascending.
__global__ void dot_fold_partials_kernel(float* out, const float* partials, int64_t parts, int64_t D, int64_t inner) {
  LOOM_GRID_STRIDE(i, D) {
    float sum = 0.f;
    for (int64_t p = 0; p < parts; ++p)
      for (int64_t n = 0; n < inner; ++n) sum += partials[p * D * inner + i * inner + n];
    out[i] = sum;
  }
}

template <typename T>
void dot_along_axis(float* out, const T* a, const T* b, int64_t outer, int64_t D, int64_t inner,
                    cudaStream_t stream) {
  if (D == 0) return;
  if (outer == 0 || inner == 0) {
    LOOM_CUDA_CALL(cudaMemsetAsync(out, 0, static_cast<size_t>(D) * sizeof(float), stream));
    return;
  }
  if (inner >= 32) {
    dot_rows_kernel<<<static_cast<unsigned>(D), kThreads, 0, stream>>>(out, a, b, outer, D, inner);
    LOOM_CUDA_LAUNCHED("dot_rows_kernel");
    return;
  }
  const int64_t width = D * inner;
  const int64_t column_blocks = (width + kThreads - 1) / kThreads;
  // Enough row slices to fill the GPU when there are few columns, at most 64 so stage 2 stays short.
  const int64_t parts = std::clamp<int64_t>(std::min<int64_t>(outer / 8, 1024 / column_blocks), 1, 64);
  const int64_t rows_per_part = (outer + parts - 1) / parts;
  ScratchBuffer partials(static_cast<size_t>(parts * width) * sizeof(float));
  dot_column_partials_kernel<<<dim3(static_cast<unsigned>(column_blocks), static_cast<unsigned>(parts)), kThreads,
                               0, stream>>>(partials.as<float>(), a, b, outer, width, rows_per_part);
  LOOM_CUDA_LAUNCHED("dot_column_partials_kernel");
  dot_fold_partials_kernel<<<grid_for(D), kThreads, 0, stream>>>(out, partials.as<float>(), parts, D, inner);
  LOOM_CUDA_LAUNCHED("dot_fold_partials_kernel");
}

// Up to kMasksPerLaunch deleted dimensions by value in the kernel's parameters (2.6 KB, within the classic
// 4 KB limit): nothing per entry has to be copied to the device.
constexpr int kMasksPerLaunch = 64;
struct MaskBatch {
  DimensionMask dims[kMasksPerLaunch];
};

// Block row y takes entry y of the batch: x[offset + i] = 0 (all bits clear: +0 in every float format of that
// width) where keep[flags_at + (i / inner) % size] == 0, the threads grid-striding over i in 32-bit arithmetic
// (an entry is below 2^31 elements). Writes only the deleted elements; the flags (one per position of the
// dimension) stay in L1/L2.
template <typename Bits>
__global__ void zero_deleted_kernel(Bits* x, const int32_t* keep, MaskBatch batch) {
  const DimensionMask& d = batch.dims[blockIdx.y];
  const uint32_t numel = static_cast<uint32_t>(d.numel), size = static_cast<uint32_t>(d.size),
                 inner = static_cast<uint32_t>(d.inner);
  Bits* base = x + d.offset;
  const int32_t* flags = keep + d.flags_at;
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < numel; i += gridDim.x * blockDim.x)
    if (flags[(i / inner) % size] == 0) base[i] = Bits{0};
}

template <typename Bits>
void zero_deleted(void* x, const int32_t* keep, const std::vector<DimensionMask>& dims, cudaStream_t stream) {
  for (size_t first = 0; first < dims.size(); first += kMasksPerLaunch) {
    const size_t count = std::min<size_t>(kMasksPerLaunch, dims.size() - first);
    MaskBatch batch{};
    int64_t largest = 0;
    for (size_t i = 0; i < count; ++i) {
      batch.dims[i] = dims[first + i];
      largest = std::max(largest, dims[first + i].numel);
    }
    if (largest == 0) continue;
    // Enough blocks for the largest entry at 8 elements a thread, at most 1024 (the loop strides beyond).
    const unsigned blocks = static_cast<unsigned>(std::clamp<int64_t>((largest + 8 * kThreads - 1) / (8 * kThreads), 1, 1024));
    zero_deleted_kernel<<<dim3(blocks, static_cast<unsigned>(count)), kThreads, 0, stream>>>(static_cast<Bits*>(x),
                                                                                            keep, batch);
    LOOM_CUDA_LAUNCHED("zero_deleted_kernel");
  }
}

// One block per row over the classes c < classes, with u = teacher/τ, v = student/τ:
//   per thread, online (rescaled whenever its max grows): m_u, S_u = Σ exp(u_c − m_u),
//   W = Σ exp(u_c − m_u)·(u_c − v_c), and m_v, S_v for the student; then block reductions give
//   lse_u = M_u + log S_u, lse_v = M_v + log S_v, KL = W/S_u − lse_u + lse_v (Σ p = 1), loss = τ²·KL,
//   dstudent_c = dloss·τ·(exp(v_c − lse_v) − exp(u_c − lse_u)); padding columns get 0.
// The reductions end with a barrier, so every logit has been read for the statistics before any write; each
// thread then reads both logits of a column before writing its gradient, so dstudent may alias either input.
template <typename T>
__global__ void distillation_kernel(float* losses, T* dstudent, const T* student, const T* teacher, int64_t Vp,
                                    int64_t classes, float tau, float dloss) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const T* s = student + row * Vp;
  const T* t = teacher + row * Vp;
  const float inv_tau = 1.f / tau;
  float mu = -INFINITY, su = 0.f, w = 0.f, mv = -INFINITY, sv = 0.f;
  for (int64_t c = threadIdx.x; c < classes; c += blockDim.x) {
    const float u = to_f32(t[c]) * inv_tau, v = to_f32(s[c]) * inv_tau;
    if (u > mu) {
      const float rescale = expf(mu - u);
      su = su * rescale + 1.f;
      w = w * rescale + (u - v);
      mu = u;
    } else {
      const float e = expf(u - mu);
      su += e;
      w += e * (u - v);
    }
    if (v > mv) {
      sv = sv * expf(mv - v) + 1.f;
      mv = v;
    } else {
      sv += expf(v - mv);
    }
  }
  const float max_u = block_max(mu, scratch), max_v = block_max(mv, scratch);
  const float fu = mu == -INFINITY ? 0.f : expf(mu - max_u), fv = mv == -INFINITY ? 0.f : expf(mv - max_v);
  const float sum_u = block_sum(su * fu, scratch), weighted = block_sum(w * fu, scratch);
  const float sum_v = block_sum(sv * fv, scratch);
  const float lse_u = max_u + logf(sum_u), lse_v = max_v + logf(sum_v);
  if (threadIdx.x == 0) losses[row] = tau * tau * (weighted / sum_u - lse_u + lse_v);
  if (!dstudent) return;
  T* d = dstudent + row * Vp;
  for (int64_t c = threadIdx.x; c < Vp; c += blockDim.x) {
    float g = 0.f;
    if (c < classes) {
      const float p = expf(to_f32(t[c]) * inv_tau - lse_u), q = expf(to_f32(s[c]) * inv_tau - lse_v);
      g = dloss * tau * (q - p);
    }
    d[c] = from_f32<T>(g);
  }
}

}  // namespace

void CudaBackend::dot_along_axis(Tensor& out, const Tensor& a, const Tensor& b, int axis) {
  const auto dims = op_contract::dot_along_axis(op_check("dot_along_axis"), out, a, b, axis);
  const int64_t outer = dims.outer, D = dims.D, inner = dims.inner;
  activate();
  dispatch_float(a.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cuda::dot_along_axis(ptr<float>(out), ptr<T>(a), ptr<T>(b), outer, D, inner, stream_);
  });
}

void CudaBackend::zero_deleted(Tensor& x, const std::vector<DimensionMask>& dims, const Tensor& keep) {
  op_contract::zero_deleted(op_check("zero_deleted"), x, dims, keep);
  activate();
  switch (dtype_size(x.dtype())) {
    case 8: return cuda::zero_deleted<uint64_t>(x.raw(), ptr<int32_t>(keep), dims, stream_);
    case 4: return cuda::zero_deleted<uint32_t>(x.raw(), ptr<int32_t>(keep), dims, stream_);
    default: return cuda::zero_deleted<uint16_t>(x.raw(), ptr<int32_t>(keep), dims, stream_);
  }
}

void CudaBackend::distillation_loss(Tensor& losses, Tensor& dstudent, const Tensor& student, const Tensor& teacher,
                                    int64_t classes, double temperature, double dloss) {
  const int64_t N = op_contract::distillation_loss(op_check("distillation_loss"), losses, dstudent, student, teacher,
                                                   classes, temperature);
  const int64_t Vp = student.dim(-1);
  if (N == 0) return;
  activate();
  const int threads = static_cast<int>(std::min<int64_t>(512, (Vp + 31) / 32 * 32));
  dispatch_float(student.dtype(), [&](auto tag) {
    using T = decltype(tag);
    distillation_kernel<<<static_cast<unsigned>(N), threads, 0, stream_>>>(
        ptr<float>(losses), ptr<T>(dstudent), ptr<T>(student), ptr<T>(teacher), Vp, classes,
        static_cast<float>(temperature), static_cast<float>(dloss));
    LOOM_CUDA_LAUNCHED("distillation_kernel");
  });
}

}  // namespace loom::cuda
