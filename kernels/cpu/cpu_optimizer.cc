// AdamW for the CPU backend (see cpu_ops.h and kernels/backend.h for the exact update).
#include <cmath>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/cpu_parallel.h"

namespace loom::cpu {

// Everything per element is computed in double and rounded once when stored, so f32 and f64 parameters
// follow the same formula and a scalar double reference reproduces it.
template <typename T, DType G>
void adamw(T* param, T* m, T* v, const typename Elem<G>::type* grad, int64_t n, const AdamWStep& s) {
  const double bias1 = 1.0 - std::pow(s.beta1, static_cast<double>(s.step));
  const double bias2 = 1.0 - std::pow(s.beta2, static_cast<double>(s.step));
#pragma omp parallel for schedule(static) if (n > kParallelMinWork)
  for (int64_t i = 0; i < n; ++i) {
    const double g = Elem<G>::load(grad[i]) * s.grad_scale;
    const double mi = s.beta1 * m[i] + (1 - s.beta1) * g;
    const double vi = s.beta2 * v[i] + (1 - s.beta2) * g * g;
    const double p = param[i];
    const double update = (mi / bias1) / (std::sqrt(vi / bias2) + s.eps) + s.weight_decay * p;
    m[i] = static_cast<T>(mi);
    v[i] = static_cast<T>(vi);
    param[i] = static_cast<T>(p - s.lr * update);
  }
}

#define LOOM_INSTANTIATE(T, G) \
  template void adamw<T, G>(T*, T*, T*, const typename Elem<G>::type*, int64_t, const AdamWStep&);
#define LOOM_INSTANTIATE_ALL_GRADS(T) \
  LOOM_INSTANTIATE(T, DType::F32)     \
  LOOM_INSTANTIATE(T, DType::F64)     \
  LOOM_INSTANTIATE(T, DType::BF16)    \
  LOOM_INSTANTIATE(T, DType::F16)
LOOM_INSTANTIATE_ALL_GRADS(float)
LOOM_INSTANTIATE_ALL_GRADS(double)
#undef LOOM_INSTANTIATE_ALL_GRADS
#undef LOOM_INSTANTIATE

}  // namespace loom::cpu
