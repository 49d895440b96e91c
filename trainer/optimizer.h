// AdamW with decoupled weight decay and global-norm gradient clipping over a model's parameter arena.
//
// The arena puts decayed parameters first (trainer/parameters.h), so a step is one fused update per decay
// group. Moments are f32 (f64 when the master weights are f64) on the parameters' device.
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "core/config.pb.h"
#include "kernels/backend.h"
#include "trainer/parameters.h"

namespace loom {

class AdamW {
 public:
  AdamW(ParameterStore& params, const config::OptimConfig& cfg, Backend& backend);

  // Global L2 norm of the gradients (before clipping).
  double grad_norm();
  // One update at learning rate `lr`; `step` is 1-based (bias correction). Gradients are scaled by
  // min(1, grad_clip / norm) first when clipping is on; `norm` is grad_norm() of the same gradients.
  void step(double lr, int64_t step, double norm);

  // Moments for checkpoints: "optim.m" and "optim.v", flat like the parameter arena.
  std::vector<std::pair<std::string, Tensor>> state() const;
  // Restores moments saved by state(); throws naming `source` on a missing or mis-sized tensor.
  void load_state(const std::vector<std::pair<std::string, Tensor>>& tensors, const std::string& source);

 private:
  ParameterStore& params_;
  config::OptimConfig cfg_;
  Backend& backend_;
  Tensor m_, v_;
};

// Linear warmup to cfg.lr over warmup_steps, then cosine decay to lr · min_lr_ratio at max_steps.
// `step` is 0-based.
double learning_rate(const config::OptimConfig& cfg, int64_t step, int64_t max_steps);

}  // namespace loom
