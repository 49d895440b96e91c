// The prune: config section: schema (enums by name), the cross-field checks naming their fields, and the
// command line: `loom train` refuses a prune: section without model.init_from, `loom latency-table` writes a
// table that loads and matches the run.
#include <gtest/gtest.h>

#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <fstream>

#include "core/config.h"
#include "tests/common/test_util.h"
#include "trainer/pruning/latency_table.h"
#include "trainer/pruning/prune_config.h"

namespace loom {
namespace {

using testing::run_loom;

const char* kBase = R"(
model: {kind: vit, n_layer: 2, d_model: 32, n_head: 2, mlp_dim: 64, image_size: 28, patch_size: 7,
        in_channels: 1, num_classes: 10}
data: {train: unused, batch_size: 4}
train: {max_steps: 1, device: cpu, progress: false}
)";

config::PruneConfig prune_of(const std::string& yaml) {
  return parse_run_config(std::string(kBase) + "prune: " + yaml + "\n", "p.yaml").prune();
}

TEST(PruningConfig, SectionMapsToTheLibrarysOptions) {
  const config::PruneConfig p = prune_of(
      "{structures: [mlp, heads], mlp_group: 16, eta: 0.01, saliency: taylor1, schedule: cubic, begin_step: 10, "
      "every: 5, end_step: 50, target_ratio: 0.5, latency_mode: inference}");
  const PlannerOptions o = planner_options(p);
  EXPECT_EQ(o.structures, (std::vector<PruneAxis>{PruneAxis::Mlp, PruneAxis::Heads}));
  EXPECT_EQ(o.groups.mlp, 16);
  EXPECT_EQ(o.groups.qk_dim, 8);  // default
  EXPECT_DOUBLE_EQ(o.eta, 0.01);
  EXPECT_EQ(saliency_kind(p), SaliencyKind::Taylor1);
  const PruneSchedule s = prune_schedule(p);
  EXPECT_EQ(s.kind, ScheduleKind::Cubic);
  EXPECT_EQ(s.begin_step, 10);
  EXPECT_EQ(s.end_step, 50);
  std::string field;
  EXPECT_DOUBLE_EQ(final_target_ms(p, 80, &field), 40);
  EXPECT_EQ(field, "prune.target_ratio");
  EXPECT_EQ(planner_options(prune_of("{}")).structures.size(), 5u);
  EXPECT_EQ(saliency_kind(prune_of("{}")), SaliencyKind::Taylor2);
  const std::string bad_enum = testing::error_message([] { prune_of("{schedule: exponential}"); });
  EXPECT_NE(bad_enum.find("prune.schedule"), std::string::npos) << bad_enum;
}

TEST(PruningConfig, CrossFieldErrorsNameTheField) {
  auto message = [](const std::function<void()>& f) { return testing::error_message(f); };
  EXPECT_NE(message([] { planner_options(prune_of("{structures: [mlp, layers]}")); }).find("prune.structures[1]"),
            std::string::npos);
  EXPECT_NE(message([] { planner_options(prune_of("{structures: [mlp, mlp]}")); }).find("listed twice"),
            std::string::npos);
  EXPECT_NE(message([] { prune_schedule(prune_of("{schedule: linear}")); }).find("prune.end_step"), std::string::npos);
  EXPECT_NE(message([] { final_target_ms(prune_of("{}"), 10); }).find("neither"), std::string::npos);
  EXPECT_NE(message([] { final_target_ms(prune_of("{target_ratio: 0.5, target_ms: 3}"), 10); }).find("both"),
            std::string::npos);
  EXPECT_NE(message([] { final_target_ms(prune_of("{target_ms: 12}"), 10); }).find("prune.target_ms"),
            std::string::npos);
}

TEST(PruningConfig, CommandLine) {
  testing::TempDir dir("prune-cli");
  const std::string config =
      dir.file("c.yaml", std::string(kBase) + "prune: {embedding_group: 16, mlp_group: 32, target_ratio: 0.5, "
                                              "latency_grid: {points_per_axis: 2, warmup: 0, repeats: 1}}\n");
  const testing::CommandOutcome train = run_loom("train " + config);
  EXPECT_EQ(train.status, 1) << train.output;
  // A pruning run starts from a trained checkpoint: none is named.
  EXPECT_NE(train.output.find("model.init_from"), std::string::npos) << train.output;

  const testing::CommandOutcome table = run_loom("latency-table " + config + " data.batch_size=2 --out " + dir / "t.json");
  ASSERT_EQ(table.status, 0) << table.output;
  const LatencyTable t = LatencyTable::load(dir / "t.json");
  const config::RunConfig cfg = load_run_config(config, {"data.batch_size=2"});
  auto be = make_backend(Device::cpu());
  EXPECT_NO_THROW(t.check_matches(latency_key_for(cfg, *be), dir / "t.json"));
  EXPECT_EQ(t.grid().embedding, (std::vector<int64_t>{16, 32}));
  EXPECT_EQ(t.grid().mlp, (std::vector<int64_t>{32, 64}));
  EXPECT_EQ(t.model_kind(), "vit");

  const testing::CommandOutcome missing_out = run_loom("latency-table " + config);
  EXPECT_NE(missing_out.status, 0);
  EXPECT_NE(missing_out.output.find("--out"), std::string::npos) << missing_out.output;
}

}  // namespace
}  // namespace loom
