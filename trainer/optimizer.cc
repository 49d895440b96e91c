#include "trainer/optimizer.h"

#include <algorithm>
#include <cmath>

namespace loom {

AdamW::AdamW(ParameterStore& params, const config::OptimConfig& cfg, Backend& backend, int64_t begin, int64_t end,
             int64_t moment_size)
    : params_(params), cfg_(cfg), backend_(backend), begin_(begin), end_(end < 0 ? params.layout().total() : end) {
  LOOM_CHECK(0 <= begin_ && begin_ <= end_ && end_ <= params.layout().total(), "AdamW: range [", begin_, ", ", end_,
             ") outside the parameter arena of ", params.layout().total());
  if (moment_size < 0) moment_size = end_ - begin_;
  LOOM_CHECK(moment_size >= end_ - begin_, "AdamW: moment size ", moment_size, " below the range's ", end_ - begin_);
  const DType moment_dtype = params.master().dtype() == DType::F64 ? DType::F64 : DType::F32;
  m_ = Tensor::zeros({moment_size}, moment_dtype, backend.device());
  v_ = Tensor::zeros({moment_size}, moment_dtype, backend.device());
}

void AdamW::step(double lr, int64_t step, double norm, const Tensor& grads) {
  AdamWHyper hp;
  hp.lr = lr;
  hp.beta1 = cfg_.beta1();
  hp.beta2 = cfg_.beta2();
  hp.eps = cfg_.eps();
  hp.step = step;
  hp.grad_scale = (cfg_.grad_clip() > 0 && norm > cfg_.grad_clip()) ? cfg_.grad_clip() / norm : 1.0;
  const int64_t total = params_.layout().total(), split = params_.layout().decay_numel();
  // [0, split) decays, [split, total) does not.
  const std::pair<int64_t, int64_t> groups[2] = {{0, split}, {split, total}};
  const Tensor& g_src = grads.defined() ? grads : params_.grads().slice_flat(begin_, {end_ - begin_});
  for (int g = 0; g < 2; ++g) {
    const int64_t begin = std::max(groups[g].first, begin_), end = std::min(groups[g].second, end_);
    if (end <= begin) continue;
    Tensor p = params_.master().slice_flat(begin, {end - begin});
    Tensor m = m_.slice_flat(begin - begin_, {end - begin});
    Tensor v = v_.slice_flat(begin - begin_, {end - begin});
    Tensor grad = g_src.slice_flat(begin - begin_, {end - begin});
    Tensor copy = params_.compute_is_master() ? Tensor() : params_.compute().slice_flat(begin, {end - begin});
    backend_.adamw_update(p, m, v, grad, copy, hp, g == 0 ? cfg_.weight_decay() : 0.0);
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
