// Parameters of a model live in one flat arena, so that the optimizer, gradient clipping, all-reduce buckets
// and checkpoints each see one contiguous buffer instead of hundreds of small tensors.
//
// Layout: every parameter with weight decay (matrices and embeddings) comes first, then every parameter without
// (biases, LayerNorm), so the optimizer makes one call per decay group. Within a group, parameters keep the
// order in which the model declared them (for the backward-order bucketing of data parallelism later).
#pragma once
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "core/rng.h"

namespace loom {

// How a parameter is initialised.
enum class Init { Normal, Zeros, Ones };

// How a tensor-parallel rank holds a parameter (parallel/tensor_parallel.h). `dim` = -1: replicated, every
// tensor rank holds the whole tensor. Otherwise dimension `dim` of the full tensor is made of sections (one for
// most weights; q, k, v for the fused QKV) and each section is split evenly across the tensor ranks: rank r
// holds rows (or columns) [r·s, (r+1)·s) of every section of full size R·s, where s is the entry of
// `local_sections` (sizes on one rank, summing to the local shape[dim]).
struct ParamSharding {
  int dim = -1;
  std::vector<int64_t> local_sections;
  // True for a replicated parameter whose gradient each tensor rank computes from only its part of the tokens
  // (sequence parallelism's LayerNorms): the gradients are summed over the tensor group before the update.
  bool grad_partial_over_tensor = false;
  bool sharded() const { return dim >= 0; }
};

struct ParamSpec {
  std::string name;
  Shape shape;  // this rank's shape (the full shape when replicated or without tensor parallelism)
  bool decay = true;
  Init init = Init::Normal;
  double init_std = 0.02;  // for Init::Normal
  ParamSharding sharding = {};
};

// The full (single-process) shape of a parameter held as `spec` by one of `tensor_size` ranks.
Shape full_shape(const ParamSpec& spec, int tensor_size);
// Rank `tensor_rank`'s part of the full host tensor `full` (any float dtype), as a new host tensor of
// spec.shape. Throws naming the parameter when `full` does not have the full shape.
Tensor shard_of_full(const ParamSpec& spec, const Tensor& full, int tensor_rank, int tensor_size);
// The full host tensor from every rank's part: `parts` is [tensor_size · numel(spec.shape)], rank-major (what an
// all-gather of the flat parts gives).
Tensor full_from_shards(const ParamSpec& spec, const Tensor& parts, int tensor_size);

struct ParamEntry {
  ParamSpec spec;
  int64_t offset = 0;  // elements into the arena
  int64_t numel = 0;
};

class ParameterLayout {
 public:
  ParameterLayout() = default;
  // Orders `specs` as described above. Throws loom::Error on a duplicate name.
  explicit ParameterLayout(std::vector<ParamSpec> specs);

  const std::vector<ParamEntry>& entries() const { return entries_; }
  const ParamEntry& entry(const std::string& name) const;  // throws naming the parameter if absent
  bool contains(const std::string& name) const { return index_.count(name) != 0; }
  int64_t total() const { return total_; }
  int64_t decay_numel() const { return decay_numel_; }  // [0, decay_numel) decays, the rest does not

 private:
  std::vector<ParamEntry> entries_;
  std::unordered_map<std::string, size_t> index_;
  int64_t total_ = 0, decay_numel_ = 0;
};

// The arenas of one model replica: fp32 (or f64) master weights, the compute-dtype copy used by forward and
// backward (the same tensor when the dtypes agree, as on the CPU), and gradients in the compute dtype.
class ParameterStore {
 public:
  ParameterStore(ParameterLayout layout, DType master_dtype, DType compute_dtype, Device device);

  const ParameterLayout& layout() const { return layout_; }
  Tensor& master() { return master_; }
  Tensor& compute() { return compute_; }
  Tensor& grads() { return grads_; }
  const Tensor& master() const { return master_; }
  const Tensor& grads() const { return grads_; }
  bool compute_is_master() const { return compute_.raw() == master_.raw(); }

  // Views into the arenas by parameter name (shape from the spec).
  Tensor weight(const std::string& name) const;  // compute dtype
  Tensor grad(const std::string& name) const;
  Tensor master_weight(const std::string& name) const;

  // Draws every parameter from its Init with a Philox stream per parameter index (so the values do not
  // depend on the device or on the order of other parameters), then refreshes the compute copy.
  // With tensor parallelism each rank draws the full parameter and keeps its shard, so the weights equal the
  // single-process ones whatever the layout.
  void initialise(uint64_t seed, int tensor_rank = 0, int tensor_size = 1);
  // Copies master -> compute (through the host) after the master changed on the device outside the optimizer
  // (masks, restores); initialise and load_named write both from their host arena.
  void sync_compute_from_master();
  // Frees the gradient arena of a model that only runs forward passes (a distillation teacher). grads() is
  // then undefined and grad() throws loom::Error, so a forward_backward fails at its first gradient.
  void release_gradients() { grads_ = Tensor(); }

  // CPU copies of the master weights by name, in declaration order (for checkpoints and export).
  std::vector<std::pair<std::string, Tensor>> named_master_weights() const;
  // Loads master weights by name; every parameter must be present with its exact shape, and no extra
  // names are allowed. Throws loom::Error naming `source` and the tensor otherwise.
  void load_named(const std::vector<std::pair<std::string, Tensor>>& tensors, const std::string& source);

 private:
  // master = `host` (a CPU arena of the master dtype), compute = host cast to the compute dtype, on the host
  // (the arena is already there: no round trip through the device).
  void set_from_host_master(const Tensor& host);

  ParameterLayout layout_;
  Tensor master_, compute_, grads_;
};

}  // namespace loom
