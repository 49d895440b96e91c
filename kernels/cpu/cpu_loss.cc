// Softmax cross-entropy with padded vocabulary, ignored rows and label smoothing, whole or split over the
// vocabulary (see cpu_ops.h).
#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/cpu_parallel.h"

namespace loom::cpu {

// Per row: m = max_c z_c, S = Σ_c exp(z_c - m) (double), logsumexp = m + log S,
//   loss = logsumexp - (1-ε)·z_target - (ε/vocab)·Σ_c z_c,
//   dlogits_c = dloss·(exp(z_c - m)/S - ε/vocab - (1-ε)·[c = target]).
// exp is evaluated once per logit: the second pass parks exp(z_c - m) in dlogits and the third rescales it.
// Everything read from the logits (max, Σ z, z_target) is taken before the second pass writes, so dlogits
// may alias logits.
template <typename T, typename L>
void cross_entropy(L* losses, T* dlogits, const T* logits, const int32_t* targets, int64_t N, int64_t Vp, int64_t vocab,
                   double dloss, double label_smoothing) {
  const double eps = label_smoothing;
  const double smooth = eps / static_cast<double>(vocab);
#pragma omp parallel for schedule(static) if (N * Vp > kParallelMinWork)
  for (int64_t n = 0; n < N; ++n) {
    const T* z = logits + n * Vp;
    T* d = dlogits ? dlogits + n * Vp : nullptr;
    const int32_t target = targets[n];
    if (target < 0) {
      losses[n] = L(0);
      if (d)
        for (int64_t c = 0; c < Vp; ++c) d[c] = T(0);
      continue;
    }
    T m = z[0];
    double z_sum = 0;
    for (int64_t c = 0; c < vocab; ++c) {
      m = std::max(m, z[c]);
      z_sum += z[c];
    }
    const double z_target = z[target];
    double sum = 0;
    if (d) {
      for (int64_t c = 0; c < vocab; ++c) {
        d[c] = std::exp(z[c] - m);
        sum += d[c];
      }
    } else {
      for (int64_t c = 0; c < vocab; ++c) sum += std::exp(z[c] - m);
    }
    losses[n] = static_cast<L>(static_cast<double>(m) + std::log(sum) - (1 - eps) * z_target - smooth * z_sum);
    if (!d) continue;
    const double inv_sum = 1.0 / sum;
    for (int64_t c = 0; c < vocab; ++c)
      d[c] = static_cast<T>(dloss * (d[c] * inv_sum - smooth - (c == target ? 1 - eps : 0.0)));
    for (int64_t c = vocab; c < Vp; ++c) d[c] = T(0);
  }
}

// Per row over this rank's class columns c < valid (the rest of the Vr columns is padding):
//   m = max_c z_c, s = Σ_c exp(z_c - m) (double), z_target when the target is a local column, Σz = Σ_c z_c.
// The max and exp are taken in T as cross_entropy does, so one rank reproduces it exactly.
template <typename T, typename P>
void cross_entropy_partials(P* partials, const T* logits, const int32_t* targets, int64_t N, int64_t Vr,
                            int64_t vocab_begin, int64_t vocab) {
  const int64_t valid = std::clamp<int64_t>(vocab - vocab_begin, 0, Vr);
#pragma omp parallel for schedule(static) if (N * Vr > kParallelMinWork)
  for (int64_t n = 0; n < N; ++n) {
    P* out = partials + 4 * n;
    out[0] = -std::numeric_limits<P>::infinity();
    out[1] = out[2] = out[3] = P(0);
    const int32_t target = targets[n];
    if (target < 0 || valid == 0) continue;
    const T* z = logits + n * Vr;
    T m = z[0];
    double z_sum = 0;
    for (int64_t c = 0; c < valid; ++c) {
      m = std::max(m, z[c]);
      z_sum += z[c];
    }
    double sum = 0;
    for (int64_t c = 0; c < valid; ++c) sum += std::exp(z[c] - m);
    const int64_t local_target = target - vocab_begin;
    out[0] = static_cast<P>(m);
    out[1] = static_cast<P>(sum);
    out[2] = local_target >= 0 && local_target < valid ? static_cast<P>(z[local_target]) : P(0);
    out[3] = static_cast<P>(z_sum);
  }
}

// Per row, combining the R ranks' partials in double: M = max_r m_r, S = Σ_r s_r·exp(m_r - M) (ranks without
// class columns, m_r = -inf, add nothing), z_target = Σ_r, Σz = Σ_r; loss = M + log S - (1-ε)·z_target -
// (ε/vocab)·Σz and, for the local class columns, dlogits_c = dloss·(exp(z_c - M)/S - ε/vocab - (1-ε)·[c = target]).
// Each logit is read before its own gradient overwrites it, so dlogits may alias logits.
template <typename T, typename P>
void cross_entropy_from_partials(P* losses, T* dlogits, const P* gathered, const T* logits, const int32_t* targets,
                                 int64_t R, int64_t N, int64_t Vr, int64_t vocab_begin, int64_t vocab, double dloss,
                                 double label_smoothing) {
  const double eps = label_smoothing;
  const double smooth = eps / static_cast<double>(vocab);
  const int64_t valid = std::clamp<int64_t>(vocab - vocab_begin, 0, Vr);
#pragma omp parallel for schedule(static) if (N * Vr > kParallelMinWork)
  for (int64_t n = 0; n < N; ++n) {
    T* d = dlogits ? dlogits + n * Vr : nullptr;
    const int32_t target = targets[n];
    if (target < 0) {
      losses[n] = P(0);
      if (d)
        for (int64_t c = 0; c < Vr; ++c) d[c] = T(0);
      continue;
    }
    double M = -std::numeric_limits<double>::infinity();
    for (int64_t r = 0; r < R; ++r) M = std::max(M, static_cast<double>(gathered[(r * N + n) * 4]));
    double sum = 0, z_target = 0, z_sum = 0;
    for (int64_t r = 0; r < R; ++r) {
      const P* p = gathered + (r * N + n) * 4;
      if (p[0] != -std::numeric_limits<P>::infinity()) sum += p[1] * std::exp(static_cast<double>(p[0]) - M);
      z_target += p[2];
      z_sum += p[3];
    }
    losses[n] = static_cast<P>(M + std::log(sum) - (1 - eps) * z_target - smooth * z_sum);
    if (!d) continue;
    const T* z = logits + n * Vr;
    const double inv_sum = 1.0 / sum;
    const int64_t local_target = target - vocab_begin;
    for (int64_t c = 0; c < valid; ++c) {
      const double p = std::exp(static_cast<double>(z[c]) - M) * inv_sum;
      d[c] = static_cast<T>(dloss * (p - smooth - (c == local_target ? 1 - eps : 0.0)));
    }
    for (int64_t c = valid; c < Vr; ++c) d[c] = T(0);
  }
}

#define LOOM_INSTANTIATE(T, L)                                                                                     \
  template void cross_entropy<T, L>(L*, T*, const T*, const int32_t*, int64_t, int64_t, int64_t, double, double); \
  template void cross_entropy_partials<T, L>(L*, const T*, const int32_t*, int64_t, int64_t, int64_t, int64_t);   \
  template void cross_entropy_from_partials<T, L>(L*, T*, const L*, const T*, const int32_t*, int64_t, int64_t,   \
                                                  int64_t, int64_t, int64_t, double, double);
LOOM_INSTANTIATE(float, float)
LOOM_INSTANTIATE(float, double)
LOOM_INSTANTIATE(double, float)
LOOM_INSTANTIATE(double, double)
#undef LOOM_INSTANTIATE

}  // namespace loom::cpu
