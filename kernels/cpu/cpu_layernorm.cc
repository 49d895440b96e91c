// LayerNorm over the last dimension for the CPU backend (see cpu_ops.h for the math).
#include <algorithm>
#include <cmath>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/cpu_parallel.h"

namespace loom::cpu {

template <typename T>
void layernorm_forward(T* out, T* mean, T* rstd, const T* x, const T* w, const T* b, int64_t N, int64_t C, double eps,
                       int64_t K) {
#pragma omp parallel for schedule(static) if (N * C > kParallelMinWork)
  for (int64_t n = 0; n < N; ++n) {
    const T* xr = x + n * C;
    double sum = 0;
    for (int64_t c = 0; c < C; ++c) sum += xr[c];
    const double mu = sum / static_cast<double>(K);
    // Two-pass variance: no cancellation when |mean| >> std.
    double sq = 0;
    for (int64_t c = 0; c < C; ++c) {
      const double d = xr[c] - mu;
      sq += d * d;
    }
    // The C - K masked channels hold zeros, each adding mean² to the sum of squares.
    sq -= static_cast<double>(C - K) * mu * mu;
    const double rs = 1.0 / std::sqrt(std::max(sq, 0.0) / static_cast<double>(K) + eps);
    const T m = static_cast<T>(mu), r = static_cast<T>(rs);
    T* o = out + n * C;
    if (b) {
      for (int64_t c = 0; c < C; ++c) o[c] = (xr[c] - m) * r * w[c] + b[c];
    } else {
      for (int64_t c = 0; c < C; ++c) o[c] = (xr[c] - m) * r * w[c];
    }
    mean[n] = m;
    rstd[n] = r;
  }
}

// Two passes: rows in parallel for dx (row-local reductions), then column blocks in parallel for dw/db so
// that each parameter gradient is summed over rows in ascending order by a single thread.
template <typename T>
void layernorm_backward(T* dx, T* dw, T* db, const T* dout, const T* x, const T* w, const T* mean, const T* rstd,
                        int64_t N, int64_t C, int64_t K) {
  const bool parallel = N * C > kParallelMinWork;
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t n = 0; n < N; ++n) {
    const T* xr = x + n * C;
    const T* g = dout + n * C;
    const T m = mean[n], r = rstd[n];
    double g_sum = 0, g_xhat_sum = 0;
    for (int64_t c = 0; c < C; ++c) {
      const T gw = g[c] * w[c];
      g_sum += gw;
      g_xhat_sum += gw * ((xr[c] - m) * r);
    }
    const T g_mean = static_cast<T>(g_sum / static_cast<double>(K));
    const T g_xhat_mean = static_cast<T>(g_xhat_sum / static_cast<double>(K));
    T* d = dx + n * C;
    for (int64_t c = 0; c < C; ++c) {
      const T xhat = (xr[c] - m) * r;
      d[c] += r * (g[c] * w[c] - g_mean - xhat * g_xhat_mean);
    }
  }
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t c0 = 0; c0 < C; c0 += kColumnBlock) {
    const int64_t c1 = std::min(C, c0 + kColumnBlock);
    for (int64_t n = 0; n < N; ++n) {
      const T* xr = x + n * C;
      const T* g = dout + n * C;
      const T m = mean[n], r = rstd[n];
      for (int64_t c = c0; c < c1; ++c) dw[c] += g[c] * ((xr[c] - m) * r);
      if (db)
        for (int64_t c = c0; c < c1; ++c) db[c] += g[c];
    }
  }
}

#define LOOM_INSTANTIATE(T)                                                                               \
  template void layernorm_forward<T>(T*, T*, T*, const T*, const T*, const T*, int64_t, int64_t, double, int64_t); \
  template void layernorm_backward<T>(T*, T*, T*, const T*, const T*, const T*, const T*, const T*, int64_t, int64_t, \
                                      int64_t);
LOOM_INSTANTIATE(float)
LOOM_INSTANTIATE(double)
#undef LOOM_INSTANTIATE

}  // namespace loom::cpu
