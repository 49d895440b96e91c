// The pruning planner: which groups of units to remove next, NViT's latency-aware global ranking.
// Pure logic (no backend, no state); thread-safe.
//
// Structures (axes): the embedding channels (shared by every block), and per block the heads, the q/k dims
// per head (shared by the block's heads), the v dims per head, and the MLP neurons. Units are named by their
// index in the UNPRUNED model, so the kept lists are what masks and the physical shrink consume.
//
// Groups: a layer's kept units sorted by saliency (ascending, ties by index) and chunked from the least
// salient; the first chunk takes the remainder (count mod group size) when there is one, so kept widths become
// and stay multiples of the group size (the kernels' tiles). A group is never removed when fewer than one
// group size of units would remain (or when the layer already has at most one group).
// Score of a layer's next group: I_group − η·ΔLat, with I_group the sum of its units' saliencies and ΔLat the
// predicted latency saved by removing it (table.model_ms before − after; an embedding group is saved in every
// block and in the fixed parts). The planner repeatedly removes the lowest-scored next group over all enabled
// layers, re-scoring after each removal (latency savings depend on the current widths), until the predicted
// latency is at most the target or the step's group budget is spent.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "trainer/pruning/latency_table.h"
#include "trainer/models/widths.h"

namespace loom {

enum class PruneAxis { Embedding, Heads, QkDim, VDim, Mlp };
const char* prune_axis_name(PruneAxis axis);  // "embedding", "heads", "qk_dim", "v_dim", "mlp"
// The inverse, for prune.structures entries; throws loom::Error naming `field` on an unknown name.
PruneAxis parse_prune_axis(const std::string& name, const std::string& field);

// Kept units of one block / of the model, by index in the unpruned model, ascending.
struct BlockUnits {
  std::vector<int32_t> heads, qk_dim, v_dim, mlp;
  bool operator==(const BlockUnits&) const = default;
};
struct ModelUnits {
  std::vector<int32_t> embedding;
  std::vector<BlockUnits> blocks;
  bool operator==(const ModelUnits&) const = default;

  // Every unit of a model of these widths.
  static ModelUnits full(int64_t embedding, const std::vector<BlockWidths>& blocks);
  int64_t embedding_width() const { return static_cast<int64_t>(embedding.size()); }
  std::vector<BlockWidths> widths() const;
};

// Saliency of every unit of the unpruned model, indexed like ModelUnits::full (pruned units' values unused).
struct BlockSaliency {
  std::vector<double> heads, qk_dim, v_dim, mlp;
};
struct ModelSaliency {
  std::vector<double> embedding;
  std::vector<BlockSaliency> blocks;
};

struct GroupSizes {
  int64_t embedding = 64, heads = 1, qk_dim = 8, v_dim = 8, mlp = 64;
};

struct PlannerOptions {
  GroupSizes groups;
  double eta = 5e-4;  // ms⁻¹ in saliency units: the weight of the latency saved
  std::vector<PruneAxis> structures = {PruneAxis::Embedding, PruneAxis::Heads, PruneAxis::QkDim, PruneAxis::VDim,
                                       PruneAxis::Mlp};
};

struct PrunedGroup {
  PruneAxis axis = PruneAxis::Mlp;
  int block = -1;               // -1 for the embedding
  std::vector<int32_t> units;   // unpruned-model indices, ascending
  double saliency = 0, latency_saved_ms = 0, score = 0;
};

struct PruneStepPlan {
  ModelUnits kept;                   // after the step
  std::vector<PrunedGroup> pruned;   // in the order chosen
  double predicted_ms = 0;           // table.model_ms of `kept`
  bool target_reached = false;       // predicted_ms <= target_ms
};

// One pruning step from `current` toward `target_ms`, removing at most `max_groups` groups (-1: no limit).
// Throws loom::Error when the saliencies do not cover the kept units (naming the axis and block), when a kept
// list is not ascending and unique, or when the table does not cover a width (latency_table.h). Removes nothing
// when current already meets the target.
PruneStepPlan plan_pruning_step(const ModelUnits& current, const ModelSaliency& saliency, const LatencyTable& table,
                                const PlannerOptions& options, double target_ms, int64_t max_groups = -1);

// The smallest model the options allow from `original`: every enabled layer cut to one group (layers with at
// most one group keep their width), keeping the lowest indices (which units stay does not change latency).
ModelUnits smallest_units(const ModelUnits& original, const PlannerOptions& options);

// Throws loom::Error naming the group-size field (e.g. "prune.mlp_group") when an enabled structure of some
// layer of `original` is narrower than one group: pruning could only take it below one group (the planner
// never does, so the structure would silently stay unpruned there). Also for `kept` units restored from a
// checkpoint (`source` then names it): a layer keeping fewer units than one group (or than the original
// width, when that is smaller) is an error naming that layer.
void check_groups_fit(const ModelUnits& original, const PlannerOptions& options);
void check_kept_widths(const ModelUnits& original, const ModelUnits& kept, const PlannerOptions& options,
                       const std::string& source);

// Throws loom::Error naming `field` (e.g. "prune.target_ratio") when even smallest_units(original) is
// predicted slower than target_ms, with both numbers. Call it before any work.
void check_target_reachable(const ModelUnits& original, const LatencyTable& table, const PlannerOptions& options,
                            double target_ms, const std::string& field);

}  // namespace loom
