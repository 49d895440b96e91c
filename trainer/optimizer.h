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

// Arena elements [begin, begin + length) whose moments (and, with ZeRO-1, reduced gradients) sit at
// [offset, offset + length) of the optimizer's own buffers.
struct ArenaRange {
  int64_t begin = 0, length = 0, offset = 0;
};

class AdamW {
 public:
  // Updates the arena `ranges` (empty: the whole arena, moments laid out like it), with moments of
  // `moment_size` elements (-1: the whole arena). Throws loom::Error on a range outside the arena or the moments,
  // and on hyperparameters that cannot give a finite update (β1, β2 outside [0, 1), eps <= 0, lr or
  // weight_decay < 0, grad_clip < 0).
  AdamW(ParameterStore& params, const config::OptimConfig& cfg, Backend& backend,
        std::vector<ArenaRange> ranges = {}, int64_t moment_size = -1);

  // One update at learning rate `lr`; `step` is 1-based (bias correction). Gradients are scaled by
  // min(1, grad_clip / norm) first when clipping is on; `norm` is the global norm of the same gradients.
  // `grads` holds each range's gradients at its offset (undefined: the arena's own gradients at `begin`).
  void step(double lr, int64_t step, double norm, const Tensor& grads = Tensor());
  // The same with the norm left on the device (the training step's path: nothing is read on the host first):
  // `step_stats` holds the step's loss and squared gradient norm (kernels/step_stats.h, F64 on the backend's
  // device, complete in stream order), from which the update kernels take min(1, grad_clip / norm) where they
  // run, and which make the update change nothing (parameters, moments, compute copy) when the loss or the norm
  // is not finite.
  void step(double lr, int64_t step, const Tensor& step_stats, const Tensor& grads = Tensor());

  // The moments (laid out by the ranges' offsets), for layout-aware checkpoints.
  Tensor& first_moment() { return m_; }
  Tensor& second_moment() { return v_; }

 private:
  ParameterStore& params_;
  config::OptimConfig cfg_;
  Backend& backend_;
  // One fused update per (range, decay group) with `hp` (lr, step, and the gradient scaling already set).
  void update(AdamWHyper hp, const Tensor& grads);

  std::vector<ArenaRange> ranges_;
  Tensor m_, v_;
};

// Linear warmup to cfg.lr over warmup_steps, then cosine decay to lr · min_lr_ratio at max_steps.
// `step` is 0-based.
double learning_rate(const config::OptimConfig& cfg, int64_t step, int64_t max_steps);

}  // namespace loom
