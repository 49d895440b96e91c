#include "trainer/optimizer.h"

#include <algorithm>
#include <cmath>

namespace loom {

AdamW::AdamW(ParameterStore& params, const config::OptimConfig& cfg, Backend& backend, std::vector<ArenaRange> ranges,
             int64_t moment_size)
    : params_(params), cfg_(cfg), backend_(backend), ranges_(std::move(ranges)) {
  // The YAML loader checks the same ranges (core/config.proto); configs built in code meet them here. β = 1
  // would divide by 1 - β^step = 0, eps = 0 by sqrt(v) = 0.
  for (const auto& [name, beta] : {std::pair<const char*, double>{"beta1", cfg.beta1()}, {"beta2", cfg.beta2()}})
    LOOM_CHECK(beta >= 0 && beta < 1, "optim.", name, " must be in [0, 1), got ", beta);
  LOOM_CHECK(cfg.eps() > 0 && std::isfinite(cfg.eps()), "optim.eps must be positive, got ", cfg.eps());
  LOOM_CHECK(cfg.lr() >= 0 && std::isfinite(cfg.lr()), "optim.lr must be >= 0, got ", cfg.lr());
  LOOM_CHECK(cfg.weight_decay() >= 0 && std::isfinite(cfg.weight_decay()), "optim.weight_decay must be >= 0, got ",
             cfg.weight_decay());
  LOOM_CHECK(cfg.grad_clip() >= 0, "optim.grad_clip must be >= 0 (0 disables clipping), got ", cfg.grad_clip());
  const int64_t total = params.layout().total();
  if (ranges_.empty()) ranges_.push_back({0, total, 0});
  if (moment_size < 0) moment_size = total;
  for (const ArenaRange& r : ranges_)
    LOOM_CHECK(r.begin >= 0 && r.length >= 0 && r.begin + r.length <= total && r.offset >= 0 &&
                   r.offset + r.length <= moment_size,
               "AdamW: range [", r.begin, ", +", r.length, ") at offset ", r.offset, " outside the arena (", total,
               ") or the moments (", moment_size, ")");
  const DType moment_dtype = params.master().dtype() == DType::F64 ? DType::F64 : DType::F32;
  m_ = Tensor::zeros({moment_size}, moment_dtype, backend.device());
  v_ = Tensor::zeros({moment_size}, moment_dtype, backend.device());
}

void AdamW::step(double lr, int64_t step, double norm, const Tensor& grads) {
  AdamWHyper hp;
  hp.lr = lr;
  hp.step = step;
  hp.grad_scale = (cfg_.grad_clip() > 0 && norm > cfg_.grad_clip()) ? cfg_.grad_clip() / norm : 1.0;
  update(hp, grads);
}

void AdamW::step(double lr, int64_t step, const Tensor& step_stats, const Tensor& grads) {
  AdamWHyper hp;
  hp.lr = lr;
  hp.step = step;
  hp.step_stats = step_stats;
  hp.max_grad_norm = cfg_.grad_clip();
  update(hp, grads);
}

void AdamW::update(AdamWHyper hp, const Tensor& grads) {
  hp.beta1 = cfg_.beta1();
  hp.beta2 = cfg_.beta2();
  hp.eps = cfg_.eps();
  const int64_t total = params_.layout().total(), split = params_.layout().decay_numel();
  // [0, split) decays, [split, total) does not: one fused update per (range, decay group) intersection.
  const std::pair<int64_t, int64_t> groups[2] = {{0, split}, {split, total}};
  for (const ArenaRange& r : ranges_) {
    for (int g = 0; g < 2; ++g) {
      const int64_t begin = std::max(groups[g].first, r.begin), end = std::min(groups[g].second, r.begin + r.length);
      if (end <= begin) continue;
      const int64_t at = r.offset + (begin - r.begin), n = end - begin;
      Tensor p = params_.master().slice_flat(begin, {n});
      Tensor m = m_.slice_flat(at, {n});
      Tensor v = v_.slice_flat(at, {n});
      Tensor grad = grads.defined() ? grads.slice_flat(at, {n}) : params_.grads().slice_flat(begin, {n});
      Tensor copy = params_.compute_is_master() ? Tensor() : params_.compute().slice_flat(begin, {n});
      backend_.adamw_update(p, m, v, grad, copy, hp, g == 0 ? cfg_.weight_decay() : 0.0);
    }
  }
}

double learning_rate(const config::OptimConfig& cfg, int64_t step, int64_t max_steps) {
  const double lr = cfg.lr(), min_lr = cfg.lr() * cfg.min_lr_ratio();
  const int64_t warmup = cfg.warmup_steps();
  if (step < warmup) return lr * static_cast<double>(step + 1) / warmup;
  if (max_steps <= warmup) return lr;
  const double progress = std::min(1.0, static_cast<double>(step - warmup) / static_cast<double>(max_steps - warmup));
  return min_lr + 0.5 * (lr - min_lr) * (1.0 + std::cos(M_PI * progress));
}

}  // namespace loom
