// The training loop end to end on the CPU backend: overfitting one batch, bit-exact resume from a checkpoint,
// a failed checkpoint write that must leave the previous checkpoint usable, and how progress is shown.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <sstream>

#include "core/atomic_file.h"
#include "core/checkpoint.h"
#include "core/config.h"
#include "core/tensorboard_writer.h"
#include "tests/common/test_util.h"
#include "trainer/models/gpt.h"
#include "trainer/optimizer.h"
#include "trainer/trainer.h"

namespace loom {
namespace {

config::RunConfig tiny_config(const std::string& out_dir, int steps) {
  std::ostringstream y;
  y << "model: {kind: gpt, n_layer: 2, d_model: 16, n_head: 2, vocab_size: 37, max_seq_len: 8,\n"
    << "        blocks: [{heads: 2, mlp_dim: 24}, {heads: 1, qk_head_dim: 12, v_head_dim: 6}]}\n"
    << "data: {train: unused, batch_size: 3, seq_len: 8}\n"
    << "optim: {lr: 0.01, warmup_steps: 2, weight_decay: 0.01}\n"
    << "train: {max_steps: " << steps << ", log_every: 0, out_dir: \"" << out_dir << "\", progress: false,\n"
    << "        checkpoint_every: 5, keep_checkpoints: 10, val_batches: 2}\n";
  return parse_run_config(y.str(), "tiny_config");
}

std::vector<double> losses_in(const std::string& metrics_path) {
  std::vector<double> out;
  std::ifstream in(metrics_path);
  std::string line;
  while (std::getline(in, line)) {
    const nlohmann::json record = nlohmann::json::parse(line);
    if (!record.contains("event")) out.push_back(record.at("loss").get<double>());  // a resume is an event line
  }
  return out;
}

struct TinyRun {
  std::unique_ptr<Backend> backend = make_backend(Device::cpu());
  std::unique_ptr<GptModel> model;
  explicit TinyRun(const config::RunConfig& cfg) {
    model = std::make_unique<GptModel>(model_shape_from_config(cfg.model()), *backend, DType::F32, DType::F32,
                                       cfg.data().seq_len(), cfg.train().seed());
  }
};

TEST(Trainer, OverfitsOneBatch) {
  testing::TempDir dir;
  config::RunConfig cfg = tiny_config(dir.path(), 150);
  TinyRun run(cfg);
  testing::SyntheticTokens tokens(3, 8, 37, 5);
  testing::FixedBatch data(tokens.next_train(Device::cpu()));
  std::ostringstream log;
  Trainer trainer(cfg, *run.model, data, log);
  const TrainResult r = trainer.run();
  const std::vector<double> losses = losses_in(dir / "metrics.jsonl");
  ASSERT_EQ(losses.size(), 150u);
  EXPECT_NEAR(losses.front(), std::log(37.0), 0.5);  // starts near uniform
  EXPECT_LT(r.last_train_loss, 0.05) << "the model should memorise 24 tokens";
  EXPECT_LT(r.last_val_loss, 0.05);
}

// A step's loss and gradient norm stay on the device until its end, and AdamW clips there (kernels/step_stats.h).
// The numbers it reports and the weights it leaves equal bit for bit the host path it replaced: each
// micro-step's loss read and averaged on the host, the norm from host sums of squares of the sharded and the
// replicated parameters, and AdamW scaled by a host factor min(1, clip / norm). Two micro-steps per step, a
// clip that some steps exceed.
TEST(Trainer, StepStatisticsOnTheDeviceMatchTheHostPathBitForBit) {
  testing::TempDir dir;
  config::RunConfig cfg = tiny_config(dir.path(), 6);
  cfg.mutable_train()->set_grad_accum_steps(2);
  cfg.mutable_optim()->set_grad_clip(0.4);
  TinyRun run(cfg);
  testing::SyntheticTokens data(3, 8, 37, 2);
  std::ostringstream log;
  Trainer trainer(cfg, *run.model, data, log);
  trainer.run();
  std::vector<nlohmann::json> records;
  std::ifstream in(dir / "metrics.jsonl");
  for (std::string line; std::getline(in, line);) records.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(records.size(), 6u);

  TinyRun ref(cfg);
  testing::SyntheticTokens ref_data(3, 8, 37, 2);
  Backend& be = *ref.backend;
  ParameterStore& params = ref.model->params();
  AdamW adamw(params, cfg.optim(), be);
  std::vector<Tensor> sharded, replicated;
  for (const auto& e : params.layout().entries())
    (e.spec.sharding.sharded() ? sharded : replicated).push_back(params.grads().slice_flat(e.offset, {e.numel}));
  ASSERT_FALSE(sharded.empty());
  ASSERT_FALSE(replicated.empty());
  int clipped = 0;
  for (int64_t step = 0; step < 6; ++step) {
    be.zero(params.grads());
    double loss = 0;
    for (int micro = 0; micro < 2; ++micro) loss += ref.model->forward_backward(ref_data.next_train(Device::cpu()), 0.5) / 2;
    const double norm = std::sqrt(be.sum_squares(sharded) + be.sum_squares(replicated));
    adamw.step(learning_rate(cfg.optim(), step, 6), step + 1, norm);
    EXPECT_EQ(records[step].at("loss").get<double>(), loss) << "step " << step + 1;
    EXPECT_EQ(records[step].at("grad_norm").get<double>(), norm) << "step " << step + 1;
    clipped += norm > 0.4;
  }
  EXPECT_GT(clipped, 0) << "no step was clipped: the test does not reach the clipping";
  EXPECT_EQ(run.model->params().master().to_vector(), params.master().to_vector());
}

// Every step's record reaches TensorBoard too (as float scalars), with the time of every phase, and the phases
// account for the step: forward + backward + grad sync + optimizer + data never exceed the step's time.
TEST(Trainer, WritesTensorBoardScalarsAndPhaseTimes) {
  testing::TempDir dir;
  config::RunConfig cfg = tiny_config(dir.path(), 6);
  TinyRun run(cfg);
  testing::SyntheticTokens data(3, 8, 37, 5);
  std::ostringstream log;
  Trainer(cfg, *run.model, data, log).run();
  std::vector<nlohmann::json> records;
  {
    std::ifstream in(dir / "metrics.jsonl");
    for (std::string line; std::getline(in, line);) records.push_back(nlohmann::json::parse(line));
  }
  ASSERT_EQ(records.size(), 6u);
  for (const auto& r : records) {
    const auto& t = r.at("time_ms");
    for (const char* phase : {"data", "forward", "backward", "grad_sync", "optimizer", "communication",
                              "exposed_communication", "compute"})
      EXPECT_GE(t.at(phase).get<double>(), 0.0) << phase;
    EXPECT_GT(t.at("forward").get<double>(), 0.0);
    EXPECT_GT(t.at("backward").get<double>(), 0.0);
    EXPECT_LE(t.at("data").get<double>() + t.at("forward").get<double>() + t.at("backward").get<double>() +
                  t.at("grad_sync").get<double>() + t.at("optimizer").get<double>(),
              r.at("ms_per_step").get<double>() * 1.001);
    EXPECT_EQ(t.at("communication").get<double>(), 0.0) << "one process communicates nothing";
  }
  std::vector<std::string> files;
  for (const auto& e : std::filesystem::directory_iterator(dir / "tensorboard")) files.push_back(e.path().string());
  ASSERT_EQ(files.size(), 1u);
  std::map<std::pair<int64_t, std::string>, float> scalars;
  for (const TensorBoardScalar& s : read_tensorboard_scalars(files[0])) scalars[{s.step, s.tag}] = s.value;
  for (const auto& r : records) {
    const int64_t step = r.at("step").get<int64_t>();
    ASSERT_TRUE(scalars.count({step, "train/loss"})) << "step " << step;
    EXPECT_EQ(scalars.at({step, "train/loss"}), static_cast<float>(r.at("loss").get<double>()));
    EXPECT_EQ(scalars.at({step, "perf/mfu"}), static_cast<float>(r.at("mfu").get<double>()));
    EXPECT_EQ(scalars.at({step, "time_ms/backward"}), static_cast<float>(r.at("time_ms").at("backward").get<double>()));
  }
  EXPECT_TRUE(scalars.count({6, "val/loss"})) << "the final validation loss";
}

TEST(Trainer, ResumeContinuesBitExactly) {
  testing::TempDir straight_dir, resumed_dir;
  // Ten steps in one go.
  const config::RunConfig straight_cfg = tiny_config(straight_dir.path(), 10);
  TinyRun straight(straight_cfg);
  testing::SyntheticTokens data_a(3, 8, 37, 11);
  std::ostringstream log;
  Trainer(straight_cfg, *straight.model, data_a, log).run();

  // The same job stopped after five steps, then a new process-like start that resumes from the step-5
  // checkpoint.
  const config::RunConfig resumed_cfg = tiny_config(resumed_dir.path(), 10);
  {
    TinyRun first(resumed_cfg);
    testing::SyntheticTokens data_b(3, 8, 37, 11);
    Trainer(resumed_cfg, *first.model, data_b, log).run(/*stop_at_step=*/5);
  }
  const config::RunConfig& second_cfg = resumed_cfg;
  TinyRun second(second_cfg);
  testing::SyntheticTokens data_c(3, 8, 37, 11);
  Trainer resumed(second_cfg, *second.model, data_c, log);
  resumed.resume_from(latest_checkpoint(resumed_dir.path()));
  EXPECT_EQ(resumed.step(), 5);
  resumed.run();

  const auto a = losses_in(straight_dir / "metrics.jsonl");
  const auto b = losses_in(resumed_dir / "metrics.jsonl");
  ASSERT_EQ(a.size(), 10u);
  ASSERT_EQ(b.size(), 10u);
  for (size_t i = 0; i < 10; ++i) EXPECT_EQ(a[i], b[i]) << "step " << i + 1;
  const std::vector<float> wa = straight.model->params().master().to_vector();
  const std::vector<float> wb = second.model->params().master().to_vector();
  ASSERT_EQ(wa.size(), wb.size());
  for (size_t i = 0; i < wa.size(); ++i) ASSERT_EQ(wa[i], wb[i]) << "weight " << i;
}

TEST(Trainer, FailedCheckpointWriteKeepsTheLastGoodOne) {
  testing::TempDir dir;
  const config::RunConfig cfg = tiny_config(dir.path(), 10);
  TinyRun run(cfg);
  testing::SyntheticTokens data(3, 8, 37, 2);
  std::ostringstream log;
  Trainer trainer(cfg, *run.model, data, log);
  // The step-10 save fails half-way through its weights file; step 5's checkpoint must survive intact.
  set_write_fault_for_testing([](const std::string& path) { return path.find("ckpt_00000010") != std::string::npos; });
  EXPECT_THROW(trainer.run(), Error);
  set_write_fault_for_testing(nullptr);
  EXPECT_EQ(latest_checkpoint(dir.path()), checkpoint_dir(dir.path(), 5));
  const CheckpointContents c = load_checkpoint(checkpoint_dir(dir.path(), 5));
  EXPECT_EQ(c.state.at("step").get<int64_t>(), 5);
  TinyRun fresh(cfg);
  fresh.model->params().load_named(c.model, "step 5");
  for (const auto& entry : std::filesystem::directory_iterator(dir.path()))
    EXPECT_EQ(entry.path().filename().string().find(".tmp"), std::string::npos) << entry.path();
}

}  // namespace
}  // namespace loom

