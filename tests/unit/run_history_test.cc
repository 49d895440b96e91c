// Run folders that never lose a run (trainer/run_folder.h), through run_training as `loom train` runs it: a new
// run does not take over a folder holding another run, keep_checkpoints prunes only the run's own checkpoints,
// a resume never runs beside later checkpoints, and after a resume metrics.jsonl and TensorBoard list every
// step once.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "core/checkpoint.h"
#include "core/config.h"
#include "core/tensorboard_writer.h"
#include "core/token_shards.h"
#include "kernels/backend.h"
#include "trainer/pruning/latency_table.h"
#include "tests/common/model_testing.h"
#include "tests/common/test_util.h"
#include "trainer/run.h"

namespace loom {
namespace {

namespace fs = std::filesystem;

class RunHistoryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::vector<int32_t> tokens(600);
    for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<int32_t>((i * 7 + i / 13) % 32);
    write_shard(dir_ / "train_000000.bin", tokens);
  }
  // A tiny GPT run into `out` (a folder name under the test's folder) with `overrides`.
  TrainResult train(const std::string& out, const std::vector<std::string>& overrides) {
    std::vector<std::string> all = {"train.out_dir=" + dir_ / out};
    all.insert(all.end(), overrides.begin(), overrides.end());
    const config::RunConfig cfg = parse_run_config(
        "model: {kind: gpt, n_layer: 1, d_model: 16, n_head: 2, vocab_size: 32, max_seq_len: 8}\n"
        "data: {train: \"" + dir_ / "train_*.bin" + "\", batch_size: 2, seq_len: 8}\n"
        "train: {max_steps: 6, device: cpu, progress: false, log_every: 0}\n",
        "history.yaml", all);
    log_.str("");
    return run_training(cfg, log_);
  }
  std::vector<std::string> checkpoint_names(const std::string& out) {
    std::vector<std::string> names;
    for (const auto& [step, path] : list_checkpoints(dir_ / out)) names.push_back(fs::path(path).filename());
    return names;
  }
  static std::string read(const std::string& path) {
    std::ifstream in(path);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
  }
  testing::TempDir dir_{"history"};
  std::ostringstream log_;
};

// Issue 15: a second run into the folder of a finished one had its own final checkpoint deleted by keep-N
// pruning (the old run's had higher steps), and a later resume=latest continued the old run.
TEST_F(RunHistoryTest, TwoRunsIntoOneFolderCannotLoseACheckpoint) {
  train("run", {"train.checkpoint_every=2"});  // ckpt 4 and 6 (keep 2)
  ASSERT_EQ(checkpoint_names("run"), (std::vector<std::string>{"ckpt_00000004", "ckpt_00000006"}));
  const std::string state6 = read(dir_ / "run/ckpt_00000006/state.json");
  const std::string metrics = read(dir_ / "run/metrics.jsonl");

  // A new run (3 steps, no resume) stops before it writes anything, naming what is there.
  const std::string error = testing::error_message([&] { train("run", {"train.max_steps=3"}); });
  EXPECT_EQ(error, dir_ / "run" +
                       " holds an earlier run (checkpoints ckpt_00000004, ckpt_00000006; metrics.jsonl; 1 TensorBoard "
                       "event file): continue it with train.resume=latest, replace it with train.overwrite=true "
                       "(deletes it), or choose another train.out_dir");
  EXPECT_EQ(checkpoint_names("run"), (std::vector<std::string>{"ckpt_00000004", "ckpt_00000006"}));
  EXPECT_EQ(read(dir_ / "run/ckpt_00000006/state.json"), state6);
  EXPECT_EQ(read(dir_ / "run/metrics.jsonl"), metrics);

  // With train.overwrite the old run goes, and the new run's final checkpoint stays and is the one resumed.
  const TrainResult fresh = train("run", {"train.max_steps=3", "train.overwrite=true"});
  EXPECT_NE(log_.str().find("train.overwrite: removed the earlier run"), std::string::npos) << log_.str();
  EXPECT_EQ(checkpoint_names("run"), (std::vector<std::string>{"ckpt_00000003"}));
  EXPECT_EQ(latest_checkpoint(dir_ / "run"), fresh.last_checkpoint);
  std::set<int64_t> steps;
  std::ifstream in(dir_ / "run/metrics.jsonl");
  for (std::string line; std::getline(in, line);) steps.insert(nlohmann::json::parse(line).at("step").get<int64_t>());
  EXPECT_EQ(steps, (std::set<int64_t>{1, 2, 3}));
}

