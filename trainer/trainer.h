// The training loop: micro-batches with gradient accumulation, clipping and AdamW, the learning-rate schedule,
// periodic validation, sampling, checkpoints and resume, a log line per step, a progress display with ETA,
// and metrics as JSON Lines (step, loss, lr, grad norm, tokens/s, ms/step, MFU, time by phase) and as
// TensorBoard scalars (<out_dir>/tensorboard; written by world rank 0 like the JSON Lines).
//
// Time by phase (metrics "time_ms"): data (host clock), forward, backward, grad_sync (waiting for the gradient
// reduction after the backward), optimizer (norm, clipping, AdamW, ZeRO gather) from markers in the backend's
// stream order (CUDA events); communication (Σ collective durations) and exposed_communication (the part the
// computation waited for) from the CommTimeline (parallel/comm_timeline.h); compute = step − exposed.
//
// Checkpoint safety: a checkpoint is written only from a finite state. Before each save (and at the end of
// run()) the parameters and both AdamW moments are checked on the device (Backend::count_nonfinite, summed
// over all ranks); a non-finite state, loss or gradient norm ends the run with loom::Error naming the last
// good checkpoint: the newest one this trainer wrote or resumed from (with train.spike_guard, the newest one
// whose following step had an accepted loss). resume_from() (and a spike-guard restore) refuses a checkpoint that holds non-finite values.
// train.spike_guard (core/config.proto) restores the last good checkpoint on a non-finite or spiking loss,
// skips batches and lowers the learning rate for a while instead of stopping.
//
// Thread-safety: one thread runs a Trainer. Errors (bad checkpoint, data, write failures) throw loom::Error.
#pragma once
#include <functional>
#include <iosfwd>
#include <memory>
#include <string>
#include <vector>

#include "core/checkpoint.h"
#include "core/config.pb.h"
#include "core/metrics_writer.h"
#include "core/tensorboard_writer.h"
#include "trainer/data_source.h"
#include "trainer/models/model.h"
#include "parallel/mesh.h"
#include "parallel/tensor_parallel.h"
#include "trainer/gradient_sync.h"
#include "trainer/optimizer.h"
#include "trainer/progress.h"
#include "trainer/pruning/distillation.h"
#include "trainer/pruning/engine.h"

namespace loom {

// Watches and steers a run at step boundaries (the controller's worker client is one; tests use others).
// Thread-safety: called from the training thread only; implementations synchronise with their own threads.
class TrainingObserver {
 public:
  struct Control {
    bool checkpoint_now = false;  // write a checkpoint after this step
    bool stop = false;            // write a checkpoint and return from run()
  };
  virtual ~TrainingObserver() = default;
  // After every step, with the step's metrics record (the same object written to metrics.jsonl).
  virtual void on_step(const nlohmann::json& record) {}
  // After on_step(); may block (that is how a pause is done). With several ranks, every rank must return the
  // same decision (the parallel layer agrees on it before the trainer acts).
  virtual Control poll() { return {}; }
};

struct TrainResult {
  int64_t steps_done = 0;          // steps completed when run() returned (the final step count)
  double last_train_loss = 0;
  double last_val_loss = -1;       // -1 when never evaluated
  double last_val_accuracy = -1;   // -1 when never evaluated (or for language models)
  std::string last_checkpoint;     // "" when none was written
  // Pruning runs: the shrunk (dense, smaller) checkpoint written when the latency target was reached, and
  // run() returned there; "" otherwise.
  std::string pruned_checkpoint;
};

// Where a trainer sits in a multi-process job (parallel.data × parallel.tensor ranks). Not owned; both must
// outlive the trainer. A default (null) layout is a single process.
struct TrainerParallelism {
  ProcessMesh* mesh = nullptr;
  const TensorParallelContext* tp = nullptr;  // the context the model was built with
};

class Trainer {
 public:
  // `log` receives the per-step lines; the progress bar goes to stderr when it is a terminal.
  // With a mesh, every rank of the job runs a Trainer (the calls below are then collective, in the same
  // order everywhere): gradients are averaged over the data group (parallel.bucket_mb buckets, or ZeRO-1 with
  // parallel.zero1), the loss and validation are global, and only world rank 0 writes metrics and checkpoints.
  Trainer(const config::RunConfig& cfg, Model& model, DataSource& data, std::ostream& log,
          TrainerParallelism parallel = {});

  // Called every train.sample_every steps and at the end with the step (GPT prints a text sample).
  void set_sampler(std::function<void(int64_t step)> sampler) { sampler_ = std::move(sampler); }
  // Makes this a pruning run (trainer/pruning/engine.h; not owned, must outlive the trainer; call before
  // resume_from): saliency after each step's gradient reduction, masks after the update, the engine's metrics
  // in the log line and metrics.jsonl ("prune"), its decisions in checkpoints; when the target is reached,
  // run() writes the shrunk checkpoint (TrainResult::pruned_checkpoint) and returns.
  void set_pruning(PruningEngine* engine) { pruning_ = engine; }
  // Distils from a teacher (trainer/pruning/distillation.h; not owned, must outlive run()): each micro-batch
  // gets the teacher's logits as soft targets before the model's forward_backward (the teacher's forward is
  // timed as forward). The step's loss is then the distillation mix; validation stays on the labels.
  void set_distiller(Distiller* distiller) { distiller_ = distiller; }
  // Adds an observer (not owned; must outlive run()).
  void add_observer(TrainingObserver* observer) { observers_.push_back(observer); }
  // Replaces how progress is shown (by default: train.progress on a terminal, trainer/progress.h).
  void set_progress_options(const ProgressOptions& options) { progress_.set_options(options); }
  // The run's log as the trainer writes it (the log passed in, a visible progress bar erased first): what else
  // logs during run(), such as the sampler, writes here.
  std::ostream& log() { return log_; }

