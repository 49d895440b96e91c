// CpuBackend's structural-pruning ops (kernels/backend.h states the math): per-position dot products along one
// axis (saliency Σ g·w, weight magnitude Σ w²), masks, and the distillation loss. The shared contract
// (kernels/op_contract.h) is checked before any output is touched; the kernels below never throw (they run
// inside OpenMP regions).
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_parallel.h"

namespace loom {
namespace {

// out[i] = Σ_{o, n} a[o, i, n]·b[o, i, n], in double. Each i is one thread's work, o and n ascending, so the
// result does not depend on the thread count.
template <typename T, typename O>
void dot_along_axis_kernel(O* out, const T* a, const T* b, int64_t outer, int64_t D, int64_t inner) {
#pragma omp parallel for schedule(static) if (outer * D * inner > cpu::kParallelMinWork)
  for (int64_t i = 0; i < D; ++i) {
    double sum = 0;
    for (int64_t o = 0; o < outer; ++o) {
      const int64_t base = (o * D + i) * inner;
      for (int64_t n = 0; n < inner; ++n) sum += static_cast<double>(a[base + n]) * static_cast<double>(b[base + n]);
    }
    out[i] = static_cast<O>(sum);
  }
}

// x[(o·size + c)·inner + n] = 0 (all bits clear: +0 in every float format of that width) where keep[c] == 0,
// for x one parameter's elements viewed as [outer, size, inner].
template <typename Bits>
void zero_deleted_kernel(Bits* x, const int32_t* keep, int64_t numel, int64_t size, int64_t inner) {
#pragma omp parallel for schedule(static) if (numel > cpu::kParallelMinWork)
  for (int64_t i = 0; i < numel; ++i)
    if (keep[(i / inner) % size] == 0) x[i] = Bits{0};
}

// Per row, over the classes c < classes, with u = teacher/τ and v = student/τ (double throughout):
//   lse_u = log Σ exp(u_c), lse_v likewise, p_c = exp(u_c − lse_u), q_c = exp(v_c − lse_v),
//   KL(p‖q) = Σ p_c (u_c − v_c) − lse_u + lse_v   (because Σ p_c = 1), loss = τ²·KL,
//   dstudent_c = dloss·τ·(q_c − p_c); padding columns get 0.
// All statistics are taken before the last pass writes, and that pass reads both logits of a column before
// writing its gradient, so dstudent may alias student or teacher.
template <typename T, typename L>
void distillation_kernel(L* losses, T* dstudent, const T* student, const T* teacher, int64_t N, int64_t Vp,
                         int64_t classes, double tau, double dloss) {
#pragma omp parallel for schedule(static) if (N * Vp > cpu::kParallelMinWork)
  for (int64_t n = 0; n < N; ++n) {
    const T* s = student + n * Vp;
    const T* t = teacher + n * Vp;
    double max_u = -INFINITY, max_v = -INFINITY;
    for (int64_t c = 0; c < classes; ++c) {
      max_u = std::max(max_u, static_cast<double>(t[c]) / tau);
      max_v = std::max(max_v, static_cast<double>(s[c]) / tau);
    }
    double sum_u = 0, sum_v = 0, weighted = 0;
    for (int64_t c = 0; c < classes; ++c) {
      const double u = static_cast<double>(t[c]) / tau, v = static_cast<double>(s[c]) / tau;
      const double e = std::exp(u - max_u);
      sum_u += e;
      sum_v += std::exp(v - max_v);
      weighted += e * (u - v);
    }
    const double lse_u = max_u + std::log(sum_u), lse_v = max_v + std::log(sum_v);
    losses[n] = static_cast<L>(tau * tau * (weighted / sum_u - lse_u + lse_v));
    if (!dstudent) continue;
    T* d = dstudent + n * Vp;
    for (int64_t c = 0; c < classes; ++c) {
      const double p = std::exp(static_cast<double>(t[c]) / tau - lse_u);
      const double q = std::exp(static_cast<double>(s[c]) / tau - lse_v);
      d[c] = static_cast<T>(dloss * tau * (q - p));
    }
    for (int64_t c = classes; c < Vp; ++c) d[c] = T(0);
  }
}

}  // namespace

void CpuBackend::dot_along_axis(Tensor& out, const Tensor& a, const Tensor& b, int axis) {
  const auto dims = op_contract::dot_along_axis(op_check("dot_along_axis"), out, a, b, axis);
  const int64_t outer = dims.outer, D = dims.D, inner = dims.inner;
  auto run = [&](auto in_tag, auto out_tag) {
    using T = decltype(in_tag);
    using O = decltype(out_tag);
    dot_along_axis_kernel(out.data<O>(), a.data<T>(), b.data<T>(), outer, D, inner);
  };
  if (a.dtype() == DType::F64)
    out.dtype() == DType::F64 ? run(double{}, double{}) : run(double{}, float{});
  else
    out.dtype() == DType::F64 ? run(float{}, double{}) : run(float{}, float{});
}

void CpuBackend::zero_deleted(Tensor& x, const std::vector<DimensionMask>& dims, const Tensor& keep) {
  op_contract::zero_deleted(op_check("zero_deleted"), x, dims, keep);
  const int32_t* k = keep.data<int32_t>();
  for (const DimensionMask& d : dims) {
    auto run = [&](auto* bits) { zero_deleted_kernel(bits + d.offset, k + d.flags_at, d.numel, d.size, d.inner); };
    switch (dtype_size(x.dtype())) {
      case 8: run(static_cast<uint64_t*>(x.raw())); break;
      case 4: run(static_cast<uint32_t*>(x.raw())); break;
      default: run(static_cast<uint16_t*>(x.raw())); break;
    }
  }
}

void CpuBackend::distillation_loss(Tensor& losses, Tensor& dstudent, const Tensor& student, const Tensor& teacher,
                                   int64_t classes, double temperature, double dloss) {
  const int64_t N = op_contract::distillation_loss(op_check("distillation_loss"), losses, dstudent, student, teacher,
                                                   classes, temperature);
  const int64_t Vp = student.dim(-1);
  auto run = [&](auto tag, auto loss_tag) {
    using T = decltype(tag);
    using L = decltype(loss_tag);
    distillation_kernel(losses.data<L>(), dstudent.defined() ? dstudent.data<T>() : nullptr, student.data<T>(),
                        teacher.data<T>(), N, Vp, classes, temperature, dloss);
  };
  if (student.dtype() == DType::F64)
    losses.dtype() == DType::F64 ? run(double{}, double{}) : run(double{}, float{});
  else
    losses.dtype() == DType::F64 ? run(float{}, double{}) : run(float{}, float{});
}

}  // namespace loom
