#include "trainer/pruning/planner.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.h"

namespace loom {
namespace {

constexpr PruneAxis kAxes[5] = {PruneAxis::Embedding, PruneAxis::Heads, PruneAxis::QkDim, PruneAxis::VDim,
                                PruneAxis::Mlp};

std::vector<int32_t> iota_units(int64_t n) {
  std::vector<int32_t> v(static_cast<size_t>(n));
  std::iota(v.begin(), v.end(), 0);
  return v;
}

int64_t group_size(const GroupSizes& g, PruneAxis a) {
  switch (a) {
    case PruneAxis::Embedding: return g.embedding;
    case PruneAxis::Heads: return g.heads;
    case PruneAxis::QkDim: return g.qk_dim;
    case PruneAxis::VDim: return g.v_dim;
    default: return g.mlp;
  }
}

// The kept units of layer (axis, block) in `units`; block is ignored for the embedding.
template <typename Units>
auto& layer(Units& units, PruneAxis a, int block) {
  switch (a) {
    case PruneAxis::Embedding: return units.embedding;
    case PruneAxis::Heads: return units.blocks[block].heads;
    case PruneAxis::QkDim: return units.blocks[block].qk_dim;
    case PruneAxis::VDim: return units.blocks[block].v_dim;
    default: return units.blocks[block].mlp;
  }
}

// The width of a block axis (not the embedding) in `w`.
int64_t& width_of(BlockWidths& w, PruneAxis a) {
  switch (a) {
    case PruneAxis::Heads: return w.heads;
    case PruneAxis::QkDim: return w.qk_dim;
    case PruneAxis::VDim: return w.v_dim;
    default: return w.mlp_dim;
  }
}

// Size of a layer's next group: the remainder first, then whole groups; 0 when it may not shrink.
int64_t next_group_size(int64_t count, int64_t group) {
  const int64_t size = count % group ? count % group : group;
  return count - size >= group ? size : 0;
}

// The config field of an axis's group size.
const char* group_field(PruneAxis a) {
  switch (a) {
    case PruneAxis::Embedding: return "prune.embedding_group";
    case PruneAxis::Heads: return "prune.heads_group";
    case PruneAxis::QkDim: return "prune.qk_group";
    case PruneAxis::VDim: return "prune.v_group";
    default: return "prune.mlp_group";
  }
}

bool enabled(const PlannerOptions& o, PruneAxis a) {
  return std::find(o.structures.begin(), o.structures.end(), a) != o.structures.end();
}

std::string layer_name(PruneAxis a, int block) {
  return a == PruneAxis::Embedding ? "embedding" : "blocks[" + std::to_string(block) + "]." + prune_axis_name(a);
}

void check_inputs(const ModelUnits& current, const ModelSaliency& saliency, const PlannerOptions& options) {
  LOOM_CHECK(saliency.blocks.size() == current.blocks.size(), "pruning planner: saliencies for ",
             saliency.blocks.size(), " blocks, the model has ", current.blocks.size());
  for (PruneAxis a : kAxes) {
    LOOM_CHECK(group_size(options.groups, a) >= 1, "pruning planner: the ", prune_axis_name(a),
               " group size must be at least 1, got ", group_size(options.groups, a));
    const int blocks = a == PruneAxis::Embedding ? 1 : static_cast<int>(current.blocks.size());
    for (int b = 0; b < blocks; ++b) {
      const std::vector<int32_t>& kept = layer(current, a, b);
      const std::vector<double>& values = layer(saliency, a, b);
      LOOM_CHECK(!kept.empty(), "pruning planner: ", layer_name(a, b), " keeps no unit");
      for (size_t i = 0; i < kept.size(); ++i) {
        LOOM_CHECK(kept[i] >= 0 && (i == 0 || kept[i] > kept[i - 1]), "pruning planner: the kept units of ",
                   layer_name(a, b), " must be ascending, unique and non-negative (entry ", i, " is ", kept[i], ")");
      }
      LOOM_CHECK(static_cast<int64_t>(values.size()) > kept.back(), "pruning planner: ", layer_name(a, b), " has ",
                 values.size(), " saliencies but keeps unit ", kept.back());
      for (int32_t u : kept)
        LOOM_CHECK(std::isfinite(values[u]), "pruning planner: the saliency of ", layer_name(a, b), " unit ", u,
                   " is ", values[u], " (non-finite gradients?)");
    }
  }
}

struct Candidate {
  PruneAxis axis;
  int block;
  std::vector<int32_t> units;
  double saliency, saved, score;
};

}  // namespace

const char* prune_axis_name(PruneAxis a) {
  switch (a) {
    case PruneAxis::Embedding: return "embedding";
    case PruneAxis::Heads: return "heads";
    case PruneAxis::QkDim: return "qk_dim";
    case PruneAxis::VDim: return "v_dim";
    default: return "mlp";
  }
}

PruneAxis parse_prune_axis(const std::string& name, const std::string& field) {
  for (PruneAxis a : kAxes)
    if (name == prune_axis_name(a)) return a;
  fail(field, ": expected embedding, heads, qk_dim, v_dim or mlp, got \"", name, "\"");
}

ModelUnits ModelUnits::full(int64_t embedding, const std::vector<BlockWidths>& blocks) {
  ModelUnits u;
  u.embedding = iota_units(embedding);
  for (const auto& w : blocks)
    u.blocks.push_back({iota_units(w.heads), iota_units(w.qk_dim), iota_units(w.v_dim), iota_units(w.mlp_dim)});
  return u;
}

std::vector<BlockWidths> ModelUnits::widths() const {
  std::vector<BlockWidths> out;
  for (const auto& b : blocks)
    out.push_back({static_cast<int64_t>(b.heads.size()), static_cast<int64_t>(b.qk_dim.size()),
                   static_cast<int64_t>(b.v_dim.size()), static_cast<int64_t>(b.mlp.size())});
  return out;
}

PruneStepPlan plan_pruning_step(const ModelUnits& current, const ModelSaliency& saliency, const LatencyTable& table,
                                const PlannerOptions& options, double target_ms, int64_t max_groups) {
  check_inputs(current, saliency, options);
  PruneStepPlan plan;
  plan.kept = current;
  ModelUnits& kept = plan.kept;
  std::vector<BlockWidths> widths = kept.widths();
  double predicted = table.model_ms(kept.embedding_width(), widths);

  // The next group of one layer and its score, or nothing when the layer may not shrink.
  auto candidate = [&](PruneAxis a, int b, Candidate& out) {
    const std::vector<int32_t>& units = layer(kept, a, b);
    const std::vector<double>& values = layer(saliency, a, b);
    const int64_t size = next_group_size(static_cast<int64_t>(units.size()), group_size(options.groups, a));
    if (size == 0) return false;
    std::vector<int32_t> order = units;
    std::stable_sort(order.begin(), order.end(), [&](int32_t x, int32_t y) { return values[x] < values[y]; });
    order.resize(static_cast<size_t>(size));
    std::sort(order.begin(), order.end());
    double sum = 0;
    for (int32_t u : order) sum += values[u];
    double after = 0;
    if (a == PruneAxis::Embedding) {
      after = table.model_ms(kept.embedding_width() - size, widths);
    } else {
      BlockWidths w = widths[b];
      width_of(w, a) -= size;
      after = predicted - table.block_ms(kept.embedding_width(), widths[b]) + table.block_ms(kept.embedding_width(), w);
    }
    out = {a, b, std::move(order), sum, predicted - after, 0};
    out.score = sum - options.eta * out.saved;
    return true;
  };

  while (predicted > target_ms && (max_groups < 0 || static_cast<int64_t>(plan.pruned.size()) < max_groups)) {
    bool found = false;
    Candidate best{}, c{};
    for (PruneAxis a : kAxes) {
      if (!enabled(options, a)) continue;
      const int blocks = a == PruneAxis::Embedding ? 1 : static_cast<int>(kept.blocks.size());
      for (int b = 0; b < blocks; ++b)
        if (candidate(a, b, c) && (!found || c.score < best.score)) {
          best = c;
          found = true;
        }
    }
    if (!found) break;
    std::vector<int32_t>& units = layer(kept, best.axis, best.block);
    std::vector<int32_t> remaining;
    std::set_difference(units.begin(), units.end(), best.units.begin(), best.units.end(),
                        std::back_inserter(remaining));
    units = std::move(remaining);
    widths = kept.widths();
    predicted = table.model_ms(kept.embedding_width(), widths);
    plan.pruned.push_back({best.axis, best.axis == PruneAxis::Embedding ? -1 : best.block, std::move(best.units),
                           best.saliency, best.saved, best.score});
  }
  plan.predicted_ms = predicted;
  plan.target_reached = predicted <= target_ms;
  return plan;
}

ModelUnits smallest_units(const ModelUnits& original, const PlannerOptions& options) {
  ModelUnits u = original;
  for (PruneAxis a : kAxes) {
    if (!enabled(options, a)) continue;
    const int blocks = a == PruneAxis::Embedding ? 1 : static_cast<int>(u.blocks.size());
    for (int b = 0; b < blocks; ++b) {
      std::vector<int32_t>& units = layer(u, a, b);
      const size_t keep = static_cast<size_t>(std::min<int64_t>(group_size(options.groups, a),
                                                                static_cast<int64_t>(units.size())));
      units.resize(keep);
    }
  }
  return u;
}

void check_groups_fit(const ModelUnits& original, const PlannerOptions& options) {
  for (PruneAxis a : kAxes) {
    if (!enabled(options, a)) continue;
    const int64_t group = group_size(options.groups, a);
    const int blocks = a == PruneAxis::Embedding ? 1 : static_cast<int>(original.blocks.size());
    for (int b = 0; b < blocks; ++b) {
      const int64_t width = static_cast<int64_t>(layer(original, a, b).size());
      LOOM_CHECK(width >= group, group_field(a), ": a group of ", group, " is wider than ", layer_name(a, b), " (", width, "): pruning "
                 "it would leave less than one group; lower the group size or leave ", prune_axis_name(a),
                 " out of prune.structures");
    }
  }
}

void check_kept_widths(const ModelUnits& original, const ModelUnits& kept, const PlannerOptions& options,
                       const std::string& source) {
  for (PruneAxis a : kAxes) {
    const int blocks = a == PruneAxis::Embedding ? 1 : static_cast<int>(original.blocks.size());
    for (int b = 0; b < blocks; ++b) {
      const int64_t width = static_cast<int64_t>(layer(kept, a, b).size());
      const int64_t floor =
          std::min<int64_t>(group_size(options.groups, a), static_cast<int64_t>(layer(original, a, b).size()));
      LOOM_CHECK(width >= floor, source, ": ", layer_name(a, b), " keeps ", width, " units, below one group of ",
                 floor, " (", group_field(a), ")");
    }
  }
}

void check_target_reachable(const ModelUnits& original, const LatencyTable& table, const PlannerOptions& options,
                            double target_ms, const std::string& field) {
  const ModelUnits smallest = smallest_units(original, options);
  const double floor_ms = table.model_ms(smallest.embedding_width(), smallest.widths());
  const double original_ms = table.model_ms(original.embedding_width(), original.widths());
  LOOM_CHECK(floor_ms <= target_ms, field, ": the target of ", target_ms, " ms (", target_ms / original_ms,
             " of the unpruned model's predicted ", original_ms, " ms) cannot be reached: the smallest model the "
             "enabled structures (prune.structures) and group sizes allow is predicted at ", floor_ms, " ms");
}

}  // namespace loom