namespace loom {
namespace {

// Stops the run at a given step, asking for a checkpoint one step earlier.
class StopAt final : public TrainingObserver {
 public:
  explicit StopAt(int64_t step) : step_(step) {}
  void on_step(const nlohmann::json& record) override { last_ = record.at("step").get<int64_t>(); }
  Control poll() override { return {last_ == step_ - 1, last_ == step_}; }
  int64_t last_ = 0;

 private:
  int64_t step_;
};

TEST(Trainer, ObserverCanCheckpointAndStop) {
  testing::TempDir dir;
  const config::RunConfig cfg = tiny_config(dir.path(), 10);
  TinyRun run(cfg);
  testing::SyntheticTokens data(3, 8, 37, 2);
  std::ostringstream log;
  Trainer trainer(cfg, *run.model, data, log);
  StopAt stop(3);
  trainer.add_observer(&stop);
  const TrainResult r = trainer.run();
  EXPECT_EQ(r.steps_done, 3);
  EXPECT_EQ(stop.last_, 3);
  const auto saved = list_checkpoints(dir.path());
  ASSERT_EQ(saved.size(), 2u);
  EXPECT_EQ(saved[0].first, 2);
  EXPECT_EQ(saved[1].first, 3);
}

// What a terminal shows for `text`: '\r' returns to the line's start, "\033[K" clears to its end, '\n' ends it.
std::vector<std::string> terminal_lines(const std::string& text) {
  std::vector<std::string> lines;
  std::string line;
  size_t column = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    if (text.compare(i, 3, "\033[K") == 0) {
      line.resize(column);
      i += 2;
    } else if (text[i] == '\r') {
      column = 0;
    } else if (text[i] == '\n') {
      lines.push_back(line);
      line.clear();
      column = 0;
    } else {
      if (column < line.size()) line[column] = text[i]; else line += text[i];
      ++column;
    }
  }
  if (!line.empty()) lines.push_back(line);
  return lines;
}

// Issue 15: on a terminal, validation lines were printed right after the progress bar, on its line.
TEST(Progress, LogLinesNeverShareALineWithTheBar) {
  testing::TempDir dir;
  config::RunConfig cfg = tiny_config(dir.path(), 6);
  cfg.mutable_train()->set_val_every(2);
  cfg.mutable_train()->set_log_every(3);
  TinyRun run(cfg);
  testing::SyntheticTokens data(3, 8, 37, 5);
  std::ostringstream terminal;  // stdout and stderr on one terminal
  Trainer trainer(cfg, *run.model, data, terminal);
  ProgressOptions bar;
  bar.bar = true;
  bar.bar_stream = &terminal;
  trainer.set_progress_options(bar);
  trainer.run();
  ASSERT_NE(terminal.str().find("[##########...."), std::string::npos) << "the bar was drawn";
  const std::vector<std::string> lines = terminal_lines(terminal.str());
  int val_lines = 0;
  for (const std::string& line : lines) {
    EXPECT_EQ(line.find('['), std::string::npos) << "a logged line shows the bar: " << line;
    val_lines += line.rfind("step ", 0) == 0 && line.find("| val loss") != std::string::npos;
  }
  EXPECT_EQ(val_lines, 3) << terminal.str();
}

// When stdout is no terminal (a Slurm log), a plain timestamped progress line with ETA every N steps.
TEST(Progress, PlainLinesWithTimeAndEtaEveryNSteps) {
  testing::TempDir dir;
  const config::RunConfig cfg = tiny_config(dir.path(), 6);
  TinyRun run(cfg);
  testing::SyntheticTokens data(3, 8, 37, 5);
  std::ostringstream log;
  Trainer trainer(cfg, *run.model, data, log);
  ProgressOptions plain;
  plain.lines = true;
  plain.every = 4;  // step 4, and the last step
  trainer.set_progress_options(plain);
  trainer.run();
  const std::regex line(R"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \| progress (\d)/6 \((\d+)%\) \| [0-9.e+]+ steps/s \| )"
                        R"(elapsed \d+m\d\ds \| ETA \d+m\d\ds)");
  std::vector<std::string> steps;
  for (const std::string& text : terminal_lines(log.str())) {
    std::smatch m;
    if (std::regex_match(text, m, line)) steps.push_back(m[1].str() + "@" + m[2].str());
  }
  EXPECT_EQ(steps, (std::vector<std::string>{"4@66", "6@100"})) << log.str();
}

}  // namespace
}  // namespace loom
