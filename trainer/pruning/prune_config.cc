#include "trainer/pruning/prune_config.h"

#include <algorithm>

#include "core/error.h"

namespace loom {

PlannerOptions planner_options(const config::PruneConfig& p) {
  PlannerOptions o;
  o.groups = {p.embedding_group(), p.heads_group(), p.qk_group(), p.v_group(), p.mlp_group()};
  o.eta = p.eta();
  if (p.structures_size() == 0) return o;
  o.structures.clear();
  for (int i = 0; i < p.structures_size(); ++i) {
    const std::string field = "prune.structures[" + std::to_string(i) + "]";
    const PruneAxis a = parse_prune_axis(p.structures(i), field);
    LOOM_CHECK(std::find(o.structures.begin(), o.structures.end(), a) == o.structures.end(), field, ": \"",
               p.structures(i), "\" is listed twice");
    o.structures.push_back(a);
  }
  return o;
}

SaliencyKind saliency_kind(const config::PruneConfig& p) {
  switch (p.saliency()) {
    case config::PruneConfig::taylor1: return SaliencyKind::Taylor1;
    case config::PruneConfig::magnitude: return SaliencyKind::Magnitude;
    default: return SaliencyKind::Taylor2;
  }
}

PruneSchedule prune_schedule(const config::PruneConfig& p) {
  PruneSchedule s;
  switch (p.schedule()) {
    case config::PruneConfig::cubic: s.kind = ScheduleKind::Cubic; break;
    case config::PruneConfig::linear: s.kind = ScheduleKind::Linear; break;
    case config::PruneConfig::one_shot: s.kind = ScheduleKind::OneShot; break;
    default: s.kind = ScheduleKind::FixedCount; break;
  }
  s.begin_step = p.begin_step();
  s.every = p.every();
  s.end_step = p.has_end_step() ? p.end_step() : 0;
  s.groups_per_step = p.groups_per_step();
  check_schedule(s);
  return s;
}

double final_target_ms(const config::PruneConfig& p, double original_ms, std::string* field) {
  LOOM_CHECK(p.has_target_ratio() != p.has_target_ms(),
             "prune: set exactly one of prune.target_ratio and prune.target_ms (",
             p.has_target_ratio() ? "both" : "neither", " is set)");
  const std::string name = p.has_target_ratio() ? "prune.target_ratio" : "prune.target_ms";
  const double target = p.has_target_ratio() ? p.target_ratio() * original_ms : p.target_ms();
  LOOM_CHECK(target > 0 && target < original_ms, name, ": the target of ", target,
             " ms must lie below the unpruned model's predicted ", original_ms, " ms");
  if (field) *field = name;
  return target;
}

}  // namespace loom
