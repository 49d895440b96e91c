// AdamW with decoupled weight decay and global-norm gradient clipping over a model's parameter arena.
//
// The arena puts decayed parameters first (trainer/parameters.h), so a step is one fused update per decay
// group. Moments are f32 (f64 when the master weights are f64) on the parameters' device. With ZeRO-1 an
// optimizer owns only a range of the arena (trainer/gradient_sync.h computes the norm and the shards).
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
  // Updates the arena range [begin, end) (end = -1: the whole arena), with moments of `moment_size` elements
  // (>= end - begin; ZeRO-1 pads its shard; -1: end - begin).
  AdamW(ParameterStore& params, const config::OptimConfig& cfg, Backend& backend, int64_t begin = 0,
        int64_t end = -1, int64_t moment_size = -1);

  // One update at learning rate `lr`; `step` is 1-based (bias correction). Gradients are scaled by
  // min(1, grad_clip / norm) first when clipping is on; `norm` is the global norm of the same gradients.
  // `grads` holds the gradients of [begin, end) from its first element (undefined: the arena's own).
  void step(double lr, int64_t step, double norm, const Tensor& grads = Tensor());

  // The moments of [begin, end) (padded to moment_size), for layout-aware checkpoints.
  Tensor& first_moment() { return m_; }
  Tensor& second_moment() { return v_; }

 private:
  ParameterStore& params_;
  config::OptimConfig cfg_;
  Backend& backend_;
  int64_t begin_, end_;
  Tensor m_, v_;
};

// Linear warmup to cfg.lr over warmup_steps, then cosine decay to lr · min_lr_ratio at max_steps.
// `step` is 0-based.
double learning_rate(const config::OptimConfig& cfg, int64_t step, int64_t max_steps);

}  // namespace loom
