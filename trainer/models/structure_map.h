// The structure map of a model: its prunable (and shardable) axes and, for each, the parameter slices every
// index of the axis owns. Pruning selects indices along axes; tensor parallelism splits axes into contiguous
// ranges; both read the layout of a block from here instead of knowing it themselves.
//
// Axes (NViT's structures):
//   "embedding"        the d_model channels of the residual stream: token/position/patch embeddings, class and
//                      distillation tokens, every LayerNorm, every block's input (qkv, fc1: columns) and output
//                      (proj, fc2: rows and biases) projections, and the head (GPT: the tied wte; ViT: head,
//                      head_dist columns).
//   "blocks.{i}.heads"   attention heads: the head's q, k and v rows (weights and biases) of attn.qkv and its
//                      columns of attn.proj.
//   "blocks.{i}.qk_dims" q/k dims per head, shared by the block's heads: index j owns row j of every head's q
//                      and k (weights and biases).
//   "blocks.{i}.v_dims"  v dims per head, shared by the block's heads: row j of every head's v and the matching
//                      columns of attn.proj.
//   "blocks.{i}.mlp"     MLP neurons: a row (and bias) of mlp.fc1 and a column of mlp.fc2.
// A position of a tensor may belong to several axes (row h·dqk + j of q: head h and q/k dim j); it is deleted
// when any of them deletes its index.
//
// Exactness: zeroing every slice an index owns (apply_mask) computes what the model without that index
// computes (shrink_*), loss and the gradients of every remaining parameter. Heads, v dims, q/k dims and MLP
// neurons contribute exact zeros (GELU(0) = 0 in both forms); q/k dims keep the block's attention scale in the
// shrunk shape (BlockWidths::attention_scale); masked embedding channels also need the LayerNorms' statistics
// over the active channels only (Model::set_active_embedding_channels, which mask_model sets).
//
// Errors: throw loom::Error naming the axis, index or parameter. Threads: no state; concurrent calls are fine.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/checkpoint.h"
#include "core/safetensors.h"
#include "trainer/models/model.h"
#include "trainer/models/model_shape.h"
#include "trainer/parameters.h"

namespace loom {

enum class AxisKind { Embedding, Heads, QkDims, VDims, MlpNeurons };

// Index i of an axis owns, in parameter `param` along dimension `dim`, the positions
//   offset + i·stride + r·repeat_stride + [0, width)   for every r in [0, repeats)
// (all coordinates of the other dimensions).
struct ParamSlice {
  std::string param;
  int dim = 0;
  int64_t offset = 0, stride = 1, width = 1, repeats = 1, repeat_stride = 0;
};

struct Axis {
  std::string name;  // "embedding", "blocks.2.heads", "blocks.2.qk_dims", "blocks.2.v_dims", "blocks.2.mlp"
  AxisKind kind = AxisKind::Embedding;
  int block = -1;    // the block of a block axis; -1 for the embedding axis
  int64_t size = 0;  // number of indices
  std::vector<ParamSlice> slices;
};

class StructureMap {
 public:
  StructureMap() = default;
  explicit StructureMap(std::vector<Axis> axes);

  // The embedding axis first, then every block's heads, qk_dims, v_dims, mlp in block order.
  const std::vector<Axis>& axes() const { return axes_; }
  const Axis& axis(const std::string& name) const;  // throws naming the axis if absent
  const Axis& block_axis(int block, AxisKind kind) const;
  const Axis& embedding() const { return axis("embedding"); }

