#include "trainer/pruning/schedule.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace loom {
namespace {

bool is_curve(ScheduleKind k) { return k == ScheduleKind::Cubic || k == ScheduleKind::Linear; }

bool is_pruning_step(const PruneSchedule& s, int64_t step) {
  if (step < s.begin_step) return false;
  switch (s.kind) {
    case ScheduleKind::OneShot: return step == s.begin_step;
    case ScheduleKind::FixedCount: return (step - s.begin_step) % s.every == 0;
    default: return step <= s.end_step && ((step - s.begin_step) % s.every == 0 || step == s.end_step);
  }
}

}  // namespace

void check_schedule(const PruneSchedule& s) {
  LOOM_CHECK(s.begin_step >= 0, "prune.begin_step must be at least 0, got ", s.begin_step);
  LOOM_CHECK(s.every >= 1, "prune.every must be at least 1, got ", s.every);
  if (s.kind == ScheduleKind::FixedCount)
    LOOM_CHECK(s.groups_per_step >= 1, "prune.groups_per_step must be at least 1, got ", s.groups_per_step);
  if (is_curve(s.kind))
    LOOM_CHECK(s.end_step > s.begin_step, "prune.end_step (", s.end_step,
               ") must be set and after prune.begin_step (", s.begin_step, ") for the cubic and linear schedules");
}

double scheduled_reduction(const PruneSchedule& s, int64_t step, double s_f) {
  if (step < s.begin_step) return 0.0;
  if (!is_curve(s.kind) || step >= s.end_step) return s_f;
  const double progress = static_cast<double>(step - s.begin_step) / static_cast<double>(s.end_step - s.begin_step);
  if (s.kind == ScheduleKind::Linear) return s_f * progress;
  // s_t = s_f + (s_i − s_f)(1 − progress)³ with s_i = 0.
  return s_f - s_f * std::pow(1.0 - progress, 3);
}

PruneStepGoal schedule_goal(const PruneSchedule& s, int64_t step, double original_ms, double final_target_ms) {
  check_schedule(s);
  LOOM_CHECK(original_ms > 0 && final_target_ms > 0 && final_target_ms < original_ms,
             "pruning target ", final_target_ms, " ms must be positive and below the unpruned model's ", original_ms,
             " ms");
  PruneStepGoal goal;
  if (!is_pruning_step(s, step)) return goal;
  goal.prune = true;
  const double reduction = scheduled_reduction(s, step, 1.0 - final_target_ms / original_ms);
  goal.target_ms = original_ms * (1.0 - reduction);
  if (s.kind == ScheduleKind::FixedCount) goal.max_groups = s.groups_per_step;
  return goal;
}

}  // namespace loom
