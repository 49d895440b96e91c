#include "trainer/pruning/engine.h"

#include <algorithm>
#include <map>

#include "core/error.h"
#include "trainer/models/gpt.h"
#include "trainer/models/vit.h"
#include "trainer/pruning/prune_config.h"

namespace loom {
namespace {

std::vector<int32_t>* units_of(ModelUnits& u, const Axis& axis) {
  if (axis.kind == AxisKind::Embedding) return &u.embedding;
  BlockUnits& b = u.blocks.at(static_cast<size_t>(axis.block));
  switch (axis.kind) {
    case AxisKind::Heads: return &b.heads;
    case AxisKind::QkDims: return &b.qk_dim;
    case AxisKind::VDims: return &b.v_dim;
    default: return &b.mlp;
  }
}

std::vector<double>* saliency_of(ModelSaliency& s, const Axis& axis) {
  if (axis.kind == AxisKind::Embedding) return &s.embedding;
  BlockSaliency& b = s.blocks.at(static_cast<size_t>(axis.block));
  switch (axis.kind) {
    case AxisKind::Heads: return &b.heads;
    case AxisKind::QkDims: return &b.qk_dim;
    case AxisKind::VDims: return &b.v_dim;
    default: return &b.mlp;
  }
}

}  // namespace

std::vector<SaliencyStructure> saliency_structures(const StructureMap& map, const ParameterLayout& layout) {
  std::vector<SaliencyStructure> out;
  for (const Axis& axis : map.axes()) {
    // One term per (parameter, dimension); the slices of an axis on one of them own disjoint positions.
    std::map<std::pair<std::string, int>, size_t> term_of;
    SaliencyStructure s{axis.name, axis.size, {}};
    for (const ParamSlice& slice : axis.slices) {
      const auto key = std::make_pair(slice.param, slice.dim);
      auto it = term_of.find(key);
      if (it == term_of.end()) {
        it = term_of.emplace(key, s.terms.size()).first;
        const Shape& shape = layout.entry(slice.param).spec.shape;
        LOOM_CHECK(slice.dim < static_cast<int>(shape.size()), "saliency of axis '", axis.name, "': '", slice.param,
                   "' ", shape_str(shape), " has no dimension ", slice.dim);
        s.terms.push_back({slice.param, slice.dim, std::vector<int32_t>(static_cast<size_t>(shape[slice.dim]), -1)});
      }
      std::vector<int32_t>& unit_of = s.terms[it->second].unit_of_position;
      for (int64_t i = 0; i < axis.size; ++i)
        for (int64_t p : owned_positions(slice, i)) {
          LOOM_CHECK(p < static_cast<int64_t>(unit_of.size()), "saliency of axis '", axis.name, "': position ", p,
                     " is outside dimension ", slice.dim, " of '", slice.param, "'");
          LOOM_CHECK(unit_of[p] == -1 || unit_of[p] == i, "saliency of axis '", axis.name, "': position ", p,
                     " of dimension ", slice.dim, " of '", slice.param, "' belongs to indices ", unit_of[p], " and ", i);
          unit_of[p] = static_cast<int32_t>(i);
        }
    }
    out.push_back(std::move(s));
  }
  return out;
}

AxisSelection selection_of_units(const StructureMap& map, const ModelUnits& units) {
  AxisSelection sel;
  ModelUnits copy = units;
  for (const Axis& axis : map.axes()) {
    const std::vector<int32_t>& kept = *units_of(copy, axis);
    if (static_cast<int64_t>(kept.size()) == axis.size) continue;
    sel[axis.name] = std::vector<int64_t>(kept.begin(), kept.end());
  }
  return sel;
}

ModelSaliency model_saliency(const StructureMap& map, const std::vector<std::vector<double>>& per_structure) {
  LOOM_CHECK(per_structure.size() == map.axes().size(), "pruning: ", per_structure.size(),
             " saliency structures for ", map.axes().size(), " axes");
  ModelSaliency s;
  int blocks = 0;
  for (const Axis& axis : map.axes()) blocks = std::max(blocks, axis.block + 1);
  s.blocks.resize(static_cast<size_t>(blocks));
  for (size_t i = 0; i < per_structure.size(); ++i) *saliency_of(s, map.axes()[i]) = per_structure[i];
  return s;
}

PruningEngine::PruningEngine(const config::RunConfig& cfg, Model& model, LatencyTable table,
                             const std::string& table_source)
    : model_(model),
      map_(structure_map(model.shape())),
      table_(std::move(table)),
      options_(planner_options(cfg.prune())),
      schedule_(prune_schedule(cfg.prune())),
      saliency_batches_(cfg.prune().saliency_batches()),
      accumulator_(saliency_structures(map_, model.params().layout()), saliency_kind(cfg.prune()), model.params().layout()) {
  LOOM_CHECK(!cfg.parallel().zero1(), "prune: parallel.zero1 is not supported by pruning runs yet (set it false)");
  LOOM_CHECK(cfg.parallel().tensor() == 1, "prune: parallel.tensor must be 1 for pruning runs (tensor-parallel "
             "pruning is not supported yet), got ", cfg.parallel().tensor());
  LOOM_CHECK(schedule_.kind != ScheduleKind::OneShot || schedule_.begin_step >= 1,
             "prune.begin_step must be at least 1 for the one_shot schedule (a decision follows a step's gradients)");
  table_.check_matches(latency_key_for(cfg, model.backend()), table_source);
  const ModelShape& shape = model.shape();
  original_ = ModelUnits::full(shape.d_model, shape.blocks);
  kept_ = original_;
  // A grid that does not cover the model's widths throws here, naming the grid axis.
  original_ms_ = table_.model_ms(shape.d_model, shape.blocks);
  predicted_ms_ = original_ms_;
  check_groups_fit(original_, options_);
  std::string field;
  target_ms_ = loom::final_target_ms(cfg.prune(), original_ms_, &field);
  check_target_reachable(original_, table_, options_, target_ms_, field);
  parameters_ = arena_mask(model.params().layout(), map_, {}).kept_elements;
  flops_ = flops_of(shape);
}

bool PruningEngine::needs_saliency(int64_t step) const {
  if (reached_) return false;
  for (int64_t t = step; t < step + saliency_batches_; ++t)
    if (schedule_goal(schedule_, t, original_ms_, target_ms_).prune) return true;
  return false;
}

void PruningEngine::gradients_ready(int64_t step) {
  if (needs_saliency(step)) accumulator_.add_batch(model_.backend(), model_.params());
  if (!mask_.dims.empty()) apply_mask(model_.backend(), model_.params().grads(), mask_);
}

void PruningEngine::apply(Tensor& first_moment, Tensor& second_moment) {
  const AxisSelection sel = selection();
  mask_ = mask_model(model_, map_, sel);
  parameters_ = mask_.kept_elements;
  apply_mask(model_.backend(), first_moment, mask_);
  apply_mask(model_.backend(), second_moment, mask_);
  predicted_ms_ = table_.model_ms(kept_.embedding_width(), kept_.widths());
  flops_ = flops_of(pruned_shape());
}

double PruningEngine::flops_of(const ModelShape& shape) const {
  if (shape.is_vit()) return vit_flops_per_image(shape).model;
  return gpt_flops_per_token(shape, model_.tokens_per_sample()).model * static_cast<double>(model_.tokens_per_sample());
}

bool PruningEngine::after_update(int64_t step, Tensor& first_moment, Tensor& second_moment) {
  if (reached_) return true;
  const PruneStepGoal goal = schedule_goal(schedule_, step, original_ms_, target_ms_);
  if (!goal.prune || accumulator_.batches() == 0) return false;
  const ModelSaliency saliency = model_saliency(map_, accumulator_.saliencies());
  const PruneStepPlan plan = plan_pruning_step(kept_, saliency, table_, options_, goal.target_ms, goal.max_groups);
  accumulator_.reset();
  groups_pruned_ += static_cast<int64_t>(plan.pruned.size());
  if (!plan.pruned.empty()) {
    kept_ = plan.kept;
    apply(first_moment, second_moment);
  }
  reached_ = predicted_ms_ <= target_ms_;
  return reached_;
}

nlohmann::json PruningEngine::metrics() const {
  return {{"parameters", parameters_},
          {"model_flops_per_sample", flops_},
          {"predicted_ms", predicted_ms_},
          {"latency_ratio", predicted_ms_ / original_ms_},
          {"groups_pruned", groups_pruned_}};
}

nlohmann::json PruningEngine::state() const {
  nlohmann::json kept = nlohmann::json::object();
  for (const auto& [axis, indices] : selection()) kept[axis] = indices;
  return {{"kept", kept}, {"groups_pruned", groups_pruned_}, {"target_reached", reached_}};
}

void PruningEngine::restore(const nlohmann::json& state, Tensor& first_moment, Tensor& second_moment,
                            const std::string& source) {
  AxisSelection sel;
  try {
    for (const auto& [axis, indices] : state.at("kept").items()) sel[axis] = indices.get<std::vector<int64_t>>();
    groups_pruned_ = state.at("groups_pruned").get<int64_t>();
  } catch (const nlohmann::json::exception& e) {
    fail(source, ": \"prune\" is not a pruning state: ", e.what());
  }
  try {
    check_selection(map_, sel);
  } catch (const Error& e) {
    fail(source, ": \"prune\".kept: ", e.what());
  }
  ModelUnits kept = original_;
  for (const Axis& axis : map_.axes()) {
    const auto it = sel.find(axis.name);
    if (it != sel.end()) units_of(kept, axis)->assign(it->second.begin(), it->second.end());
  }
  check_kept_widths(original_, kept, options_, source + ": \"prune\".kept");
  kept_ = std::move(kept);
  if (!sel.empty()) apply(first_moment, second_moment);
  reached_ = predicted_ms_ <= target_ms_;
}

}  // namespace loom
