// When a pruning run prunes, and how far: pure functions of the step (no state, thread-safe).
//
// Pruning progress is measured in latency: the reduction s = 1 − target/original of the model's predicted
// latency (latency_table.h), from s_i = 0 (the unpruned model) to s_f = 1 − final_target/original. At each
// pruning step the planner (planner.h) removes the lowest-scored groups until the predicted latency is at most
// the step's target, or until the step's group budget is spent.
// - FixedCount (NViT): every `every` steps from begin_step, at most groups_per_step groups, aiming at the final
//   target directly; pruning stops once it is reached.
// - Cubic (Zhu & Gupta 2017): s_t = s_f + (s_i − s_f)·(1 − (t − t0)/(n·Δt))³ for t in [t0, t0 + n·Δt], with
//   t0 = begin_step, Δt = every and t0 + n·Δt = end_step: fast early, slow near the end; no group budget.
// - Linear: s_t = s_i + (s_f − s_i)·(t − t0)/(end_step − t0) on the same steps.
// - OneShot: everything at begin_step.
// The curve kinds prune on steps t0, t0 + Δt, ... up to end_step, and also on end_step itself when the
// interval does not divide, so the final target is always asked for.
#pragma once
#include <cstdint>

namespace loom {

enum class ScheduleKind { FixedCount, Cubic, Linear, OneShot };

struct PruneSchedule {
  ScheduleKind kind = ScheduleKind::FixedCount;
  int64_t begin_step = 0;       // t0
  int64_t every = 100;          // Δt (FixedCount, Cubic, Linear)
  int64_t end_step = 0;         // Cubic, Linear: the step at which the final target is reached (> begin_step)
  int64_t groups_per_step = 1;  // FixedCount
};

// What the planner is asked to do at one step.
struct PruneStepGoal {
  bool prune = false;         // false: not a pruning step (the other fields are then 0 / -1)
  double target_ms = 0;       // prune until the predicted latency is at most this
  int64_t max_groups = -1;    // at most this many groups this step (-1: no limit)
};

// Throws loom::Error (naming prune.every / prune.end_step / prune.groups_per_step) when the schedule cannot
// run: every < 1, groups_per_step < 1, or a curve without end_step > begin_step.
void check_schedule(const PruneSchedule& schedule);

// The latency reduction s_t in [0, s_f] the curve kinds ask for at step t (s_i = 0 before t0, s_f from
// end_step on). FixedCount and OneShot: s_f from begin_step on.
double scheduled_reduction(const PruneSchedule& schedule, int64_t step, double final_reduction);

// The goal at `step` for a model whose unpruned prediction is original_ms and whose final target is
// final_target_ms (< original_ms). Calls check_schedule.
PruneStepGoal schedule_goal(const PruneSchedule& schedule, int64_t step, double original_ms, double final_target_ms);

}  // namespace loom
