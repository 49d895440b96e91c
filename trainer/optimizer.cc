#include "trainer/optimizer.h"

#include <cmath>

namespace loom {

AdamW::AdamW(ParameterStore& params, const config::OptimConfig& cfg, Backend& backend)
    : params_(params), cfg_(cfg), backend_(backend) {
  const DType moment_dtype = params.master().dtype() == DType::F64 ? DType::F64 : DType::F32;
  m_ = Tensor::zeros({params.layout().total()}, moment_dtype, backend.device());
  v_ = Tensor::zeros({params.layout().total()}, moment_dtype, backend.device());
}

double AdamW::grad_norm() { return std::sqrt(backend_.sum_squares({params_.grads()})); }

void AdamW::step(double lr, int64_t step, double norm) {
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
  for (int g = 0; g < 2; ++g) {
    const auto [begin, end] = groups[g];
    if (end == begin) continue;
    Tensor p = params_.master().slice_flat(begin, {end - begin});
    Tensor m = m_.slice_flat(begin, {end - begin});
    Tensor v = v_.slice_flat(begin, {end - begin});
    Tensor grad = params_.grads().slice_flat(begin, {end - begin});
    Tensor copy = params_.compute_is_master() ? Tensor() : params_.compute().slice_flat(begin, {end - begin});
    backend_.adamw_update(p, m, v, grad, copy, hp, g == 0 ? cfg_.weight_decay() : 0.0);
  }
}

std::vector<std::pair<std::string, Tensor>> AdamW::state() const {
  return {{"optim.m", m_.to(Device::cpu())}, {"optim.v", v_.to(Device::cpu())}};
}

void AdamW::load_state(const std::vector<std::pair<std::string, Tensor>>& tensors, const std::string& source) {
  bool have_m = false, have_v = false;
  for (const auto& [name, t] : tensors) {
    Tensor* dst = name == "optim.m" ? &m_ : name == "optim.v" ? &v_ : nullptr;
    if (!dst) fail(source, ": unexpected optimizer tensor '", name, "'");
    if (t.numel() != dst->numel())
      fail(source, ": optimizer tensor '", name, "' has ", t.numel(), " elements, the model has ", dst->numel());
    dst->copy_from(t.dtype() == dst->dtype() ? t : t.cast(dst->dtype()));
    (name == "optim.m" ? have_m : have_v) = true;
  }
  if (!have_m || !have_v) fail(source, ": missing optimizer moments optim.m/optim.v");
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
