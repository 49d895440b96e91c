// Saliency of prunable units (embedding channels, heads, q/k dims, v dims, MLP neurons), accumulated over
// batches from the gradients of the backward.
//
// A unit is a set of parameter positions that structural pruning removes together (an MLP neuron: row j of
// fc1.weight, fc1.bias[j] and column j of fc2.weight). Its first-order signal is the gate derivative
//   s_u = Σ_{θ in u} g_θ·w_θ  = d/dε L((1+ε)·w_u) at ε = 0,
// summed over every tensor the unit touches (an embedding channel over every block). Kinds:
// - Taylor2 (NViT, the default): I_u = mean over batches of s_u², the Fisher approximation of the loss change
//   of removing u (½ wᵀHw with H ≈ g gᵀ). Squared per batch, then averaged: not the square of the mean.
// - Taylor1: mean over batches of |s_u| (first-order Taylor, Molchanov et al. 2017 / Torch-Pruning's
//   multivariable GroupTaylor), a baseline.
// - Magnitude: the L2 norm of the unit's weights √(Σ w²) (no gradients), a baseline; averaged over batches
//   like the others, so it follows the weights while they train.
// A group's saliency (planner.h) is the sum of its units' saliencies.
//
// Where the numbers come from: one batch is one optimizer step's gradients, i.e. ParameterStore::grads() when
// they are final: after the backward (and the gradient accumulation of all micro-batches) and, under data
// parallelism, AFTER the data-parallel all-reduce (GradientSync::finish()), before the optimizer zeroes them.
// Every data rank then holds the same averaged gradients and the same weights, and dot_along_axis is
// deterministic, so every rank computes bit-identical saliencies and takes identical pruning decisions with
// no further communication. ZeRO-1 leaves only a shard of the averaged gradients on each rank: there, call
// unit_sums() on the local (pre-reduction) gradients, average the vectors over the data group (s_u is linear in
// g, so this equals s_u of the averaged gradients), then add_unit_sums(). Tensor parallelism: each rank builds
// terms for the units of its own shard (parameter names and shapes are the rank's).
//
// Thread-safety: one thread drives an accumulator (with the backend it is given).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "trainer/parameters.h"

namespace loom {

// One parameter's contribution to a structure: along dimension `axis` of parameter `parameter`, position p
// belongs to unit unit_of_position[p] (or to none when -1). unit_of_position has shape[axis] entries.
struct SaliencyTerm {
  std::string parameter;
  int axis = 0;
  std::vector<int32_t> unit_of_position;
};

// A prunable axis of the model (e.g. "blocks.3.mlp" neurons, or the embedding channels) with `units` units
// and every term that touches them.
struct SaliencyStructure {
  std::string name;
  int64_t units = 0;
  std::vector<SaliencyTerm> terms;
};

enum class SaliencyKind { Taylor2, Taylor1, Magnitude };

// "taylor2", "taylor1" or "magnitude" (the prune.saliency config values). Throws loom::Error naming `field`.
SaliencyKind parse_saliency_kind(const std::string& name, const std::string& field);

class SaliencyAccumulator {
 public:
  // Checks every term against `params`' layout: the parameter exists, the axis is one of its dimensions,
  // unit_of_position has shape[axis] entries, each in [-1, units). Throws loom::Error naming the structure,
  // the parameter and the problem.
  SaliencyAccumulator(std::vector<SaliencyStructure> structures, SaliencyKind kind, const ParameterLayout& params);

  // Adds one batch: unit_sums(be, params) then add_unit_sums(). See the header comment for when to call it.
  void add_batch(Backend& be, const ParameterStore& params);
  // The per-batch linear sums, per structure per unit: s_u = Σ g·w (Taylor kinds) or Σ w² (Magnitude), from
  // params' compute weights and gradients, on be (one dot_along_axis per term; results copied to the host).
  std::vector<std::vector<double>> unit_sums(Backend& be, const ParameterStore& params) const;
  // Accumulates one batch's sums (shaped as unit_sums() returns them; throws loom::Error otherwise).
  void add_unit_sums(const std::vector<std::vector<double>>& sums);

  int64_t batches() const { return batches_; }
  // The saliency of every unit, per structure (same order as the constructor's): the mean over the batches
  // added so far of s² (Taylor2) or |s| (Taylor1), or √(mean Σw²) (Magnitude). Throws when no batch was added.
  std::vector<std::vector<double>> saliencies() const;
  // Forgets the batches (after a pruning step, so the next decision sees fresh gradients).
  void reset();

  const std::vector<SaliencyStructure>& structures() const { return structures_; }
  SaliencyKind kind() const { return kind_; }

 private:
  std::vector<SaliencyStructure> structures_;
  SaliencyKind kind_;
  std::vector<std::vector<double>> totals_;
  int64_t batches_ = 0;
};

}  // namespace loom
