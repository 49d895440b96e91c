// Softmax cross-entropy with padded vocabulary, ignored rows and label smoothing (see cpu_ops.h).
#include <cmath>

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

#define LOOM_INSTANTIATE(T, L) \
  template void cross_entropy<T, L>(L*, T*, const T*, const int32_t*, int64_t, int64_t, int64_t, double, double);
LOOM_INSTANTIATE(float, float)
LOOM_INSTANTIATE(float, double)
LOOM_INSTANTIATE(double, float)
LOOM_INSTANTIATE(double, double)
#undef LOOM_INSTANTIATE

}  // namespace loom::cpu
