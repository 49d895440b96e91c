#include "trainer/trainer.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <iomanip>
#include <ostream>

#include "core/checkpoint.h"
#include "core/config.h"
#include "trainer/mfu.h"

namespace loom {
namespace {

using Clock = std::chrono::steady_clock;
double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

std::string format_duration(double seconds) {
  const int64_t s = static_cast<int64_t>(seconds + 0.5);
  char buf[32];
  if (s >= 3600)
    std::snprintf(buf, sizeof buf, "%lldh%02lldm", static_cast<long long>(s / 3600), static_cast<long long>(s / 60 % 60));
  else
    std::snprintf(buf, sizeof buf, "%lldm%02llds", static_cast<long long>(s / 60), static_cast<long long>(s % 60));
  return buf;
}

// A one-line progress bar redrawn in place on a terminal: "[#####.....] 50% 100/200 ETA 1m23s".
void draw_progress(int64_t done, int64_t total, double eta_seconds) {
  const int width = 30;
  const int filled = total ? static_cast<int>(width * done / total) : width;
  std::fprintf(stderr, "\r[%s%s] %3d%% %lld/%lld ETA %s ", std::string(filled, '#').c_str(),
               std::string(width - filled, '.').c_str(), total ? static_cast<int>(100 * done / total) : 100,
               static_cast<long long>(done), static_cast<long long>(total), format_duration(eta_seconds).c_str());
  if (done == total) std::fputc('\n', stderr);
  std::fflush(stderr);
}

}  // namespace

Trainer::Trainer(const config::RunConfig& cfg, Model& model, DataSource& data, std::ostream& log)
    : cfg_(cfg), model_(model), data_(data), log_(log), optimizer_(model.params(), cfg.optim(), model.backend()) {
  metrics_ = std::make_unique<MetricsWriter>(cfg_.train().out_dir() + "/metrics.jsonl");
  if (cfg_.train().has_peak_flops())
    peak_flops_ = cfg_.train().peak_flops();
  else if (model.backend().device().is_cpu())
    peak_flops_ = cpu_peak_flops();
  else
    peak_flops_ = cuda_peak_flops(model.backend().name());
}

EvalStats Trainer::validate() {
  EvalStats total;
  data_.begin_val();
  Batch batch;
  for (int i = 0; i < cfg_.train().val_batches() && data_.next_val(batch, model_.backend().device()); ++i) {
    const EvalStats s = model_.evaluate(batch);
    total.loss_sum += s.loss_sum;
    total.count += s.count;
    total.correct += s.correct;
    total.classifies = s.classifies;
  }
  return total;
}

std::string Trainer::save_checkpoint_now() {
  CheckpointContents c;
  c.model = model_.params().named_master_weights();
  c.optimizer = optimizer_.state();
  c.state["step"] = step_;
  c.state["data"] = data_.state();
  c.state["config_yaml"] = run_config_to_yaml(cfg_);
  save_checkpoint(cfg_.train().out_dir(), step_, c);
  const std::string dir = checkpoint_dir(cfg_.train().out_dir(), step_);
  prune_checkpoints(cfg_.train().out_dir(), cfg_.train().keep_checkpoints());
  return dir;
}

void Trainer::resume_from(const std::string& dir) {
  CheckpointContents c = load_checkpoint(dir);
  model_.params().load_named(c.model, dir + "/model.safetensors");
  optimizer_.load_state(c.optimizer, dir + "/optimizer.safetensors");
  if (!c.state.contains("step") || !c.state.contains("data"))
    fail(dir, "/state.json: missing \"step\" or \"data\"");
  step_ = c.state["step"].get<int64_t>();
  data_.restore(c.state["data"]);
  log_ << "resumed from " << dir << " at step " << step_ << "\n";
}

TrainResult Trainer::run(int64_t stop_at_step) {
  const auto& t = cfg_.train();
  const int64_t max_steps = t.max_steps(), accum = t.grad_accum_steps();
  const int64_t end_step = stop_at_step > 0 ? std::min<int64_t>(stop_at_step, max_steps) : max_steps;
  LOOM_CHECK(accum >= 1, "train.grad_accum_steps must be >= 1, got ", accum);
  const SampleFlops flops = model_.flops_per_sample();
  const bool show_progress = t.progress() && isatty(STDERR_FILENO);
  Backend& be = model_.backend();
  TrainResult result;
  const auto run_start = Clock::now();
  const int64_t first_step = step_;
  std::string last_checkpoint;

  while (step_ < end_step) {
    const auto step_start = Clock::now();
    double data_ms = 0, compute_ms = 0;
    be.zero(model_.params().grads());
    double loss = 0;
    int64_t samples = 0;
    for (int64_t micro = 0; micro < accum; ++micro) {
      const auto d0 = Clock::now();
      Batch batch = data_.next_train(be.device());
      data_ms += ms_since(d0);
      const auto c0 = Clock::now();
      loss += model_.forward_backward(batch, 1.0 / accum) / accum;
      compute_ms += ms_since(c0);
      samples += batch.inputs.dim(0);
    }
    const auto o0 = Clock::now();
    const double lr = learning_rate(cfg_.optim(), step_, max_steps);
    const double norm = optimizer_.grad_norm();
    LOOM_CHECK(std::isfinite(loss) && std::isfinite(norm), "step ", step_ + 1, ": loss ", loss, " / grad norm ",
               norm, " is not finite; stopping (the last checkpoint is intact)");
    optimizer_.step(lr, step_ + 1, norm);
    be.synchronize();
    const double optim_ms = ms_since(o0);
    ++step_;
    const double step_ms = ms_since(step_start);
    const double tokens_per_s = samples * model_.tokens_per_sample() / (step_ms / 1e3);
    const double model_flops_per_s = samples * flops.model / (step_ms / 1e3);
    const double mfu = peak_flops_ > 0 ? model_flops_per_s / peak_flops_ : 0;
    result.last_train_loss = loss;

    nlohmann::json rec = {{"step", step_},
                          {"loss", loss},
                          {"lr", lr},
                          {"grad_norm", norm},
                          {"tokens_per_s", tokens_per_s},
                          {"samples_per_s", samples / (step_ms / 1e3)},
                          {"ms_per_step", step_ms},
                          {"model_flops_per_s", model_flops_per_s},
                          {"hardware_flops_per_s", samples * flops.hardware / (step_ms / 1e3)},
                          {"peak_flops", peak_flops_},
                          {"mfu", mfu},
                          {"time_ms", {{"data", data_ms}, {"forward_backward", compute_ms}, {"optimizer", optim_ms}}}};
    if (t.log_every() > 0 && (step_ % t.log_every() == 0 || step_ == max_steps)) {
      if (show_progress) std::fprintf(stderr, "\r%*s\r", 80, "");
      char line[256];
      std::snprintf(line, sizeof line,
                    "step %6lld/%lld | loss %.4f | lr %.2e | norm %.3f | %.0f tok/s | %.1f ms | MFU %.2f%%",
                    static_cast<long long>(step_), static_cast<long long>(max_steps), loss, lr, norm, tokens_per_s,
                    step_ms, 100 * mfu);
      log_ << line << std::endl;
    }
    const bool last = step_ == max_steps;
    if ((t.val_every() > 0 && step_ % t.val_every() == 0) || last) {
      const EvalStats v = validate();
      if (v.count > 0) {
        result.last_val_loss = v.loss_sum / v.count;
        rec["val_loss"] = result.last_val_loss;
        if (v.classifies) {
          result.last_val_accuracy = static_cast<double>(v.correct) / v.count;
          rec["val_accuracy"] = result.last_val_accuracy;
        }
        log_ << "step " << step_ << " | val loss " << std::fixed << std::setprecision(4) << result.last_val_loss
             << std::defaultfloat;
        if (result.last_val_accuracy >= 0) log_ << " | val accuracy " << std::setprecision(4) << result.last_val_accuracy;
        log_ << std::endl;
      }
    }
    if (sampler_ && ((t.sample_every() > 0 && step_ % t.sample_every() == 0) || last)) sampler_(step_);
    if ((t.checkpoint_every() > 0 && step_ % t.checkpoint_every() == 0) || last) {
      last_checkpoint = save_checkpoint_now();
      rec["checkpoint"] = last_checkpoint;
    }
    metrics_->write(rec);
    TrainingObserver::Control control;
    for (TrainingObserver* o : observers_) {
      o->on_step(rec);
      const TrainingObserver::Control c = o->poll();
      control.checkpoint_now |= c.checkpoint_now;
      control.stop |= c.stop;
    }
    if ((control.checkpoint_now || control.stop) && last_checkpoint != checkpoint_dir(t.out_dir(), step_))
      last_checkpoint = save_checkpoint_now();
    if (control.stop) {
      log_ << "stopped at step " << step_ << " on request" << std::endl;
      break;
    }
    if (show_progress) {
      const double elapsed = ms_since(run_start) / 1e3;
      const double per_step = elapsed / static_cast<double>(step_ - first_step);
      draw_progress(step_, end_step, per_step * static_cast<double>(end_step - step_));
    }
  }
  result.steps_done = step_;
  result.last_checkpoint = last_checkpoint;
  return result;
}

}  // namespace loom