  // Restores weights, optimizer moments, step and data position from a checkpoint directory, whatever layout
  // (data / tensor sizes, ZeRO) wrote it, and continues its run: the checkpoint's run id (so keep_checkpoints
  // prunes the run's checkpoints), and its metrics.jsonl and TensorBoard files rewound to the step (world rank
  // 0; trainer/run_folder.h), with a {"step", "event", "checkpoint", "time"} line in metrics.jsonl; `event` is
  // "resumed" (a restart) or "fine-tuning" (a pruning run going on with its shrunk model). The data position is
  // kept in global samples: a checkpoint written with D data ranks resumed with D' continues with the next
  // global batch, i.e. the loader's per-rank index becomes index · D / D' (loom::Error when that is not whole;
  // the epoch boundaries agree when the number of training windows / images divides by both D and D').
  void resume_from(const std::string& checkpoint_dir, const std::string& event = "resumed");
  // Trains from the current step to train.max_steps, or only up to `stop_at_step` when that is positive (the
  // learning-rate schedule still follows max_steps; used to stop a job early, e.g. by a controller).
  TrainResult run(int64_t stop_at_step = -1);
  // Mean validation loss (and accuracy) over up to train.val_batches batches.
  EvalStats validate();
  // Writes a checkpoint of the current state (full tensors under the single-process names: weights, and
  // moments as "optim.m.<name>" / "optim.v.<name>"); returns its directory. Throws (writing nothing) when the
  // state is not finite.
  std::string save_checkpoint_now();

  int64_t step() const { return step_; }
  // The last checkpoint known to be good ("" when none): see "Checkpoint safety" above.
  const std::string& last_good_checkpoint() const { return last_good_checkpoint_; }

 private:
  bool writes_files() const { return !parallel_.mesh || parallel_.mesh->world().rank() == 0; }
  int data_size() const { return parallel_.mesh ? parallel_.mesh->data_size() : 1; }
  // Sums `values` over the data group (no-op without one).
  void sum_over_data(std::vector<double>& values);
  // Weights, moments (full tensors) and state of the current step, as checkpoints hold them.
  CheckpointContents checkpoint_contents();
  // Writes `c` as the checkpoint of the current step (world rank 0) and returns its directory.
  std::string write_checkpoint(const CheckpointContents& c);
  // Rank 0's observer decision, on every rank.
  TrainingObserver::Control agree(TrainingObserver::Control control);
  // Sums `values` over every rank of the job (no-op in a single process).
  void sum_over_world(std::vector<double>& values);
  // Throws, naming the last good checkpoint, when a parameter or moment anywhere in the job is NaN or ±Inf.
  // `what` says what was about to happen ("writing the checkpoint of step 10").
  void check_state_finite(const std::string& what);
  // "The last good checkpoint is <dir>." or that there is none: the end of every stopping message.
  std::string last_good_sentence() const;
  // Loads weights and moments (and the step) from a checkpoint, and the data position when `with_data`; returns
  // its state.json. Checks state.json and the finiteness of every tensor first: a bad checkpoint throws and
  // changes nothing.
  nlohmann::json load_state(const std::string& checkpoint_dir, bool with_data);
  // World rank 0: rewinds metrics.jsonl and TensorBoard to the current step after a resume or restore, and
  // records `event` there. Returns how many records were dropped.
  int64_t rewind_outputs(const std::string& event, const std::string& checkpoint);
  // Appends a record to metrics.jsonl (and, unless it is an event, its numbers to TensorBoard), opening the
  // files on first use; no-op on other ranks.
  void write_record(const nlohmann::json& record);
  // Spike guard: whether this step's loss / norm is to be rejected, and the recovery when it is.
  bool is_spike(double loss, double norm) const;
  void recover_from_spike(double loss, double norm);

  config::RunConfig cfg_;
  Model& model_;
  DataSource& data_;
  ProgressReporter progress_;  // around the log passed in
  std::ostream& log_;          // progress_.log()
  TrainerParallelism parallel_;
  std::unique_ptr<GradientSync> sync_;
  std::unique_ptr<AdamW> optimizer_;
  Tensor step_stats_;  // kernels/step_stats.h, on the model's device: the current step's loss and norm
  std::string run_id_;  // in every checkpoint's state.json; a resumed run takes the checkpoint's
  std::unique_ptr<MetricsWriter> metrics_;  // opened on the first record
  std::unique_ptr<TensorBoardWriter> tensorboard_;  // <out_dir>/tensorboard/events.out.tfevents.*
  std::unique_ptr<CommTimeline> own_timeline_;  // when the tensor-parallel context brings none
  CommTimeline* timeline_ = nullptr;
  std::unique_ptr<MarkerPool> phase_markers_;
  WorkMarker* backward_marker_ = nullptr;  // the current micro-step's backward start (null until the hook runs)
  std::function<void(int64_t)> sampler_;
  std::vector<TrainingObserver*> observers_;
  PruningEngine* pruning_ = nullptr;
  Distiller* distiller_ = nullptr;
  nlohmann::json carried_prune_state_;  // state.json "prune" of a resumed checkpoint, written on unchanged
  int64_t widths_recorded_at_ = -1;     // groups_pruned when the widths last went into a record
  int64_t step_ = 0;
  double peak_flops_ = 0;
  std::string last_good_checkpoint_;
  // Spike guard state: a checkpoint written but not yet followed by an accepted step, the recent accepted
  // losses, restores since the last newly confirmed checkpoint, and the step until which lr is scaled.
  std::string pending_checkpoint_;
  std::vector<double> recent_losses_;
  int restores_in_a_row_ = 0;
  int64_t recovery_until_step_ = 0;
};

}  // namespace loom
