// No run writes a broken checkpoint (issue 12, finding 3): the finiteness op (CPU twin), checkpoints written
// only from a finite state, stopping messages that name the last good checkpoint, resume refusing a
// non-finite checkpoint or a bad state.json, and the loss-spike guard (train.spike_guard).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <set>
#include <sstream>

#include "core/checkpoint.h"
#include "core/config.h"
#include "core/safetensors.h"
#include "kernels/backend.h"
#include "tests/common/test_util.h"
#include "trainer/models/gpt.h"
#include "trainer/trainer.h"

namespace loom {
namespace {

namespace fs = std::filesystem;
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

// ---- Backend::count_nonfinite, CPU reference ----

TEST(CountNonfinite, CountsNanAndInfAtRaggedPositionsInEveryFloatDtype) {
  auto cpu = make_backend(Device::cpu());
  for (const DType dtype : {DType::F32, DType::F64, DType::BF16, DType::F16}) {
    // Sizes around the parallel threshold (2^15) and odd ones; bad values at both ends and in between.
    std::vector<Tensor> tensors;
    int64_t planted = 0;
    for (const int64_t n : {int64_t{0}, int64_t{1}, int64_t{37}, int64_t{(1 << 15) + 3}, int64_t{100003}}) {
      Tensor t = Tensor::zeros({n}, dtype);
      t.fill_(0.5);
      std::set<int64_t> positions;
      for (int64_t i = 0; i < n; i += n / 7 + 1) positions.insert(i);
      if (n > 0) positions.insert(n - 1);
      for (const int64_t i : positions) {
        const double bad = (i % 3 == 0) ? kNaN : (i % 3 == 1 ? kInf : -kInf);
        t.slice_flat(i, {1}).fill_(bad);
      }
      planted += static_cast<int64_t>(positions.size());
      tensors.push_back(t);
    }
    EXPECT_EQ(cpu->count_nonfinite(tensors), planted) << dtype_name(dtype);
    EXPECT_EQ(cpu->count_nonfinite({tensors[2]}), 7) << dtype_name(dtype);  // 0, 6, ..., 36
    EXPECT_EQ(cpu->count_nonfinite({}), 0);
    // Huge but finite values are finite (the largest of each format).
    Tensor big = Tensor::zeros({3}, dtype);
    big.fill_(dtype == DType::F16 ? 65504.0 : dtype == DType::BF16 ? 3.3e38 : 3.4e38);
    EXPECT_EQ(cpu->count_nonfinite({big}), 0) << dtype_name(dtype);
  }
  EXPECT_THROW(cpu->count_nonfinite({Tensor::from_ints({1, 2}, {2})}), Error);
  EXPECT_THROW(cpu->count_nonfinite({Tensor()}), Error);
}

// ---- the trainer ----

config::RunConfig tiny_config(const std::string& out_dir, int steps, const std::vector<std::string>& overrides = {}) {
  std::ostringstream y;
  y << "model: {kind: gpt, n_layer: 2, d_model: 16, n_head: 2, vocab_size: 37, max_seq_len: 8}\n"
    << "data: {train: unused, batch_size: 3, seq_len: 8}\n"
    << "optim: {lr: 0.01, warmup_steps: 2, weight_decay: 0.01}\n"
    << "train: {max_steps: " << steps << ", log_every: 0, out_dir: \"" << out_dir << "\", progress: false,\n"
    << "        checkpoint_every: 5, keep_checkpoints: 10, val_batches: 1}\n";
  return parse_run_config(y.str(), "tiny_config", overrides);
}

struct TinyRun {
  std::unique_ptr<Backend> backend = make_backend(Device::cpu());
  std::unique_ptr<GptModel> model;
  explicit TinyRun(const config::RunConfig& cfg) {
    model = std::make_unique<GptModel>(model_shape_from_config(cfg.model()), *backend, DType::F32, DType::F32,
                                       cfg.data().seq_len(), cfg.train().seed());
  }
};

// A model whose forward_backward call number k (1-based) sees a bad batch: its loss and gradients are
// multiplied by factors[k] (NaN poisons both outright), or only its gradients when `gradients_only`.
class BadBatches final : public Model {
 public:
  BadBatches(Model& inner, std::map<int64_t, double> factors, bool gradients_only = false)
      : inner_(inner), factors_(std::move(factors)), gradients_only_(gradients_only) {
    inner_.set_grad_ready_hook([this](const std::string& prefix) { grads_ready(prefix); });
    inner_.set_backward_start_hook([this] { backward_starts(); });
  }
  ParameterStore& params() override { return inner_.params(); }
  Backend& backend() override { return inner_.backend(); }
  void forward_backward_into(const Batch& batch, double loss_scale, Tensor& loss_total, double loss_weight) override {
    const auto it = factors_.find(++calls_);
    const double factor = it == factors_.end() ? 1.0 : it->second;
    inner_.forward_backward_into(batch, loss_scale * factor, loss_total, loss_weight * (gradients_only_ ? 1 : factor));
  }
  EvalStats evaluate(const Batch& batch) override { return inner_.evaluate(batch); }
  Tensor logits(const Tensor& inputs) override { return inner_.logits(inputs); }
  SampleFlops flops_per_sample() const override { return inner_.flops_per_sample(); }
  int64_t tokens_per_sample() const override { return inner_.tokens_per_sample(); }
  const ModelShape& shape() const override { return inner_.shape(); }
  void set_active_embedding_channels(int64_t channels) override { inner_.set_active_embedding_channels(channels); }
  void set_residual_dtype(DType residual) override { inner_.set_residual_dtype(residual); }
  void set_recompute_gelu(bool recompute) override { inner_.set_recompute_gelu(recompute); }

