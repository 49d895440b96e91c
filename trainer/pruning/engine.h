// The pruning engine: what a `prune:` run does at each training step, between the trainer's backward and its
// optimizer step (trainer/trainer.cc drives it; trainer/run.cc builds it).
//
// Per step t (1-based, the step whose gradients the parameters hold):
// - gradients_ready(): when a pruning decision falls within the next prune.saliency_batches steps, adds this
//   step's gradients to the saliency (saliency.h; terms built from the structure map, so the embedding axis
//   sums over every tensor it touches). Called after the data-parallel reduction, so every data rank adds the
//   same numbers and takes the same decisions. Then zeroes the gradients of the masked positions (a masked
//   embedding channel's LayerNorm weight still receives a gradient; the rest are exact zeros already).
// - after_update(t): when the schedule (schedule.h) makes t a pruning step and saliency was gathered, asks the
//   planner (planner.h) for the next groups, then masks the model (structure_map.h mask_model: master and
//   compute weights, the LayerNorms' active channels) and zeroes the AdamW moments of the masked positions, so
//   masked weights stay exactly zero while the others keep training. Returns true when the latency table's
//   prediction has reached the final target: the trainer then writes the shrunk checkpoint (shrink_checkpoint).
//
// The decisions so far (kept units) are saved in checkpoints (state.json "prune") and restored on resume.
// Errors (before any work, in the constructor): a table for another device/dtype/batch/tokens/mode, a grid that
// does not cover the model, a group wider than a structure it would prune (a pruned width below one group), an
// unreachable target, ZeRO-1 or tensor parallelism (not supported: a shard's saliency and masks would need the
// structure map's positions gathered over the tensor group), each naming the field. restore() refuses kept
// units below one group. Thread-safety: driven by the training thread only.
#pragma once
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/config.pb.h"
#include "trainer/models/model.h"
#include "trainer/models/structure_map.h"
#include "trainer/pruning/latency_table.h"
#include "trainer/pruning/planner.h"
#include "trainer/pruning/saliency.h"
#include "trainer/pruning/schedule.h"

namespace loom {

// The saliency structures of every axis of `map` (the same names and order), one term per (parameter,
// dimension) the axis owns slices of, sized by `layout` (the model's). Throws when two slices of one axis
// overlap on a parameter.
std::vector<SaliencyStructure> saliency_structures(const StructureMap& map, const ParameterLayout& layout);

// Kept units (planner form) <-> axis selection (structure-map form), by the map's axis names.
AxisSelection selection_of_units(const StructureMap& map, const ModelUnits& units);
// The per-unit saliencies of accumulator.saliencies() (structures from saliency_structures(map)) by axis.
ModelSaliency model_saliency(const StructureMap& map, const std::vector<std::vector<double>>& per_structure);

class PruningEngine {
 public:
  // `model` (not owned, outlives the engine) is the full, unpruned, single-process model; `table` was loaded
  // from prune.latency_table (`table_source` names it in errors). Checks everything listed above.
  PruningEngine(const config::RunConfig& cfg, Model& model, LatencyTable table, const std::string& table_source);

  void gradients_ready(int64_t step);
  // `first_moment`/`second_moment`: the optimizer's arenas (the model's layout). See the header comment.
  bool after_update(int64_t step, Tensor& first_moment, Tensor& second_moment);

  bool target_reached() const { return reached_; }
  const ModelUnits& kept() const { return kept_; }
  AxisSelection selection() const { return selection_of_units(map_, kept_); }
  ModelShape pruned_shape() const { return shrink_shape(model_.shape(), map_, selection()); }
  double original_ms() const { return original_ms_; }
  double final_target_ms() const { return target_ms_; }
  double predicted_ms() const { return predicted_ms_; }
  // Parameters the kept units own (the shrunk model's count).
  int64_t parameters() const { return parameters_; }
  int64_t groups_pruned() const { return groups_pruned_; }
  // Model FLOPs per sample (forward + backward) of the kept widths.
  double flops() const { return flops_; }
  // What the step record and log carry: {"parameters", "model_flops_per_sample", "predicted_ms",
  // "latency_ratio", "groups_pruned"}.
  nlohmann::json metrics() const;
  // {"kept": {axis: [indices]}, "target_reached": bool}: saved in checkpoints; restore() re-applies it
  // (masks included) on resume. restore throws naming `source` on a malformed value.
  nlohmann::json state() const;
  void restore(const nlohmann::json& state, Tensor& first_moment, Tensor& second_moment, const std::string& source);

 private:
  bool needs_saliency(int64_t step) const;
  void apply(Tensor& first_moment, Tensor& second_moment);
  double flops_of(const ModelShape& shape) const;  // model FLOPs per sample, forward + backward

  Model& model_;
  StructureMap map_;
  LatencyTable table_;
  PlannerOptions options_;
  PruneSchedule schedule_;
  int64_t saliency_batches_ = 1;
  SaliencyAccumulator accumulator_;
  ModelUnits original_, kept_;
  ArenaMask mask_;  // of kept_, flags on the model's device (no dims until the first decision)
  double original_ms_ = 0, target_ms_ = 0, predicted_ms_ = 0;
  double flops_ = 0;
  int64_t parameters_ = 0, groups_pruned_ = 0;
  bool reached_ = false;
};

}  // namespace loom
