#include "trainer/trainer.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iomanip>
#include <ostream>

#include "core/allocator.h"
#include "core/checkpoint.h"
#include "core/config.h"
#include "core/host_memory.h"
#include "core/tensorboard_writer.h"
#include "parallel/host_collectives.h"
#include "trainer/mfu.h"
#include "trainer/run_folder.h"

namespace loom {
namespace {

using Clock = std::chrono::steady_clock;
double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

double unix_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// A pruning run's current widths per block, as the metrics record carries them.
nlohmann::json widths_json(const ModelShape& shape) {
  nlohmann::json widths = {{"embedding", shape.d_model}};
  for (const char* axis : {"heads", "qk_dim", "v_dim", "mlp"}) widths[axis] = nlohmann::json::array();
  for (const BlockWidths& b : shape.blocks) {
    widths["heads"].push_back(b.heads);
    widths["qk_dim"].push_back(b.qk_dim);
    widths["v_dim"].push_back(b.v_dim);
    widths["mlp"].push_back(b.mlp_dim);
  }
  return widths;
}

// Rescales a data position {"train": {"epoch", "index"}} saved with `from` data ranks to `to` ranks: the index
// counts each rank's samples, and the ranks together have consumed index · from samples of the epoch.
nlohmann::json rescale_data_state(nlohmann::json state, int from, int to, const std::string& source) {
  if (from == to) return state;
  if (!state.contains("train") || !state["train"].contains("index"))
    fail(source, ": the data position has no train.index to convert from ", from, " to ", to, " data ranks");
  // Bounded so that index · from cannot overflow (from is at most 2^20).
  const int64_t global = state_integer(state["train"], "index", 0, int64_t{1} << 40, source + ": data.train") * from;
  if (global % to != 0)
    fail(source, ": ", global, " samples consumed in this epoch by ", from, " data ranks cannot be split evenly over ",
         to, " data ranks");
  state["train"]["index"] = global / to;
  return state;
}

// The step record's numbers as TensorBoard scalars: train/{loss,lr,grad_norm}, val/{loss,accuracy},
// time_ms/<phase>, and perf/<name> for the throughput figures.
std::vector<std::pair<std::string, double>> tensorboard_scalars(const nlohmann::json& record) {
  std::vector<std::pair<std::string, double>> out;
  for (const auto& [key, value] : record.items()) {
    if (key == "step" || key == "time") continue;
    if (value.is_object()) {
      for (const auto& [sub, v] : value.items())
        if (v.is_number()) out.emplace_back(key + "/" + sub, v.get<double>());
      continue;
    }
    if (!value.is_number()) continue;
    if (key.rfind("val_", 0) == 0)
      out.emplace_back("val/" + key.substr(4), value.get<double>());
    else if (key == "loss" || key == "lr" || key == "grad_norm")
      out.emplace_back("train/" + key, value.get<double>());
    else
      out.emplace_back("perf/" + key, value.get<double>());
  }
  return out;
}

}  // namespace

Trainer::Trainer(const config::RunConfig& cfg, Model& model, DataSource& data, std::ostream& log,
                 TrainerParallelism parallel)
    : cfg_(cfg),
      model_(model),
      data_(data),
      progress_(log, terminal_progress_options(cfg.train().progress(), cfg.train().progress_every())),
      log_(progress_.log()),
      parallel_(parallel),
      run_id_(new_run_id()) {
  const auto& par = cfg_.parallel();
  sync_ = std::make_unique<GradientSync>(model.params(), model.backend(),
                                         parallel_.mesh ? &parallel_.mesh->data_group() : nullptr, parallel_.tp,
                                         static_cast<int64_t>(par.bucket_mb()) << 20, par.zero1());
  optimizer_ = std::make_unique<AdamW>(model.params(), cfg.optim(), model.backend(), sync_->owned_ranges(),
                                       sync_->shard_size());
  step_stats_ = Tensor::empty({kStepStatsSize}, DType::F64, model.backend().device());
  model_.set_grad_ready_hook([this](const std::string& prefix) { sync_->on_grads_ready(prefix); });
  // Communication is timed in the model's tensor-parallel context's timeline when it has one (so region
  // operations and gradient buckets add up in one account), else in the trainer's own.
  if (parallel_.tp && parallel_.tp->timeline) {
    timeline_ = parallel_.tp->timeline;
  } else {
    own_timeline_ = std::make_unique<CommTimeline>(model.backend());
    timeline_ = own_timeline_.get();
  }
  sync_->set_timeline(timeline_);
  phase_markers_ = std::make_unique<MarkerPool>(model.backend());
  // Inside a training step's forward_backward (the only caller) the backward's start gets a marker.
  model_.set_backward_start_hook([this] {
    backward_marker_ = &phase_markers_->next();
    backward_marker_->record();
  });
  if (cfg_.train().spike_guard().enabled() && cfg_.train().checkpoint_every() < 0)
    fail("train.spike_guard restores checkpoints, but train.checkpoint_every is -1 (never)");
  if (cfg_.train().has_peak_flops())
    peak_flops_ = cfg_.train().peak_flops();
  else if (model.backend().device().is_cpu())
    peak_flops_ = cpu_peak_flops();
  else
    peak_flops_ = cuda_peak_flops(model.backend().name());
}

void Trainer::sum_over_data(std::vector<double>& values) {
  if (data_size() == 1) return;
  Tensor t = Tensor::from_vector(std::vector<float>(values.size()), {static_cast<int64_t>(values.size())}, DType::F64);
  std::copy(values.begin(), values.end(), t.data<double>());
  all_reduce_host(parallel_.mesh->data_group(), t, ReduceOp::Sum);
  std::copy(t.data<double>(), t.data<double>() + values.size(), values.begin());
}

void Trainer::sum_over_world(std::vector<double>& values) {
  if (!parallel_.mesh || parallel_.mesh->world().size() == 1) return;
  Tensor t = Tensor::zeros({static_cast<int64_t>(values.size())}, DType::F64);
  std::copy(values.begin(), values.end(), t.data<double>());
  all_reduce_host(parallel_.mesh->world(), t, ReduceOp::Sum);
  std::copy(t.data<double>(), t.data<double>() + values.size(), values.begin());
}

std::string Trainer::last_good_sentence() const {
  if (last_good_checkpoint_.empty()) return "No good checkpoint was written or resumed from by this run.";
  return "The last good checkpoint is " + last_good_checkpoint_ + " (resume with train.resume=" +
         last_good_checkpoint_ + ").";
}

namespace {

// NaN/Inf counts of (parameters, first moment, second moment) over the whole job; empty when all are finite.
// Every rank counts its own shards on its device (one fused reduction), and every rank gets the same answer.
std::vector<int64_t> nonfinite_counts(Backend& backend, const std::vector<Tensor>& parts,
                                      const std::function<void(std::vector<double>&)>& sum_over_world) {
  std::vector<double> total = {static_cast<double>(backend.count_nonfinite(parts))};
  sum_over_world(total);
  if (total[0] == 0) return {};
  std::vector<double> by_part;
  for (const Tensor& part : parts) by_part.push_back(static_cast<double>(backend.count_nonfinite({part})));
  sum_over_world(by_part);
  return {static_cast<int64_t>(by_part[0]), static_cast<int64_t>(by_part[1]), static_cast<int64_t>(by_part[2])};
}

std::string describe_counts(const std::vector<int64_t>& c) {
  return detail::concat(c[0], " parameter, ", c[1], " first-moment and ", c[2], " second-moment values are NaN or Inf");
}

// The same counts for a checkpoint read from disk (host tensors, full on every rank, so every rank decides
// alike without communicating).
std::vector<int64_t> nonfinite_counts(const CheckpointContents& c) {
  std::vector<Tensor> parts[3];
  for (const auto& [name, t] : c.model)
    if (is_floating(t.dtype())) parts[0].push_back(t);
  for (const auto& [name, t] : c.optimizer) {
    if (!is_floating(t.dtype())) continue;
    if (name.rfind("optim.m.", 0) == 0) parts[1].push_back(t);
    if (name.rfind("optim.v.", 0) == 0) parts[2].push_back(t);
  }
  auto cpu = make_backend(Device::cpu());
  std::vector<int64_t> counts;
  for (const auto& part : parts) counts.push_back(cpu->count_nonfinite(part));
  if (counts[0] + counts[1] + counts[2] == 0) return {};
  return counts;
}

}  // namespace

void Trainer::check_state_finite(const std::string& what) {
  const std::vector<int64_t> counts =
      nonfinite_counts(model_.backend(),
                       {model_.params().master(), optimizer_->first_moment(), optimizer_->second_moment()},
                       [this](std::vector<double>& v) { sum_over_world(v); });
  if (counts.empty()) return;
  fail_job_wide("step ", step_, ": the training state is not finite (", describe_counts(counts), "); stopped before ",
                what, ". ", last_good_sentence());
}

TrainingObserver::Control Trainer::agree(TrainingObserver::Control control) {
  if (!parallel_.mesh || parallel_.mesh->world().size() == 1) return control;
  Tensor t = Tensor::from_vector({control.checkpoint_now ? 1.f : 0.f, control.stop ? 1.f : 0.f}, {2}, DType::F64);
  broadcast_host(parallel_.mesh->world(), t, 0);
  return {t.item(0) != 0, t.item(1) != 0};
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
  // Each data rank evaluated its share of the validation set.
  std::vector<double> sums = {total.loss_sum, static_cast<double>(total.count), static_cast<double>(total.correct)};
  sum_over_data(sums);
  total.loss_sum = sums[0];
  total.count = static_cast<int64_t>(sums[1]);
  total.correct = static_cast<int64_t>(sums[2]);
  return total;
}

CheckpointContents Trainer::checkpoint_contents() {
  // Every rank takes part in gathering the full tensors (tensor shards, ZeRO moment shards); world rank 0
  // writes. The data position is the same on every data rank (they step in lockstep).
  const ParameterLayout& layout = model_.params().layout();
  CheckpointContents c;
  c.model = full_tensors_from_arena(layout, model_.params().master(), parallel_.tp, "");
  for (const auto& [prefix, moment] : {std::pair<std::string, Tensor*>{"optim.m.", &optimizer_->first_moment()},
                                       std::pair<std::string, Tensor*>{"optim.v.", &optimizer_->second_moment()}}) {
    const Tensor arena = sync_->zero1() ? sync_->all_gather_shards(*moment) : *moment;
    for (auto& named : full_tensors_from_arena(layout, arena, parallel_.tp, prefix)) c.optimizer.push_back(named);
  }
  c.state["step"] = step_;
  c.state["data"] = data_.state();
  c.state["data_parallel_size"] = data_size();
  c.state["config_yaml"] = run_config_to_yaml(cfg_);
  c.state["run_id"] = run_id_;
  if (pruning_)
    c.state["prune"] = pruning_->state();
  else if (!carried_prune_state_.is_null())
    c.state["prune"] = carried_prune_state_;
  c.model_shape = model_shape_to_json(model_.shape());  // model.json: resume and export build this shape
  return c;
}

std::string Trainer::write_checkpoint(const CheckpointContents& c) {
  check_state_finite(detail::concat("writing the checkpoint of step ", step_));
  const std::string dir = checkpoint_dir(cfg_.train().out_dir(), step_);
  // Without the spike guard a checkpoint of a finite state is good at once; with it, only after the next step's
  // loss is accepted (until then the previous good one is kept from pruning).
  const bool guarded = cfg_.train().spike_guard().enabled();
  if (writes_files()) {
    save_checkpoint(cfg_.train().out_dir(), step_, c);
    prune_checkpoints(cfg_.train().out_dir(), cfg_.train().keep_checkpoints(), run_id_,
                      guarded ? last_good_checkpoint_ : dir);
  }
  if (parallel_.mesh) parallel_.mesh->world().barrier();  // the checkpoint exists for every rank on return
  (guarded ? pending_checkpoint_ : last_good_checkpoint_) = dir;
  return dir;
}

std::string Trainer::save_checkpoint_now() { return write_checkpoint(checkpoint_contents()); }

nlohmann::json Trainer::load_state(const std::string& dir, bool with_data) {
  CheckpointContents c = load_checkpoint(dir);
  // The state's fields first, so a bad state.json changes nothing.
  const std::string state_file = dir + "/state.json";
  const int64_t step = state_integer(c.state, "step", 0, cfg_.train().max_steps(), state_file + " (train.max_steps)");
  if (!c.state.contains("data")) fail(state_file, ": missing \"data\"");
  const int saved_data_size = c.state.contains("data_parallel_size")
                                  ? static_cast<int>(state_integer(c.state, "data_parallel_size", 1, 1 << 20, state_file))
                                  : 1;
  const nlohmann::json data_state =
      with_data ? rescale_data_state(c.state["data"], saved_data_size, data_size(), state_file) : nlohmann::json();
  if (const std::vector<int64_t> counts = nonfinite_counts(c); !counts.empty())
    fail(dir, ": the checkpoint is not finite (", describe_counts(counts), "); not loading it");
  ParameterStore& params = model_.params();
  const ParameterLayout& layout = params.layout();
  params.master().copy_from(
      arena_from_full_tensors(layout, c.model, parallel_.tp, "", params.master().dtype(), dir + "/model.safetensors"));
  params.sync_compute_from_master();
  for (const auto& [prefix, moment] : {std::pair<std::string, Tensor*>{"optim.m.", &optimizer_->first_moment()},
                                       std::pair<std::string, Tensor*>{"optim.v.", &optimizer_->second_moment()}}) {
    const Tensor arena = arena_from_full_tensors(layout, c.optimizer, parallel_.tp, prefix, moment->dtype(),
                                                 dir + "/optimizer.safetensors");
    moment->zero_();
    for (const ArenaRange& r : sync_->owned_ranges())
      if (r.length > 0) moment->slice_flat(r.offset, {r.length}).copy_from(arena.slice_flat(r.begin, {r.length}));
  }
  step_ = step;
  if (with_data) data_.restore(data_state);
  // A pruning run resumed while masking takes up its decisions (and masks) again.
  // A pruned model's checkpoints keep the pruning record, so resuming them fine-tunes instead of pruning again.
  if (pruning_ && c.state.contains("prune"))
    pruning_->restore(c.state["prune"], optimizer_->first_moment(), optimizer_->second_moment(), state_file);
  else if (c.state.contains("prune"))
    carried_prune_state_ = c.state["prune"];
  return c.state;
}

void Trainer::resume_from(const std::string& dir, const std::string& event) {
  const nlohmann::json state = load_state(dir, /*with_data=*/true);
  // The run goes on: its checkpoints keep its id, so keep_checkpoints prunes them and no other run's.
  if (state.contains("run_id") && state["run_id"].is_string()) run_id_ = state["run_id"].get<std::string>();
  last_good_checkpoint_ = dir;
  log_ << "resumed from " << dir << " at step " << step_;
  if (const int64_t dropped = rewind_outputs(event, dir))
    log_ << " (" << dropped << " records after it dropped from metrics.jsonl and TensorBoard)";
  log_ << std::endl;
}

int64_t Trainer::rewind_outputs(const std::string& event, const std::string& checkpoint) {
  if (!writes_files()) return 0;
  metrics_.reset();
  tensorboard_.reset();
  const int64_t dropped = rewind_run_outputs(cfg_.train().out_dir(), step_);
  write_record({{"step", step_}, {"event", event}, {"checkpoint", checkpoint}, {"time", unix_seconds()}});
  return dropped;
}

void Trainer::write_record(const nlohmann::json& record) {
  if (!writes_files()) return;
  const std::string& out_dir = cfg_.train().out_dir();
  if (!metrics_) metrics_ = std::make_unique<MetricsWriter>(out_dir + "/metrics.jsonl");
  metrics_->write(record);
  if (record.contains("event")) return;  // an event is no step's scalars
  if (!tensorboard_) tensorboard_ = std::make_unique<TensorBoardWriter>(out_dir + "/tensorboard");
  tensorboard_->write_scalars(record.at("step").get<int64_t>(), tensorboard_scalars(record));
}

bool Trainer::is_spike(double loss, double norm) const {
  if (!std::isfinite(loss) || !std::isfinite(norm)) return true;
  if (recent_losses_.empty()) return false;
  std::vector<double> sorted = recent_losses_;
  std::sort(sorted.begin(), sorted.end());
  const double median = sorted[sorted.size() / 2];
  return loss > cfg_.train().spike_guard().spike_factor() * median;
}

void Trainer::recover_from_spike(double loss, double norm) {
  const config::SpikeGuardConfig& g = cfg_.train().spike_guard();
  const int64_t bad_step = step_ + 1;
  const std::string why = std::isfinite(loss) && std::isfinite(norm)
                              ? detail::concat("loss ", loss, " is a spike (above ", g.spike_factor(),
                                               " x the median of the last ", recent_losses_.size(), " losses)")
                              : detail::concat("loss ", loss, " / grad norm ", norm, " is not finite");
  pending_checkpoint_.clear();  // the step after it spiked: it is not good
  if (last_good_checkpoint_.empty())
    fail_job_wide("step ", bad_step, ": ", why, "; no good checkpoint to restore, stopping");
  if (restores_in_a_row_ >= g.max_restores())
    fail_job_wide("step ", bad_step, ": ", why, " after ", restores_in_a_row_,
                  " restores without reaching a new good checkpoint (train.spike_guard.max_restores); stopping. ",
                  last_good_sentence());
  ++restores_in_a_row_;
  load_state(last_good_checkpoint_, /*with_data=*/false);
  rewind_outputs("restored", last_good_checkpoint_);  // the steps after the checkpoint are trained again
  // The data position stays where the spike left it (the batches since the checkpoint are not seen again);
  // each data rank skips its share of `skip_batches` more global batches.
  const int64_t skip = static_cast<int64_t>(g.skip_batches()) * cfg_.train().grad_accum_steps();
  for (int64_t i = 0; i < skip; ++i) data_.next_train(model_.backend().device());
  recovery_until_step_ = step_ + g.recovery_steps();
  log_ << "step " << bad_step << ": " << why << "; restored " << last_good_checkpoint_ << " (step " << step_
       << "), skipped " << g.skip_batches() << " more batches, lr x " << g.lr_scale() << " for "
       << g.recovery_steps() << " steps" << std::endl;
}

TrainResult Trainer::run(int64_t stop_at_step) {
  const auto& t = cfg_.train();
  const int64_t max_steps = t.max_steps(), accum = t.grad_accum_steps();
  const int64_t end_step = stop_at_step > 0 ? std::min<int64_t>(stop_at_step, max_steps) : max_steps;
  LOOM_CHECK(accum >= 1, "train.grad_accum_steps must be >= 1, got ", accum);
  const SampleFlops flops = model_.flops_per_sample();
  Backend& be = model_.backend();
  TrainResult result;
  const auto run_start = Clock::now();
  const int64_t first_step = step_;
  std::string last_checkpoint;
  const config::SpikeGuardConfig& guard = t.spike_guard();
  // The guard needs a state to go back to: the initial one, when nothing was resumed or written yet.
  if (guard.enabled() && step_ < end_step && last_good_checkpoint_.empty() && pending_checkpoint_.empty())
    last_checkpoint = save_checkpoint_now();

  while (step_ < end_step) {
    const auto step_start = Clock::now();
    // Phases are timed with markers in the backend's stream order (CUDA events), so timing adds no
    // synchronisation; data loading is host work and timed on the host.
    phase_markers_->reset();
    timeline_->collect();  // drops what validation, sampling or checkpoints recorded since the last step
    double data_ms = 0, forward_ms = 0, backward_ms = 0;
    WorkMarker* micro_end = nullptr;
    struct MicroMarks {
      WorkMarker *start, *backward, *end;  // backward is null for a model without the hook (all forward)
    };
    std::vector<MicroMarks> micro_marks;  // read after the step's synchronize (reading waits for the GPU)
    be.zero(model_.params().grads());
    // The step's loss and gradient norm stay on the device (step_stats_, kernels/step_stats.h) until the one
    // host read at the step's end: the micro-steps add their losses there, the gradient sync adds the norm's
    // squares, and AdamW clips (or skips a non-finite step) from them on the device.
    be.zero(step_stats_);
    Tensor loss_total = step_stats_.slice_flat(kStepLoss, {1});
    int64_t samples = 0;
    for (int64_t micro = 0; micro < accum; ++micro) {
      const auto d0 = Clock::now();
      Batch batch = data_.next_train(be.device());
      data_ms += ms_since(d0);
      sync_->arm(/*reduce=*/micro == accum - 1);  // data-parallel reduction on the last micro-step only
      WorkMarker& micro_start = phase_markers_->next();
      micro_start.record();
      if (distiller_) distiller_->attach(batch);
      backward_marker_ = nullptr;
      model_.forward_backward_into(batch, 1.0 / accum, loss_total, 1.0 / accum);
      micro_end = &phase_markers_->next();
      micro_end->record();
      micro_marks.push_back({&micro_start, backward_marker_, micro_end});
      samples += batch.inputs.dim(0);
    }
    sync_->finish();
    // Every data rank holds the averaged gradients now: saliency, then the masked positions' gradients zeroed.
    if (pruning_) pruning_->gradients_ready(step_ + 1);
    WorkMarker& synced = phase_markers_->next();
    synced.record();
    // The loss summed over the data ranks and the squared norm, still on the device.
    sync_->reduce_step_stats(step_stats_);
    // Every data rank's micro-batches have the same size (data.batch_size is per rank).
    samples *= data_size();
    const double lr =
        learning_rate(cfg_.optim(), step_, max_steps) * (step_ < recovery_until_step_ ? guard.lr_scale() : 1.0);
    // The loss of the global batch: the mean of the data ranks' means (equal micro-batch sizes).
    double loss = 0, norm = 0;
    const auto read_step_stats = [&] {
      const std::vector<double> stats = be.synchronize_and_read(step_stats_);
      loss = stats[kStepLoss] / data_size();
      norm = step_grad_norm(stats.data());
    };
    if (guard.enabled()) {
      // The spike guard decides on the host whether this step updates at all (a spike restores a checkpoint
      // instead), so it reads the loss and the norm before the update: one more host read per step, and only
      // with the guard on. The update below decides again on the device, from the same numbers.
      read_step_stats();
      if (is_spike(loss, norm)) {
        recover_from_spike(loss, norm);
        continue;
      }
      recent_losses_.push_back(loss);
      if (recent_losses_.size() > static_cast<size_t>(guard.window())) recent_losses_.erase(recent_losses_.begin());
      if (!pending_checkpoint_.empty()) {
        last_good_checkpoint_ = pending_checkpoint_;  // the step after it was accepted
        pending_checkpoint_.clear();
        restores_in_a_row_ = 0;
      }
    }
    // Clipped on the device; a non-finite loss or norm makes the update change nothing there.
    optimizer_->step(lr, step_ + 1, step_stats_, sync_->zero1() ? sync_->shard_grads() : Tensor());
    sync_->all_gather_parameters();
    WorkMarker& stepped = phase_markers_->next();
    stepped.record();
    // The step's one host read (the guard's read above already waited for the statistics).
    if (guard.enabled())
      be.synchronize();
    else
      read_step_stats();
    if (!std::isfinite(loss) || !std::isfinite(norm))
      fail_job_wide("step ", step_ + 1, ": loss ", loss, " / grad norm ", norm,
                    " is not finite; stopped before the update. ", last_good_sentence());
    const bool pruned =
        pruning_ && pruning_->after_update(step_ + 1, optimizer_->first_moment(), optimizer_->second_moment());
    if (pruning_) be.synchronize();  // a pruning step's masks count in its time
    for (const MicroMarks& m : micro_marks) {
      forward_ms += (m.backward ? m.backward : m.end)->ms_since(*m.start);
      if (m.backward) backward_ms += m.end->ms_since(*m.backward);
    }
    const double grad_sync_ms = synced.ms_since(*micro_end);
    const double optim_ms = stepped.ms_since(synced);
    const CommTimeline::Totals comm = timeline_->collect();
    ++step_;
    const double step_ms = ms_since(step_start);
    const double tokens_per_s = samples * model_.tokens_per_sample() / (step_ms / 1e3);
    const double model_flops_per_s = samples * flops.model / (step_ms / 1e3);
    // Throughput counts the global batch, so the peak is that of every device of the job.
    const int devices = parallel_.mesh ? parallel_.mesh->world().size() : 1;
    const double mfu = peak_flops_ > 0 ? model_flops_per_s / (peak_flops_ * devices) : 0;
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
                          {"time_ms",
                           {{"data", data_ms},
                            {"forward", forward_ms},
                            {"backward", backward_ms},
                            {"forward_backward", forward_ms + backward_ms},
                            {"grad_sync", grad_sync_ms},
                            {"optimizer", optim_ms},
                            {"communication", comm.communication_ms},
                            {"exposed_communication", comm.exposed_ms},
                            {"compute", step_ms - comm.exposed_ms}}},
                          {"memory",
                           {{"device_bytes", allocator_for(be.device()).bytes_in_use()},
                            {"device_peak_bytes", allocator_for(be.device()).peak_bytes_in_use()},
                            {"host_rss_bytes", host_rss_bytes()}}},
                          {"time", unix_seconds()}};
    if (pruning_) {
      rec["prune"] = pruning_->metrics();
      // The widths, whenever they changed (and in the first record): the dashboard draws them per block.
      if (pruning_->groups_pruned() != widths_recorded_at_) {
        rec["prune"]["widths"] = widths_json(pruning_->pruned_shape());
        widths_recorded_at_ = pruning_->groups_pruned();
      }
    }
    if (t.log_every() > 0 && (step_ % t.log_every() == 0 || step_ == max_steps || pruned)) {
      char line[256];
      std::snprintf(line, sizeof line,
                    "step %6lld/%lld | loss %.4f | lr %.2e | norm %.3f | %.0f tok/s | %.1f ms | MFU %.2f%%",
                    static_cast<long long>(step_), static_cast<long long>(max_steps), loss, lr, norm, tokens_per_s,
                    step_ms, 100 * mfu);
      log_ << line;
      if (pruning_) {
        std::snprintf(line, sizeof line, " | params %lld | %.3g FLOPs/sample | predicted %.3f ms (%.3f of %.3f)",
                      static_cast<long long>(pruning_->parameters()), pruning_->flops(), pruning_->predicted_ms(),
                      pruning_->predicted_ms() / pruning_->original_ms(), pruning_->original_ms());
        log_ << line;
      }
      log_ << std::endl;
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
    if (pruned) {
      // The target is reached: the dense smaller model (weights, moments, shape sliced) is the checkpoint of
      // this step; fine-tuning resumes from it (trainer/run.cc).
      CheckpointContents c = shrink_checkpoint(checkpoint_contents(), model_.shape(), pruning_->selection());
      c.state["prune"] = {{"pruned", true}, {"kept", pruning_->state()["kept"]}, {"metrics", pruning_->metrics()}};
      last_checkpoint = write_checkpoint(c);
      result.pruned_checkpoint = last_checkpoint;
      rec["checkpoint"] = last_checkpoint;
      log_ << "step " << step_ << " | pruning target reached: dense pruned model in " << last_checkpoint << std::endl;
      write_record(rec);
      break;
    }
    if ((t.checkpoint_every() > 0 && step_ % t.checkpoint_every() == 0) || (last && t.checkpoint_every() >= 0)) {
      last_checkpoint = save_checkpoint_now();
      rec["checkpoint"] = last_checkpoint;
    }
    write_record(rec);
    TrainingObserver::Control control;
    for (TrainingObserver* o : observers_) {
      o->on_step(rec);
      const TrainingObserver::Control c = o->poll();
      control.checkpoint_now |= c.checkpoint_now;
      control.stop |= c.stop;
    }
    control = agree(control);
    if ((control.checkpoint_now || control.stop) && last_checkpoint != checkpoint_dir(t.out_dir(), step_))
      last_checkpoint = save_checkpoint_now();
    if (control.stop) {
      log_ << "stopped at step " << step_ << " on request" << std::endl;
      break;
    }
    progress_.step_done(step_, first_step, end_step, ms_since(run_start) / 1e3);
  }
  progress_.finish();
  // The run ends with exit status 0 only from a finite state, whether or not the last step was saved.
  check_state_finite(detail::concat("finishing at step ", step_));
  result.steps_done = step_;
  result.last_checkpoint = last_checkpoint;
  return result;
}

}  // namespace loom