 private:
  Model& inner_;
  std::map<int64_t, double> factors_;
  bool gradients_only_;
  int64_t calls_ = 0;
};

// Plants NaN into the first parameter after step `at` (and optionally asks for a checkpoint then).
class PlantNaN final : public TrainingObserver {
 public:
  PlantNaN(ParameterStore& params, int64_t at, bool checkpoint) : params_(params), at_(at), checkpoint_(checkpoint) {}
  void on_step(const nlohmann::json& record) override {
    step_ = record.at("step").get<int64_t>();
    if (step_ == at_) params_.master().slice_flat(3, {1}).fill_(kNaN);
  }
  Control poll() override { return {checkpoint_ && step_ == at_, false}; }

 private:
  ParameterStore& params_;
  int64_t at_, step_ = 0;
  bool checkpoint_;
};

std::vector<nlohmann::json> records_in(const std::string& metrics_path) {
  std::vector<nlohmann::json> out;
  std::ifstream in(metrics_path);
  std::string line;
  while (std::getline(in, line)) out.push_back(nlohmann::json::parse(line));
  return out;
}

int64_t nonfinite_in(const CheckpointContents& c) {
  auto cpu = make_backend(Device::cpu());
  std::vector<Tensor> all;
  for (const auto& [name, t] : c.model) all.push_back(t);
  for (const auto& [name, t] : c.optimizer) all.push_back(t);
  return cpu->count_nonfinite(all);
}

TEST(CheckpointSafety, Beta1OfOneIsRejectedInCodeToo) {
  testing::TempDir dir;
  config::RunConfig cfg = tiny_config(dir.path(), 10);
  cfg.mutable_optim()->set_beta1(1.0);  // bypassing the YAML loader, which rejects it (config_ranges_test)
  TinyRun run(cfg);
  testing::SyntheticTokens data(3, 8, 37, 2);
  std::ostringstream log;
  EXPECT_EQ(testing::error_message([&] { Trainer trainer(cfg, *run.model, data, log); })
                .rfind("optim.beta1 must be in [0, 1), got 1", 0),
            0u);
}

TEST(CheckpointSafety, ANonFiniteStateIsNeverCheckpointed) {
  testing::TempDir dir;
  const config::RunConfig cfg = tiny_config(dir.path(), 10);
  TinyRun run(cfg);
  testing::SyntheticTokens data(3, 8, 37, 2);
  std::ostringstream log;
  Trainer trainer(cfg, *run.model, data, log);
  PlantNaN plant(run.model->params(), 7, /*checkpoint=*/true);
  trainer.add_observer(&plant);
  const std::string good = checkpoint_dir(dir.path(), 5);
  EXPECT_EQ(testing::error_message([&] { trainer.run(); }),
            "step 7: the training state is not finite (1 parameter, 0 first-moment and 0 second-moment values are "
            "NaN or Inf); stopped before writing the checkpoint of step 7. The last good checkpoint is " +
                good + " (resume with train.resume=" + good + ").");
  EXPECT_EQ(latest_checkpoint(dir.path()), good);
  EXPECT_EQ(nonfinite_in(load_checkpoint(good)), 0);
}

// The probe's "NaN weights, exit 0": a run whose final state is not finite fails even without a checkpoint.
TEST(CheckpointSafety, ARunEndingInANonFiniteStateFails) {
  testing::TempDir dir;
  const config::RunConfig cfg = tiny_config(dir.path(), 6, {"train.checkpoint_every=-1"});
  TinyRun run(cfg);
  testing::SyntheticTokens data(3, 8, 37, 2);
  std::ostringstream log;
  Trainer trainer(cfg, *run.model, data, log);
  PlantNaN plant(run.model->params(), 6, /*checkpoint=*/false);
  trainer.add_observer(&plant);
  EXPECT_EQ(testing::error_message([&] { trainer.run(); }),
            "step 6: the training state is not finite (1 parameter, 0 first-moment and 0 second-moment values are "
            "NaN or Inf); stopped before finishing at step 6. No good checkpoint was written or resumed from by this "
            "run.");
}

TEST(CheckpointSafety, ANonFiniteLossStopsNamingTheLastGoodCheckpoint) {
  testing::TempDir dir;
  const config::RunConfig cfg = tiny_config(dir.path(), 10);
  TinyRun run(cfg);
  BadBatches model(*run.model, {{8, kNaN}});
  testing::SyntheticTokens data(3, 8, 37, 2);
  std::ostringstream log;
  Trainer trainer(cfg, model, data, log);
  const std::string message = testing::error_message([&] { trainer.run(); });
  EXPECT_EQ(message.rfind("step 8: loss ", 0), 0u) << message;
  EXPECT_NE(message.find(" is not finite; stopped before the update. "), std::string::npos) << message;
  EXPECT_NE(message.find("The last good checkpoint is " + checkpoint_dir(dir.path(), 5)), std::string::npos);
  EXPECT_EQ(latest_checkpoint(dir.path()), checkpoint_dir(dir.path(), 5));
}

// The update is decided on the device (kernels/step_stats.h) and the host reads the loss and norm only after
// it was queued: a non-finite loss, or a finite loss with non-finite gradients, must still leave the weights and
// both moments exactly as the previous step left them, and stop with the same message.
TEST(CheckpointSafety, ANonFiniteStepLeavesWeightsAndMomentsUntouched) {
  for (const bool gradients_only : {false, true}) {
    SCOPED_TRACE(gradients_only ? "infinite gradients, finite loss" : "NaN loss and gradients");
    testing::TempDir dir;
    const config::RunConfig cfg = tiny_config(dir.path(), 10, {"train.checkpoint_every=0"});
    TinyRun run(cfg);
    BadBatches model(*run.model, {{8, gradients_only ? kInf : kNaN}}, gradients_only);
    testing::SyntheticTokens data(3, 8, 37, 2);
    std::ostringstream log;
    Trainer trainer(cfg, model, data, log);
    trainer.run(7);
    const CheckpointContents before = load_checkpoint(trainer.save_checkpoint_now());
    const std::string message = testing::error_message([&] { trainer.run(); });
    EXPECT_EQ(message.rfind("step 8: loss ", 0), 0u) << message;
    EXPECT_NE(message.find(" is not finite; stopped before the update. "), std::string::npos) << message;
    const bool loss_printed_nan =
        message.find("loss nan") != std::string::npos || message.find("loss -nan") != std::string::npos;
    EXPECT_NE(loss_printed_nan, gradients_only) << message;
    EXPECT_EQ(trainer.step(), 7);
    // The same step's checkpoint again (the state is finite, or writing it would throw), tensor by tensor.
    const CheckpointContents after = load_checkpoint(trainer.save_checkpoint_now());
    ASSERT_EQ(after.model.size(), before.model.size());
    ASSERT_EQ(after.optimizer.size(), before.optimizer.size());
    for (const auto* pair : {&before.model, &before.optimizer}) {
      const NamedTensors& later = pair == &before.model ? after.model : after.optimizer;
      for (size_t i = 0; i < pair->size(); ++i) {
        EXPECT_EQ(later[i].first, (*pair)[i].first);
        EXPECT_EQ(later[i].second.to_vector(), (*pair)[i].second.to_vector()) << (*pair)[i].first;
      }
    }
  }
}

class ResumeChecksTest : public ::testing::Test {
 protected:
  void SetUp() override {
    TinyRun run(cfg_);
    testing::SyntheticTokens data(3, 8, 37, 2);
    std::ostringstream log;
    Trainer trainer(cfg_, *run.model, data, log);
    trainer.run(5);
    ASSERT_TRUE(fs::exists(ckpt_ + "/optimizer.safetensors"));
  }
  std::string resume_error() {
    TinyRun run(cfg_);
    testing::SyntheticTokens data(3, 8, 37, 2);
    std::ostringstream log;
    Trainer trainer(cfg_, *run.model, data, log);
    const std::vector<float> before = run.model->params().master().to_vector();
    const std::string message = testing::error_message([&] { trainer.resume_from(ckpt_); });
    // A refused checkpoint changes nothing.
    EXPECT_EQ(trainer.step(), 0);
    EXPECT_EQ(run.model->params().master().to_vector(), before);
    EXPECT_EQ(data.state(), testing::SyntheticTokens(3, 8, 37, 2).state());
    EXPECT_EQ(trainer.last_good_checkpoint(), "");
    return message;
  }
  void edit_state(const std::function<void(nlohmann::json&)>& edit) {
    nlohmann::json state = nlohmann::json::parse(std::ifstream(ckpt_ + "/state.json"));
    edit(state);
    std::ofstream(ckpt_ + "/state.json") << state.dump();
  }
  testing::TempDir dir_;
  config::RunConfig cfg_ = tiny_config(dir_.path(), 10);
  std::string ckpt_ = checkpoint_dir(dir_.path(), 5);
};

// The probe's NaN in the optimizer state: planted in the second moment at ragged positions, it is found
// when the checkpoint is loaded, and the run does not start.
TEST_F(ResumeChecksTest, NaNInTheOptimizerStateIsRefused) {
  safetensors::File f = safetensors::read(ckpt_ + "/optimizer.safetensors");
  int planted = 0;
  for (auto& [name, t] : f.tensors) {
    if (name.rfind("optim.v.", 0) != 0 || planted == 2) continue;
    t.slice_flat(t.numel() - 1, {1}).fill_(planted == 0 ? kNaN : kInf);
    ++planted;
  }
  ASSERT_EQ(planted, 2);
  safetensors::write(ckpt_ + "/optimizer.safetensors", f.tensors, f.metadata);
  EXPECT_EQ(resume_error(), ckpt_ +
                                ": the checkpoint is not finite (0 parameter, 0 first-moment and 2 second-moment "
                                "values are NaN or Inf); not loading it");
}

TEST_F(ResumeChecksTest, StateFieldsAreCheckedNotNarrowed) {
  const std::string file = ckpt_ + "/state.json";
  edit_state([](nlohmann::json& s) { s["data_parallel_size"] = int64_t{1} << 40; });
  EXPECT_EQ(resume_error(), file + ": \"data_parallel_size\": 1099511627776 is out of range [1, 1048576]");
  edit_state([](nlohmann::json& s) { s["data_parallel_size"] = 1.5; });
  EXPECT_EQ(resume_error(), file + ": \"data_parallel_size\": expected an integer, got 1.5");
  edit_state([](nlohmann::json& s) {
    s["data_parallel_size"] = 1;
    s["step"] = 11;
  });
  EXPECT_EQ(resume_error(), file + " (train.max_steps): \"step\": 11 is out of range [0, 10]");
  edit_state([](nlohmann::json& s) {
    s["step"] = 5;
    s.erase("data");
  });
  EXPECT_EQ(resume_error(), file + ": missing \"data\"");
}

// train.spike_guard: a bad batch (loss and gradients 1000×, then a NaN one) is not applied; the run restores
// the last good checkpoint, skips batches, trains on at a lower lr for a while and finishes finite.
TEST(SpikeGuard, RecoversFromInjectedBadBatchesAndFinishesFinite) {
  testing::TempDir dir;
  const config::RunConfig cfg =
      tiny_config(dir.path(), 20,
                  {"train.spike_guard={enabled: true, window: 5, spike_factor: 3, skip_batches: 2, lr_scale: 0.5, "
                   "recovery_steps: 3}"});
  TinyRun run(cfg);
  // Call 12 is step 12; after its restore (to step 10), call 19 is step 17.
  BadBatches model(*run.model, {{12, 1000.0}, {19, kNaN}});
  testing::SyntheticTokens data(3, 8, 37, 2);
  std::ostringstream log;
  Trainer trainer(cfg, model, data, log);
  const TrainResult r = trainer.run();
  EXPECT_EQ(r.steps_done, 20);
  EXPECT_TRUE(std::isfinite(r.last_train_loss));
  EXPECT_LT(r.last_train_loss, std::log(37.0) + 0.5);
  const std::string ckpt10 = checkpoint_dir(dir.path(), 10), ckpt15 = checkpoint_dir(dir.path(), 15);
  EXPECT_NE(log.str().find("step 12: loss "), std::string::npos) << log.str();
  EXPECT_NE(log.str().find("is a spike (above 3 x the median of the last 5 losses); restored " + ckpt10 +
                           " (step 10), skipped 2 more batches, lr x 0.5 for 3 steps"),
            std::string::npos)
      << log.str();
  EXPECT_NE(log.str().find("step 17: loss "), std::string::npos) << log.str();
  EXPECT_NE(log.str().find(" is not finite; restored " + ckpt15 + " (step 15)"), std::string::npos) << log.str();
  // The initial state was written first (the guard's fallback), and every checkpoint is finite. The data
  // position counts every batch read: 24 forward passes (11 + 6 + 5 accepted, 2 rejected) and 2 + 2 skipped.
  EXPECT_TRUE(fs::exists(checkpoint_dir(dir.path(), 0)));
  for (const auto& [step, path] : list_checkpoints(dir.path())) EXPECT_EQ(nonfinite_in(load_checkpoint(path)), 0);
  const CheckpointContents last = load_checkpoint(checkpoint_dir(dir.path(), 20));
  EXPECT_EQ(last.state.at("data").at("position").get<int64_t>(), 24 + 4);
  // Accepted steps only reach the metrics, and each restore rewinds them to its checkpoint (no step twice):
  // 1..10, "restored" at 10, 11..15, "restored" at 15, 16..20.
  const std::vector<nlohmann::json> records = records_in(dir / "metrics.jsonl");
  ASSERT_EQ(records.size(), 20u + 2u);
  std::map<int64_t, double> lr_by_step;
  std::vector<std::pair<int64_t, std::string>> restores;
  for (const nlohmann::json& rec : records) {
    const int64_t step = rec.at("step").get<int64_t>();
    if (rec.contains("event")) {
      EXPECT_EQ(rec.at("event"), "restored");
      restores.emplace_back(step, rec.at("checkpoint").get<std::string>());
      continue;
    }
    EXPECT_TRUE(std::isfinite(rec.at("loss").get<double>()));
    EXPECT_LT(rec.at("loss").get<double>(), 10.0);
    EXPECT_TRUE(lr_by_step.emplace(step, rec.at("lr").get<double>()).second) << "step " << step << " twice";
  }
  EXPECT_EQ(restores, (std::vector<std::pair<int64_t, std::string>>{{10, ckpt10}, {15, ckpt15}}));
  EXPECT_EQ(lr_by_step.size(), 20u);
  // Steps 11 and 16 ran again after the restores, at lr × 0.5; step 19 at the full rate.
  EXPECT_DOUBLE_EQ(lr_by_step[11], 0.5 * learning_rate(cfg.optim(), 10, 20));
  EXPECT_DOUBLE_EQ(lr_by_step[16], 0.5 * learning_rate(cfg.optim(), 15, 20));
  EXPECT_DOUBLE_EQ(lr_by_step[19], learning_rate(cfg.optim(), 18, 20));
  auto cpu = make_backend(Device::cpu());
  EXPECT_EQ(cpu->count_nonfinite({run.model->params().master()}), 0);
}

// The probe's lr = 1e4: every update diverges. With the guard the run stops non-zero, and the checkpoint it
// names as good (the initial state) was kept from pruning (keep_checkpoints: 1) and trains finite when resumed.
TEST(SpikeGuard, DivergingRunKeepsAndNamesAGoodCheckpoint) {
  testing::TempDir dir;
  const config::RunConfig cfg =
      tiny_config(dir.path(), 10,
                  {"train.checkpoint_every=1", "train.keep_checkpoints=1", "train.spike_guard.enabled=true",
                   "optim.lr=1e4", "optim.warmup_steps=0"});
  TinyRun run(cfg);
  testing::SyntheticTokens data(3, 8, 37, 2);
  std::ostringstream log;
  Trainer trainer(cfg, *run.model, data, log);
  const std::string good = checkpoint_dir(dir.path(), 0);
  const std::string message = testing::error_message([&] { trainer.run(); });
  EXPECT_NE(message.find(" after 3 restores without reaching a new good checkpoint (train.spike_guard.max_restores); "
                         "stopping. The last good checkpoint is " + good),
            std::string::npos)
      << message;
  ASSERT_TRUE(fs::exists(good));
  EXPECT_EQ(nonfinite_in(load_checkpoint(good)), 0);
  // Resumed at a sane learning rate, the good checkpoint trains on with finite, undiverged losses.
  const config::RunConfig sane = tiny_config(dir.path(), 10, {"train.checkpoint_every=0"});
  TinyRun again(sane);
  testing::SyntheticTokens data2(3, 8, 37, 2);
  Trainer resumed(sane, *again.model, data2, log);
  resumed.resume_from(good);
  const TrainResult r = resumed.run();
  EXPECT_EQ(r.steps_done, 10);
  EXPECT_LT(r.last_train_loss, std::log(37.0) + 0.5);
}

TEST(SpikeGuard, NeedsCheckpoints) {
  testing::TempDir dir;
  const config::RunConfig cfg =
      tiny_config(dir.path(), 10, {"train.checkpoint_every=-1", "train.spike_guard.enabled=true"});
  TinyRun run(cfg);
  testing::SyntheticTokens data(3, 8, 37, 2);
  std::ostringstream log;
  EXPECT_EQ(testing::error_message([&] { Trainer trainer(cfg, *run.model, data, log); })
                .rfind("train.spike_guard restores checkpoints, but train.checkpoint_every is -1 (never)", 0),
            0u);
}

}  // namespace
}  // namespace loom
