// Pruning schedules: which steps prune, the group budget, and the latency target per step for NViT's fixed
// count, Zhu & Gupta's cubic, linear and one-shot schedules.
#include <gtest/gtest.h>

#include <cmath>

#include "tests/common/test_util.h"
#include "trainer/pruning/schedule.h"

namespace loom {
namespace {

TEST(PruningSchedule, FixedCountPrunesEveryKStepsWithABudgetTowardTheFinalTarget) {
  PruneSchedule s{ScheduleKind::FixedCount, /*begin=*/10, /*every=*/100, /*end=*/0, /*groups=*/32};
  EXPECT_FALSE(schedule_goal(s, 0, 100, 54).prune);
  EXPECT_FALSE(schedule_goal(s, 109, 100, 54).prune);
  for (int64_t step : {10, 110, 1010}) {
    const PruneStepGoal g = schedule_goal(s, step, 100, 54);
    EXPECT_TRUE(g.prune) << step;
    EXPECT_DOUBLE_EQ(g.target_ms, 54);
    EXPECT_EQ(g.max_groups, 32);
  }
}

TEST(PruningSchedule, CubicFollowsZhuAndGupta) {
  // t0 = 100, Δt = 50, n = 4 (end 300); s_f = 1 - 40/100 = 0.6.
  PruneSchedule s{ScheduleKind::Cubic, 100, 50, 300, 0};
  const double s_f = 0.6;
  for (int64_t t : {100, 150, 200, 250, 300}) {
    const double expected_s = s_f + (0.0 - s_f) * std::pow(1.0 - (t - 100) / 200.0, 3);
    const PruneStepGoal g = schedule_goal(s, t, 100, 40);
    EXPECT_TRUE(g.prune) << t;
    EXPECT_NEAR(g.target_ms, 100 * (1 - expected_s), 1e-12) << t;
    EXPECT_EQ(g.max_groups, -1);
  }
  EXPECT_NEAR(schedule_goal(s, 300, 100, 40).target_ms, 40, 1e-12);
  EXPECT_FALSE(schedule_goal(s, 175, 100, 40).prune);
  EXPECT_FALSE(schedule_goal(s, 350, 100, 40).prune);  // done at end_step
  // Prunes fast early: the first interval removes more than the last.
  const double first = scheduled_reduction(s, 150, s_f) - scheduled_reduction(s, 100, s_f);
  const double last = scheduled_reduction(s, 300, s_f) - scheduled_reduction(s, 250, s_f);
  EXPECT_GT(first, 10 * last);
  EXPECT_EQ(scheduled_reduction(s, 50, s_f), 0.0);
}

TEST(PruningSchedule, LinearReachesTheTargetAtEndStepEvenWhenTheIntervalDoesNotDivide) {
  PruneSchedule s{ScheduleKind::Linear, 0, 30, 100, 0};
  EXPECT_NEAR(schedule_goal(s, 30, 200, 100).target_ms, 200 * (1 - 0.5 * 0.3), 1e-12);
  EXPECT_NEAR(schedule_goal(s, 90, 200, 100).target_ms, 200 * (1 - 0.5 * 0.9), 1e-12);
  const PruneStepGoal end = schedule_goal(s, 100, 200, 100);
  EXPECT_TRUE(end.prune);
  EXPECT_NEAR(end.target_ms, 100, 1e-12);
  EXPECT_FALSE(schedule_goal(s, 120, 200, 100).prune);
  // Monotone: the target never rises.
  double previous = 200;
  for (int64_t t = 0; t <= 100; t += 30) {
    const double target = schedule_goal(s, t, 200, 100).target_ms;
    EXPECT_LE(target, previous);
    previous = target;
  }
}

TEST(PruningSchedule, OneShotPrunesOnceToTheTarget) {
  PruneSchedule s{ScheduleKind::OneShot, 5, 1, 0, 0};
  const PruneStepGoal g = schedule_goal(s, 5, 10, 5);
  EXPECT_TRUE(g.prune);
  EXPECT_DOUBLE_EQ(g.target_ms, 5);
  EXPECT_EQ(g.max_groups, -1);
  EXPECT_FALSE(schedule_goal(s, 4, 10, 5).prune);
  EXPECT_FALSE(schedule_goal(s, 6, 10, 5).prune);
}

TEST(PruningSchedule, RejectsSchedulesThatCannotRun) {
  auto message = [](PruneSchedule s) { return testing::error_message([&] { schedule_goal(s, 0, 10, 5); }); };
  EXPECT_NE(message({ScheduleKind::Cubic, 10, 5, 10, 0}).find("prune.end_step"), std::string::npos);
  EXPECT_NE(message({ScheduleKind::Linear, 0, 5, 0, 0}).find("prune.end_step"), std::string::npos);
  EXPECT_NE(message({ScheduleKind::FixedCount, 0, 0, 0, 1}).find("prune.every"), std::string::npos);
  EXPECT_NE(message({ScheduleKind::FixedCount, 0, 5, 0, 0}).find("prune.groups_per_step"), std::string::npos);
  EXPECT_NE(testing::error_message([] { schedule_goal({}, 0, 10, 12); }).find("below the unpruned"),
            std::string::npos);
}

}  // namespace
}  // namespace loom