// keep_checkpoints removes only checkpoints of the run that writes (state.json "run_id"): here a run resumed
// from another folder's checkpoint trains beside an unrelated run's checkpoints, which all stay.
TEST_F(RunHistoryTest, KeepCheckpointsRemovesOnlyTheRunsOwn) {
  train("a", {"train.max_steps=4", "train.checkpoint_every=2"});  // run A: ckpt 2, 4
  train("b", {"train.max_steps=3", "train.checkpoint_every=1", "train.keep_checkpoints=0"});  // run B: ckpt 1, 2, 3
  const std::string run_a = checkpoint_run_id(dir_ / "a/ckpt_00000004");
  const std::string run_b = checkpoint_run_id(dir_ / "b/ckpt_00000001");
  ASSERT_FALSE(run_a.empty());
  ASSERT_NE(run_a, run_b);
  // Run A goes on in folder b from its step 4 (nothing of B is later than that), keeping its newest checkpoint.
  train("b", {"train.resume=" + dir_ / "a/ckpt_00000004", "train.checkpoint_every=1", "train.keep_checkpoints=1"});
  EXPECT_EQ(checkpoint_names("b"),
            (std::vector<std::string>{"ckpt_00000001", "ckpt_00000002", "ckpt_00000003", "ckpt_00000006"}));
  EXPECT_EQ(checkpoint_run_id(dir_ / "b/ckpt_00000006"), run_a);
  for (const char* name : {"ckpt_00000001", "ckpt_00000002", "ckpt_00000003"})
    EXPECT_EQ(checkpoint_run_id(dir_ / "b" + "/" + name), run_b) << name;
}

// Resuming an earlier checkpoint than the folder's newest would run beside later ones (and resume=latest would
// pick them after a crash): refused, unless train.overwrite deletes them.
TEST_F(RunHistoryTest, AResumeNeverRunsBesideLaterCheckpoints) {
  train("run", {"train.checkpoint_every=2", "train.keep_checkpoints=0"});  // ckpt 2, 4, 6
  const std::string error =
      testing::error_message([&] { train("run", {"train.resume=" + dir_ / "run/ckpt_00000002"}); });
  EXPECT_NE(error.find("holds checkpoints after the resumed step 2 (ckpt_00000004, ckpt_00000006)"), std::string::npos)
      << error;
  EXPECT_EQ(checkpoint_names("run").size(), 3u);
  train("run", {"train.resume=" + dir_ / "run/ckpt_00000002", "train.overwrite=true", "train.max_steps=3"});
  EXPECT_EQ(checkpoint_names("run"), (std::vector<std::string>{"ckpt_00000002", "ckpt_00000003"}));
}