 private:
  std::vector<Axis> axes_;
  std::map<std::string, size_t> index_;
};

// The map of a (single-process, full) model of `shape`; parameter names as the models declare them.
StructureMap structure_map(const ModelShape& shape);
// The four axes of one block (heads, qk_dims, v_dims, mlp), in that order, for the block's full widths `w`.
// The embedding axis's slices of the block are appended to `embedding_slices` when not null.
std::vector<Axis> block_axes(int block, const BlockWidths& w, std::vector<ParamSlice>* embedding_slices = nullptr);
// The positions along slice.dim that `index` owns, ascending.
std::vector<int64_t> owned_positions(const ParamSlice& slice, int64_t index);

// ---- tensor parallelism: a shard is a contiguous range of an axis ----
// How each of `tensor_size` ranks holds `param` when rank r holds indices [r·size/R, (r+1)·size/R) of `axis`:
// the axis's slices on `param` (each one contiguous section, width == stride, repeats == 1) become the
// ParamSharding sections (parameters.h). Throws naming the axis when its size does not divide by R, or when
// its slices on `param` do not tile one dimension.
ParamSharding sharding_from_axis(const Axis& axis, const std::string& param, const Shape& full_shape,
                                 int tensor_size);

// ---- selections: which indices of each axis survive ----
// Kept indices by axis name, ascending and unique, at least one per axis; an axis not named keeps all.
using AxisSelection = std::map<std::string, std::vector<int64_t>>;
// Throws naming the axis (unknown name, empty, unsorted, duplicate or out-of-range index).
void check_selection(const StructureMap& map, const AxisSelection& selection);
// The selection that deletes `index` of `axis` and keeps everything else.
AxisSelection delete_one(const StructureMap& map, const std::string& axis, int64_t index);

// ---- masks (pruning while training) ----
// What a selection deletes from an arena laid out as `layout` (the full single-process layout of the map's
// model), in the form Backend::zero_deleted takes: one DimensionMask per (parameter, dimension) with a deleted
// position, and their keep flags (I32: 1 kept, 0 deleted). An element is deleted when its coordinate along any
// of its parameter's masked dimensions is, so the kept parameter elements are, per parameter, its size times
// the kept fraction of each masked dimension (kept_elements: the shrunk model's parameter count). The flags
// are a few values per masked dimension: a mask is cheap to build, to copy to a device and to keep there.
struct ArenaMask {
  std::vector<DimensionMask> dims;
  Tensor keep;                  // I32 [Σ sizes] (CPU from arena_mask; on the device from mask_model)
  int64_t arena_elements = 0;   // layout.total(): the arenas it applies to
  int64_t kept_elements = 0;
};
// Throws when a slice of the map does not fit its parameter (a tensor-parallel shard's layout, another model's).
ArenaMask arena_mask(const ParameterLayout& layout, const StructureMap& map, const AxisSelection& selection);
// Zeroes the deleted positions in any arena of the mask's layout (master weights, compute copy, gradients,
// AdamW moments) of any float dtype on `backend`'s device, with Backend::zero_deleted. Flags already on that
// device are used in place (what a per-step caller keeps); host flags are copied there first.
void apply_mask(Backend& backend, Tensor& arena, const ArenaMask& mask);
// Masks `model` (not tensor-parallel): master and compute weights and the gradients get the mask's zeros, and
// the LayerNorms count the kept embedding channels (Model::set_active_embedding_channels). The weights keep
// training afterwards: callers re-apply the mask (gradients, and the moments of the optimizer if they want them
// zero) after each step. Returns the mask with its flags on the model's device, for them.
ArenaMask mask_model(Model& model, const StructureMap& map, const AxisSelection& selection);

// ---- shrink: a dense smaller model ----
// The shape with each axis cut to its kept indices; attention scales stay those of `shape`.
ModelShape shrink_shape(const ModelShape& shape, const StructureMap& map, const AxisSelection& selection);
// Every tensor of `tensors` named `prefix` + <parameter> cut to the kept positions of every axis that owns a
// slice of it (weights, gradients, or moments of the same layout). Names without the prefix, or of parameters
// the map does not mention, pass unchanged; any float dtype, CPU or device (the result is on the CPU).
NamedTensors shrink_tensors(const NamedTensors& tensors, const StructureMap& map, const AxisSelection& selection,
                            const std::string& prefix = "");
// A checkpoint of the shrunk model: weights, AdamW moments ("optim.m." / "optim.v." + parameter, as the
// trainer saves them) and model_shape sliced; state (step, data position, config) kept.
CheckpointContents shrink_checkpoint(const CheckpointContents& checkpoint, const ModelShape& shape,
                                     const AxisSelection& selection);

}  // namespace loom
