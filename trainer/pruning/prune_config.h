// The `prune:` section of a run config (core/config.proto, PruneConfig) turned into the pruning library's
// options, with the checks the schema's per-field ranges cannot express (each error names the field).
// Thread-safe (pure functions).
#pragma once
#include <string>

#include "core/config.pb.h"
#include "trainer/pruning/planner.h"
#include "trainer/pruning/saliency.h"
#include "trainer/pruning/schedule.h"

namespace loom {

// Group sizes, η and the enabled structures (prune.structures: unknown or repeated names are errors naming
// prune.structures[i]; empty enables all five).
PlannerOptions planner_options(const config::PruneConfig& prune);
SaliencyKind saliency_kind(const config::PruneConfig& prune);
// Throws naming prune.end_step etc. (schedule.h: check_schedule).
PruneSchedule prune_schedule(const config::PruneConfig& prune);
// The final latency target in ms for a model predicted at original_ms: target_ratio × original_ms or
// target_ms. Exactly one of the two must be set, and the target must lie below original_ms; errors name the
// field. `field` receives the name of the one used (for check_target_reachable).
double final_target_ms(const config::PruneConfig& prune, double original_ms, std::string* field = nullptr);

}  // namespace loom
