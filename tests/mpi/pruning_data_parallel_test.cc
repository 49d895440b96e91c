// A pruning run under data parallelism (MPI, 2 and 4 data ranks) takes the decisions one process takes with
// the global batch (issue 14): saliency is gathered after the gradient all-reduce, so every rank adds the same
// averaged gradients and prunes the same groups. Checked for a tiny GPT and ViT pruned with distillation
// from the unpruned checkpoint (each rank builds its own teacher) and fine-tuned:
// - on every rank, each step's pruning record (parameters, predicted latency, groups pruned) is identical;
// - the units kept (state.json "prune".kept) and the dense pruned model's widths equal the one-process run's;
// - every step's loss (pruning and fine-tuning) stays within 1e-5 of the one-process run's.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "core/checkpoint.h"
#include "parallel/mesh.h"
#include "tests/common/model_testing.h"
#include "tests/mpi/mpi_test_util.h"
#include "tests/mpi/parallel_training_harness.h"
#include "trainer/pruning/latency_table.h"
#include "trainer/run.h"

namespace loom::testing {
namespace {

constexpr int kPruneSteps = 12;

// Every step's "prune" record on this rank, as numbers (the same on every rank when decisions agree).
class PruneRecords final : public TrainingObserver {
 public:
  void on_step(const nlohmann::json& record) override {
    if (!record.contains("prune")) return;
    const nlohmann::json& p = record["prune"];
    for (const char* key : {"parameters", "predicted_ms", "groups_pruned"}) values.push_back(p.at(key).get<double>());
  }
  std::vector<double> values;
};

// The pruning run of `kind` on `data` ranks from the unpruned checkpoint `init`, writing to `out`: one-shot
// groups every 2 steps until 0.6 of the predicted latency, distilling, then fine-tuning to kPruneSteps.
config::RunConfig prune_config(const std::string& kind, int data, const std::string& init, const std::string& out) {
  config::RunConfig cfg = make_parallel_config(kind, Layout{data, 1}, out, RunSettings{});
  cfg.mutable_model()->Clear();  // the widths come from the checkpoint (the fine-tuning's are the pruned ones)
  cfg.mutable_model()->set_kind(kind);
  cfg.mutable_model()->set_init_from(init);
  cfg.mutable_train()->set_max_steps(kPruneSteps);
  cfg.mutable_train()->set_checkpoint_every(0);
  config::PruneConfig& p = *cfg.mutable_prune();
  p.set_latency_table(out + "_table.json");
  p.set_schedule(config::PruneConfig::fixed_count);
  p.set_begin_step(2);
  p.set_every(2);
  p.set_groups_per_step(2);
  p.set_saliency_batches(2);
  p.set_target_ratio(0.6);
  p.set_embedding_group(4);
  p.set_heads_group(1);
  p.set_qk_group(2);
  p.set_v_group(2);
  p.set_mlp_group(8);
  p.set_eta(1e-3);
  p.set_distill_weight(0.5);
  p.set_distill_temperature(2);
  return cfg;
}

// A table of this run's key (the per-rank batch is part of it) with the same numbers for every layout.
// Written by world rank 0.
void write_table(const config::RunConfig& cfg) {
  if (test_world().rank() != 0) return;
  auto cpu = make_backend(Device::cpu());
  multilinear_latency_table(latency_key_for(cfg, *cpu), {{4, 16}, {1, 4}, {2, 4}, {2, 4}, {8, 32}})
      .save(cfg.prune().latency_table());
}

std::map<int64_t, double> step_losses(const std::string& out_dir) {
  std::map<int64_t, double> out;
  std::ifstream in(out_dir + "/metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    const nlohmann::json j = nlohmann::json::parse(line);
    if (j.contains("loss")) out[j.at("step").get<int64_t>()] = j.at("loss").get<double>();  // not event lines
  }
  return out;
}

nlohmann::json pruned_state(const std::string& checkpoint) { return load_checkpoint(checkpoint).state.at("prune"); }

void check_pruning_under_data_parallelism(const std::string& kind, int data) {
  MpiCommunicator& world = test_world();
  if (world.size() < data) GTEST_SKIP() << "needs " << data << " ranks";
  const std::string dir = parallel_test_dir() + "/prune_" + kind + "_dp" + std::to_string(data);
  // The unpruned model and the one-process pruning run, on world rank 0.
  const std::string base = dir + "/base", single = dir + "/single", parallel = dir + "/parallel";
  const std::string init = checkpoint_dir(base, 6) + "/model.safetensors";
  TrainResult reference;
  if (world.rank() == 0) {
    config::RunConfig cfg = make_parallel_config(kind, Layout{}, base, RunSettings{});
    cfg.mutable_train()->set_max_steps(6);
    cfg.mutable_train()->set_checkpoint_every(0);
    std::ostringstream log;
    train_on_mesh(cfg, log, {}, nullptr);
    const config::RunConfig one = prune_config(kind, 1, init, single);
    write_table(one);
    reference = train_on_mesh(one, log, {}, nullptr);
    EXPECT_FALSE(reference.pruned_checkpoint.empty()) << log.str();
    EXPECT_EQ(reference.steps_done, kPruneSteps) << log.str();
  }
  const config::RunConfig cfg = prune_config(kind, data, init, parallel);
  write_table(cfg);
  world.barrier();

  const bool member = world.rank() < data;
  std::unique_ptr<MpiCommunicator> group = world.split_mpi(member ? 0 : 1, world.rank());
  if (member) {
    ProcessMesh mesh(*group, data, 1);
    PruneRecords records;
    std::ostringstream log;
    const TrainResult r = train_on_mesh(cfg, log, {&records}, &mesh);
    EXPECT_EQ(r.steps_done, kPruneSteps);
    if (group->rank() == 0) {
      EXPECT_NE(log.str().find(std::to_string(data) + " data x 1 tensor ranks"), std::string::npos) << log.str();
      EXPECT_NE(log.str().find("distillation: teacher"), std::string::npos) << log.str();
    }
    // Every rank recorded the same pruning steps with the same numbers as rank 0. (No ASSERT before the last
    // collective: a rank leaving early would leave the others waiting.)
    const int64_t n = static_cast<int64_t>(records.values.size());
    Tensor counts = Tensor::empty({data}, DType::F32);
    group->all_gather(counts, Tensor::from_vector({static_cast<float>(n)}, {1}));
    bool same_count = n > 0;
    for (int rank = 0; rank < data; ++rank) same_count &= counts.data<float>()[rank] == static_cast<float>(n);
    EXPECT_TRUE(same_count) << "rank " << group->rank() << " recorded " << n << " pruning numbers";
    if (same_count) {
      Tensor mine = Tensor::from_vector(std::vector<float>(records.values.begin(), records.values.end()), {n});
      Tensor all = Tensor::empty({n * data}, DType::F32);
      group->all_gather(all, mine);
      for (int rank = 1; rank < data; ++rank)
        for (int64_t i = 0; i < n; ++i)
          EXPECT_EQ(all.data<float>()[rank * n + i], all.data<float>()[i]) << "pruning number " << i << " of rank " << rank;
    }
    if (group->rank() == 0 && !r.pruned_checkpoint.empty() && !reference.pruned_checkpoint.empty()) {
      EXPECT_EQ(pruned_state(r.pruned_checkpoint).at("kept"), pruned_state(reference.pruned_checkpoint).at("kept"));
      EXPECT_EQ(load_checkpoint(r.pruned_checkpoint).model_shape,
                load_checkpoint(reference.pruned_checkpoint).model_shape);
      EXPECT_EQ(r.pruned_checkpoint.substr(parallel.size()), reference.pruned_checkpoint.substr(single.size()))
          << "the target was reached at another step";
      const auto want = step_losses(single), got = step_losses(parallel);
      for (int64_t step = 1; step <= kPruneSteps; ++step) {
        EXPECT_TRUE(got.count(step) && want.count(step)) << "no loss for step " << step;
        if (got.count(step) && want.count(step)) {
          EXPECT_NEAR(got.at(step), want.at(step), 1e-5 * std::abs(want.at(step))) << "step " << step;
        }
      }
    }
    if (group->rank() == 0) {
      EXPECT_FALSE(r.pruned_checkpoint.empty()) << log.str();
    }
  }
  world.barrier();
}

class PruningDataParallel : public ::testing::TestWithParam<std::string> {};

TEST_P(PruningDataParallel, TwoRanksDecideAsOneProcess) { check_pruning_under_data_parallelism(GetParam(), 2); }
TEST_P(PruningDataParallel, FourRanksDecideAsOneProcess) { check_pruning_under_data_parallelism(GetParam(), 4); }

INSTANTIATE_TEST_SUITE_P(GptAndVit, PruningDataParallel, ::testing::Values("gpt", "vit"));

}  // namespace
}  // namespace loom::testing