// A run killed after step 6 whose newest checkpoint is step 4 resumes there: metrics.jsonl and TensorBoard drop
// steps 5 and 6 of the killed attempt, so every step appears once, followed by the resumed attempt's.
TEST_F(RunHistoryTest, AfterAResumeMetricsAndTensorBoardListEveryStepOnce) {
  train("run", {"train.checkpoint_every=4", "train.keep_checkpoints=0"});  // ckpt 4 and 6
  fs::remove_all(dir_ / "run/ckpt_00000006");                              // killed before writing it
  std::map<int64_t, double> first_attempt;
  {
    std::ifstream in(dir_ / "run/metrics.jsonl");
    for (std::string line; std::getline(in, line);) {
      const auto r = nlohmann::json::parse(line);
      first_attempt[r.at("step").get<int64_t>()] = r.at("loss").get<double>();
    }
  }
  ASSERT_EQ(first_attempt.size(), 6u);
  std::ofstream(dir_ / "run/metrics.jsonl", std::ios::app) << "{\"step\": 7, \"loss\"";  // torn by the kill

  train("run", {"train.resume=latest", "train.max_steps=8"});
  // Dropped: steps 5, 6 and the torn line from metrics.jsonl, steps 5 and 6 from the event file.
  EXPECT_NE(log_.str().find("at step 4 (5 records after it dropped"), std::string::npos) << log_.str();
  std::vector<int64_t> steps;
  std::vector<nlohmann::json> events;
  std::ifstream in(dir_ / "run/metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    const auto r = nlohmann::json::parse(line);  // every line is whole JSON again
    if (r.contains("event")) {
      events.push_back(r);
      continue;
    }
    steps.push_back(r.at("step").get<int64_t>());
    if (r.at("step").get<int64_t>() <= 4) {
      EXPECT_EQ(r.at("loss").get<double>(), first_attempt.at(r.at("step")));
    }
  }
  EXPECT_EQ(steps, (std::vector<int64_t>{1, 2, 3, 4, 5, 6, 7, 8}));
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].at("event"), "resumed");
  EXPECT_EQ(events[0].at("step"), 4);
  EXPECT_EQ(events[0].at("checkpoint"), dir_ / "run/ckpt_00000004");

  // TensorBoard: over all event files, train/loss once per step.
  std::map<int64_t, int> losses_per_step;
  for (const auto& e : fs::directory_iterator(dir_ / "run/tensorboard"))
    for (const TensorBoardScalar& s : read_tensorboard_scalars(e.path().string()))
      if (s.tag == "train/loss") ++losses_per_step[s.step];
  EXPECT_EQ(losses_per_step.size(), 8u);
  for (const auto& [step, count] : losses_per_step) EXPECT_EQ(count, 1) << "step " << step;
}

// A pruning run writes its shrunk checkpoint and fine-tunes the smaller model in the same folder (it failed:
// the fine-tuning asked for the folder's lock, which the pruning run itself held). The metrics list every step
// once, across the switch to the smaller model.
TEST_F(RunHistoryTest, APruningRunFineTunesInItsOwnFolder) {
  const TrainResult base = train("base", {"train.max_steps=4", "model.d_model=32", "model.n_head=2"});
  const config::RunConfig cfg = parse_run_config(
      "model: {kind: gpt, init_from: \"" + base.last_checkpoint + "/model.safetensors\"}\n"
      "data: {train: \"" + dir_ / "train_*.bin" + "\", batch_size: 2, seq_len: 8}\n"
      "train: {max_steps: 12, device: cpu, progress: false, log_every: 0, out_dir: \"" + dir_ / "pruned" + "\"}\n"
      "prune: {latency_table: \"" + dir_ / "table.json" + "\", latency_grid: {points_per_axis: 2, warmup: 0, "
      "repeats: 1}, embedding_group: 16, heads_group: 1, qk_group: 8, v_group: 8, mlp_group: 32, "
      "saliency_batches: 1, eta: 0, target_ratio: 0.7, every: 1, begin_step: 1, groups_per_step: 4}\n",
      "prune.yaml");
  // A cost table of the run's own key and grid, not a measured one: a 1-repeat CPU timing of these tiny blocks is
  // noise, and a noisy floor above the target (it happened in CI) refuses the run before it tests the folder.
  auto cpu = make_backend(Device::cpu());
  testing::multilinear_latency_table(latency_key_for(cfg, *cpu), latency_grid_for(cfg)).save(dir_ / "table.json");
  std::ostringstream log;
  const TrainResult pruned = run_training(cfg, log);
  ASSERT_FALSE(pruned.pruned_checkpoint.empty()) << log.str();
  EXPECT_EQ(pruned.steps_done, 12) << log.str();
  EXPECT_NE(log.str().find("fine-tuning the pruned model"), std::string::npos) << log.str();
  std::vector<int64_t> steps;
  std::ifstream in(dir_ / "pruned/metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    const auto r = nlohmann::json::parse(line);
    if (!r.contains("event")) steps.push_back(r.at("step").get<int64_t>());
  }
  std::vector<int64_t> expected(12);
  for (int64_t i = 0; i < 12; ++i) expected[static_cast<size_t>(i)] = i + 1;
  EXPECT_EQ(steps, expected);
  EXPECT_EQ(checkpoint_run_id(pruned.pruned_checkpoint), checkpoint_run_id(latest_checkpoint(dir_ / "pruned")));
}

}  // namespace
}  // namespace loom
