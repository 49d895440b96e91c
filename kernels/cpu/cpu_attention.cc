// Materialised multi-head attention for the CPU backend: the reference that flash kernels are checked against.
//
// qkv row layout per token (kernels/backend.h): [q heads | k heads | v heads], head h of q at h·Dqk, of k at
// H·Dqk + h·Dqk, of v at 2·H·Dqk + h·Dv. Each (batch, head) pair is independent and writes disjoint output
// columns, so the pairs run in parallel; within a pair every sum runs in a fixed order (deterministic).
// The inner loops are written as axpy's over contiguous rows (k and v are transposed into scratch first)
// so that the compiler vectorises them without reassociating a reduction. Causal rows stop at s = t.
#include <cmath>
#include <vector>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/cpu_parallel.h"

namespace loom::cpu {

namespace {
// Pointers into the fused qkv (or dqkv) activation and the attention output for one (batch, head).
template <typename T>
struct HeadView {
  T* base;  // qkv + b·T·W
  int64_t W, q_off, k_off, v_off;
  T* q(int64_t t) const { return base + t * W + q_off; }
  T* k(int64_t t) const { return base + t * W + k_off; }
  T* v(int64_t t) const { return base + t * W + v_off; }
};

template <typename T>
HeadView<T> head_view(T* qkv, const AttentionDims& d, int64_t b, int64_t h) {
  const int64_t W = d.H * (2 * d.Dqk + d.Dv);
  return {qkv + b * d.Tn * W, W, h * d.Dqk, d.H * d.Dqk + h * d.Dqk, 2 * d.H * d.Dqk + h * d.Dv};
}

// dst[j·T + s] = row_s[j] for the rows at(s), s < T: a [T, D] strided matrix into a contiguous [D, T] one.
template <typename T, typename RowFn>
void transpose_rows(T* dst, int64_t Tn, int64_t D, RowFn at) {
  for (int64_t s = 0; s < Tn; ++s) {
    const T* row = at(s);
    for (int64_t j = 0; j < D; ++j) dst[j * Tn + s] = row[j];
  }
}

int64_t row_length(const AttentionDims& d, int64_t t) { return d.causal ? t + 1 : d.Tn; }
}  // namespace

// For each row t: S[t, s] = scale·q_t·k_s (s < len), P[t, :] = exp(S - max) / Σ exp(S - max) (sum in
// double), P[t, s >= len] = 0; out_t = Σ_s P[t, s] v_s.
template <typename T>
void attention_forward(T* out, T* probs, const T* qkv, const AttentionDims& d) {
  const int64_t Tn = d.Tn, out_W = d.H * d.Dv;
  const T scale = static_cast<T>(d.scale);
  const int64_t work = d.B * d.H * Tn * Tn * (d.Dqk + d.Dv);
#pragma omp parallel if (work > kParallelMinWork)
  {
    std::vector<T> kT(static_cast<size_t>(d.Dqk * Tn));
#pragma omp for schedule(static)
    for (int64_t bh = 0; bh < d.B * d.H; ++bh) {
      const int64_t b = bh / d.H, h = bh % d.H;
      const HeadView<const T> in = head_view(qkv, d, b, h);
      transpose_rows(kT.data(), Tn, d.Dqk, [&](int64_t s) { return in.k(s); });
      T* P = probs + bh * Tn * Tn;
      for (int64_t t = 0; t < Tn; ++t) {
        const int64_t len = row_length(d, t);
        T* row = P + t * Tn;
        const T* q = in.q(t);
        for (int64_t s = 0; s < len; ++s) row[s] = T(0);
        for (int64_t j = 0; j < d.Dqk; ++j) {
          const T a = q[j];
          const T* kj = kT.data() + j * Tn;
          for (int64_t s = 0; s < len; ++s) row[s] += a * kj[s];
        }
        T row_max = row[0] * scale;
        for (int64_t s = 0; s < len; ++s) {
          row[s] *= scale;
          row_max = std::max(row_max, row[s]);
        }
        double sum = 0;
        for (int64_t s = 0; s < len; ++s) {
          row[s] = std::exp(row[s] - row_max);
          sum += row[s];
        }
        const T inv = static_cast<T>(1.0 / sum);
        for (int64_t s = 0; s < len; ++s) row[s] *= inv;
        for (int64_t s = len; s < Tn; ++s) row[s] = T(0);

        T* o = out + (b * Tn + t) * out_W + h * d.Dv;
        for (int64_t j = 0; j < d.Dv; ++j) o[j] = T(0);
        for (int64_t s = 0; s < len; ++s) {
          const T p = row[s];
          const T* v = in.v(s);
          for (int64_t j = 0; j < d.Dv; ++j) o[j] += p * v[j];
        }
      }
    }
  }
}

// Per row t (ascending), with g = dout_t:
//   dP[s] = g·v_s;  D = Σ_s P[t, s]·dP[s];  dS[s] = scale·P[t, s]·(dP[s] - D)
//   dq_t = Σ_s dS[s]·k_s;  dk_s += dS[s]·q_t;  dv_s += P[t, s]·g.
template <typename T>
void attention_backward(T* dqkv, const T* dout, const T* qkv, const T* probs, const AttentionDims& d) {
  const int64_t Tn = d.Tn, out_W = d.H * d.Dv;
  const T scale = static_cast<T>(d.scale);
  const int64_t work = d.B * d.H * Tn * Tn * (d.Dqk + d.Dv);
#pragma omp parallel if (work > kParallelMinWork)
  {
    std::vector<T> vT(static_cast<size_t>(d.Dv * Tn)), dS(static_cast<size_t>(Tn));
#pragma omp for schedule(static)
    for (int64_t bh = 0; bh < d.B * d.H; ++bh) {
      const int64_t b = bh / d.H, h = bh % d.H;
      const HeadView<const T> in = head_view(qkv, d, b, h);
      const HeadView<T> grad = head_view(dqkv, d, b, h);
      for (int64_t t = 0; t < Tn; ++t) {
        for (int64_t j = 0; j < d.Dqk; ++j) grad.q(t)[j] = grad.k(t)[j] = T(0);
        for (int64_t j = 0; j < d.Dv; ++j) grad.v(t)[j] = T(0);
      }
      transpose_rows(vT.data(), Tn, d.Dv, [&](int64_t s) { return in.v(s); });
      const T* P = probs + bh * Tn * Tn;
      for (int64_t t = 0; t < Tn; ++t) {
        const int64_t len = row_length(d, t);
        const T* prow = P + t * Tn;
        const T* g = dout + (b * Tn + t) * out_W + h * d.Dv;
        T* dp = dS.data();
        for (int64_t s = 0; s < len; ++s) dp[s] = T(0);
        for (int64_t j = 0; j < d.Dv; ++j) {
          const T a = g[j];
          const T* vj = vT.data() + j * Tn;
          for (int64_t s = 0; s < len; ++s) dp[s] += a * vj[s];
        }
        double D = 0;
        for (int64_t s = 0; s < len; ++s) D += static_cast<double>(prow[s]) * dp[s];
        const T Dt = static_cast<T>(D);
        for (int64_t s = 0; s < len; ++s) dp[s] = scale * prow[s] * (dp[s] - Dt);

        T* dq = grad.q(t);
        const T* q = in.q(t);
        for (int64_t s = 0; s < len; ++s) {
          const T ds = dp[s], p = prow[s];
          const T* k = in.k(s);
          T* dk = grad.k(s);
          T* dv = grad.v(s);
          for (int64_t j = 0; j < d.Dqk; ++j) dq[j] += ds * k[j];
          for (int64_t j = 0; j < d.Dqk; ++j) dk[j] += ds * q[j];
          for (int64_t j = 0; j < d.Dv; ++j) dv[j] += p * g[j];
        }
      }
    }
  }
}

#define LOOM_INSTANTIATE(T)                                                   \
  template void attention_forward<T>(T*, T*, const T*, const AttentionDims&); \
  template void attention_backward<T>(T*, const T*, const T*, const T*, const AttentionDims&);
LOOM_INSTANTIATE(float)
LOOM_INSTANTIATE(double)
#undef LOOM_INSTANTIATE

}  // namespace loom::cpu
