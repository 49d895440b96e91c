// A training step's statistics as they stay on the device until the step's one host read (trainer/trainer.cc),
// and the formula both backends' AdamW use to decide the update from them (host and CUDA device code).
//
// Layout: an F64 tensor of kStepStatsSize elements on the backend's device:
//   [kStepLoss]              the step's loss (a sum the host divides afterwards, e.g. over data ranks),
//   [kStepSquaresSharded]    Σg² of the tensor-sharded parameters' gradients,
//   [kStepSquaresReplicated] Σg² of the replicated ones (trainer/gradient_sync.h),
// so the global gradient norm is √(squares sharded + squares replicated), added in that order everywhere.
#pragma once
#include <cmath>

#if !defined(LOOM_HOST_DEVICE)
#if defined(__CUDACC__)
#define LOOM_HOST_DEVICE __host__ __device__
#else
#define LOOM_HOST_DEVICE
#endif
#endif

namespace loom {

enum StepStat : int { kStepLoss = 0, kStepSquaresSharded = 1, kStepSquaresReplicated = 2, kStepStatsSize = 3 };

LOOM_HOST_DEVICE inline bool step_stat_finite(double x) {
#if defined(__CUDA_ARCH__)
  return isfinite(x);
#else
  return std::isfinite(x);
#endif
}

LOOM_HOST_DEVICE inline double step_grad_norm(const double* stats) {
#if defined(__CUDA_ARCH__)
  return sqrt(stats[kStepSquaresSharded] + stats[kStepSquaresReplicated]);
#else
  return std::sqrt(stats[kStepSquaresSharded] + stats[kStepSquaresReplicated]);
#endif
}

// Whether AdamW updates at all for `stats` (false when the loss or the norm is not finite: the parameters and
// moments must stay as they are), and the multiplier of its gradients:
//   scale = grad_scale · (max_grad_norm / norm)   when max_grad_norm > 0 and norm > max_grad_norm (clipping),
//   scale = grad_scale                            otherwise.
LOOM_HOST_DEVICE inline bool step_update_scale(const double* stats, double max_grad_norm, double grad_scale,
                                               double* scale) {
  const double norm = step_grad_norm(stats);
  if (!step_stat_finite(stats[kStepLoss]) || !step_stat_finite(norm)) return false;
  *scale = max_grad_norm > 0 && norm > max_grad_norm ? grad_scale * (max_grad_norm / norm) : grad_scale;
  return true;
}

}  // namespace loom
