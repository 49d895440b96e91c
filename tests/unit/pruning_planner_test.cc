// The pruning planner on a synthetic latency table whose values are a known multilinear function of the widths
// (so every lookup is exact): groups formed from the least salient units (remainder first), the NViT score
// trading saliency against latency saved, the group budget, the one-group floor, the stop at the target, and
// the unreachable-target and bad-input errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "tests/common/test_util.h"
#include "trainer/pruning/planner.h"

namespace loom {
namespace {

// block = 0.5 + 0.001·E·M + 0.002·E·H·Dqk + 0.001·E·H·Dv; fixed = 0.01·E.
double block_fn(double E, double H, double Q, double V, double M) {
  return 0.5 + 0.001 * E * M + 0.002 * E * H * Q + 0.001 * E * H * V;
}

LatencyTable synthetic_table() {
  LatencyGrid g{{8, 16, 24, 32}, {1, 2, 3, 4}, {4, 8}, {4, 8}, {4, 8, 12, 16}};
  std::vector<double> block, fixed;
  for (int64_t E : g.embedding) {
    fixed.push_back(0.01 * E);
    for (int64_t H : g.heads)
      for (int64_t Q : g.qk_dim)
        for (int64_t V : g.v_dim)
          for (int64_t M : g.mlp) block.push_back(block_fn(E, H, Q, V, M));
  }
  return LatencyTable({"test", "f64", 1, 1, LatencyMode::Training}, g, block, fixed);
}

PlannerOptions options(double eta, std::vector<PruneAxis> axes) {
  PlannerOptions o;
  o.groups = {8, 1, 4, 4, 4};
  o.eta = eta;
  o.structures = std::move(axes);
  return o;
}

// Two blocks of (H 4, Dqk 8, Dv 8, M 14) at E 32, saliency = index + 1 scaled per axis (so low indices are the
// least salient), except where a test overrides it.
struct Fixture {
  std::vector<BlockWidths> widths{{4, 8, 8, 14}, {4, 8, 8, 14}};
  ModelUnits units = ModelUnits::full(32, widths);
  ModelSaliency saliency;
  Fixture() {
    auto ramp = [](int64_t n, double scale) {
      std::vector<double> v;
      for (int64_t i = 0; i < n; ++i) v.push_back(scale * static_cast<double>(i + 1));
      return v;
    };
    saliency.embedding = ramp(32, 1);
    for (size_t b = 0; b < widths.size(); ++b)
      saliency.blocks.push_back({ramp(4, 1), ramp(8, 1), ramp(8, 1), ramp(14, 1)});
  }
};

TEST(PruningPlanner, LookupsOfTheSyntheticTableAreExact) {
  const LatencyTable t = synthetic_table();
  EXPECT_NEAR(t.block_ms(20, {3, 5, 7, 14}), block_fn(20, 3, 5, 7, 14), 1e-12);
  EXPECT_NEAR(t.model_ms(32, {{4, 8, 8, 14}, {1, 4, 4, 4}}),
              0.32 + block_fn(32, 4, 8, 8, 14) + block_fn(32, 1, 4, 4, 4), 1e-12);
}

TEST(PruningPlanner, WithoutLatencyWeightPrunesTheLeastSalientGroupsRemainderFirst) {
  Fixture f;
  // Block 1's MLP is the least salient layer; its 14 neurons form groups of 4 from the least salient: the
  // remainder (2) first.
  f.saliency.blocks[1].mlp = {9, 8, 0.5, 7, 6, 0.1, 5, 4, 3, 2, 1, 0.2, 0.3, 0.4};
  for (auto& v : f.saliency.blocks[0].mlp) v += 100;
  const LatencyTable t = synthetic_table();
  const PruneStepPlan plan = plan_pruning_step(f.units, f.saliency, t, options(0, {PruneAxis::Mlp}), 0, 2);
  ASSERT_EQ(plan.pruned.size(), 2u);
  EXPECT_EQ(plan.pruned[0].block, 1);
  EXPECT_EQ(plan.pruned[0].units, (std::vector<int32_t>{5, 11}));          // saliencies 0.1, 0.2
  EXPECT_EQ(plan.pruned[1].units, (std::vector<int32_t>{2, 10, 12, 13}));  // 0.5, 1, 0.3, 0.4
  EXPECT_NEAR(plan.pruned[0].saliency, 0.1 + 0.2, 1e-12);
  EXPECT_EQ(plan.kept.blocks[1].mlp, (std::vector<int32_t>{0, 1, 3, 4, 6, 7, 8, 9}));
  EXPECT_EQ(plan.kept.blocks[0].mlp.size(), 14u);
  EXPECT_NEAR(plan.predicted_ms, t.model_ms(32, {{4, 8, 8, 14}, {4, 8, 8, 8}}), 1e-12);
  EXPECT_FALSE(plan.target_reached);
}

TEST(PruningPlanner, LatencyWeightPrefersTheGroupThatSavesMostTime) {
  Fixture f;
  // Saliency equal per unit on every axis: with η > 0 the largest latency saving wins. At E 32 removing one
  // head saves 0.002·32·8 + 0.001·32·8 = 0.768 ms, a v group 0.001·32·4·4 = 0.512 ms, the MLP remainder pair
  // 0.001·32·2 = 0.064 ms.
  for (auto& b : f.saliency.blocks) {
    std::fill(b.heads.begin(), b.heads.end(), 1.0);
    std::fill(b.v_dim.begin(), b.v_dim.end(), 0.25);
    std::fill(b.mlp.begin(), b.mlp.end(), 0.25);
  }
  const LatencyTable t = synthetic_table();
  const auto axes = std::vector<PruneAxis>{PruneAxis::Heads, PruneAxis::VDim, PruneAxis::Mlp};
  // η = 0: the MLP remainder (2 units, saliency 0.5) is cheapest; η = 10: the head (1 − 7.68) beats the v group
  // (1 − 5.12) and the MLP.
  EXPECT_EQ(plan_pruning_step(f.units, f.saliency, t, options(0, axes), 0, 1).pruned[0].axis, PruneAxis::Mlp);
  const PruneStepPlan plan = plan_pruning_step(f.units, f.saliency, t, options(10, axes), 0, 1);
  ASSERT_EQ(plan.pruned.size(), 1u);
  EXPECT_EQ(plan.pruned[0].axis, PruneAxis::Heads);
  EXPECT_NEAR(plan.pruned[0].latency_saved_ms, 0.768, 1e-12);
  EXPECT_NEAR(plan.pruned[0].score, 1 - 10 * 0.768, 1e-12);
}

TEST(PruningPlanner, EmbeddingGroupsSaveTimeInEveryBlockAndTheFixedParts) {
  Fixture f;
  const LatencyTable t = synthetic_table();
  const PruneStepPlan plan = plan_pruning_step(f.units, f.saliency, t, options(0, {PruneAxis::Embedding}), 0, 1);
  ASSERT_EQ(plan.pruned.size(), 1u);
  EXPECT_EQ(plan.pruned[0].units, (std::vector<int32_t>{0, 1, 2, 3, 4, 5, 6, 7}));
  const double expected = t.model_ms(32, f.widths) - t.model_ms(24, f.widths);
  EXPECT_NEAR(plan.pruned[0].latency_saved_ms, expected, 1e-12);
  EXPECT_GT(expected, 2 * (t.block_ms(32, f.widths[0]) - t.block_ms(24, f.widths[0])) - 1e-12);
  EXPECT_EQ(plan.kept.embedding_width(), 24);
}

TEST(PruningPlanner, StopsAtTheTargetAndNeverGoesBelowOneGroup) {
  Fixture f;
  const LatencyTable t = synthetic_table();
  const PlannerOptions all = options(1e-3, {PruneAxis::Embedding, PruneAxis::Heads, PruneAxis::QkDim,
                                            PruneAxis::VDim, PruneAxis::Mlp});
  const double original = t.model_ms(32, f.widths);
  const double target = 0.6 * original;
  const PruneStepPlan plan = plan_pruning_step(f.units, f.saliency, t, all, target);
  EXPECT_TRUE(plan.target_reached);
  EXPECT_LE(plan.predicted_ms, target);
  // Minimal: before the last group the prediction was still above the target.
  ASSERT_FALSE(plan.pruned.empty());
  EXPECT_GT(plan.predicted_ms + plan.pruned.back().latency_saved_ms, target);
  // Nothing to do when the target already holds.
  EXPECT_TRUE(plan_pruning_step(plan.kept, f.saliency, t, all, target).pruned.empty());

  // Target 0: everything goes down to one group (E 8, H 1, Dqk 4, Dv 4, M 4) and no further.
  const PruneStepPlan floor = plan_pruning_step(f.units, f.saliency, t, all, 0);
  EXPECT_FALSE(floor.target_reached);
  EXPECT_EQ(floor.kept.embedding_width(), 8);
  for (const auto& w : floor.kept.widths()) EXPECT_EQ(w, (BlockWidths{1, 4, 4, 4}));
  EXPECT_EQ(floor.kept.widths(), smallest_units(f.units, all).widths());
  EXPECT_NEAR(floor.predicted_ms, t.model_ms(8, {{1, 4, 4, 4}, {1, 4, 4, 4}}), 1e-12);
  // The most salient units survive: the kept MLP neurons are the top 4 (indices 10..13).
  EXPECT_EQ(floor.kept.blocks[0].mlp, (std::vector<int32_t>{10, 11, 12, 13}));
}

TEST(PruningPlanner, UnreachableTargetsAndBadInputsAreErrorsNamingTheField) {
  Fixture f;
  const LatencyTable t = synthetic_table();
  const PlannerOptions mlp_only = options(0, {PruneAxis::Mlp});
  const double floor_ms = t.model_ms(32, {{4, 8, 8, 4}, {4, 8, 8, 4}});
  EXPECT_NO_THROW(check_target_reachable(f.units, t, mlp_only, floor_ms, "prune.target_ms"));
  const std::string m = testing::error_message(
      [&] { check_target_reachable(f.units, t, mlp_only, floor_ms - 0.01, "prune.target_ratio"); });
  EXPECT_NE(m.find("prune.target_ratio"), std::string::npos) << m;
  EXPECT_NE(m.find("cannot be reached"), std::string::npos) << m;

  ModelSaliency short_saliency = f.saliency;
  short_saliency.blocks[1].qk_dim.resize(5);
  const std::string s = testing::error_message([&] { plan_pruning_step(f.units, short_saliency, t, mlp_only, 0); });
  EXPECT_NE(s.find("blocks[1].qk_dim has 5 saliencies"), std::string::npos) << s;

  ModelSaliency nan_saliency = f.saliency;
  nan_saliency.blocks[0].mlp[3] = std::nan("");
  EXPECT_NE(testing::error_message([&] { plan_pruning_step(f.units, nan_saliency, t, mlp_only, 0); })
                .find("blocks[0].mlp unit 3 is nan"),
            std::string::npos);

  ModelUnits unsorted = f.units;
  std::swap(unsorted.blocks[0].heads[0], unsorted.blocks[0].heads[1]);
  EXPECT_NE(testing::error_message([&] { plan_pruning_step(unsorted, f.saliency, t, mlp_only, 0); })
                .find("blocks[0].heads must be ascending"),
            std::string::npos);

  // A model wider than the table's grid: the lookup names the axis.
  ModelUnits wide = ModelUnits::full(32, {{4, 8, 8, 20}, {4, 8, 8, 14}});
  ModelSaliency wide_saliency = f.saliency;
  wide_saliency.blocks[0].mlp.resize(20, 1.0);
  const std::string g = testing::error_message([&] { plan_pruning_step(wide, wide_saliency, t, mlp_only, 0); });
  EXPECT_NE(g.find("grid.mlp"), std::string::npos) << g;

  EXPECT_EQ(parse_prune_axis("qk_dim", "prune.structures[0]"), PruneAxis::QkDim);
  EXPECT_NE(testing::error_message([] { parse_prune_axis("layers", "prune.structures[2]"); })
                .find("prune.structures[2]"),
            std::string::npos);
}

}  // namespace
}  // namespace loom
