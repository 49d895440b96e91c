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

struct ParamSpec {
  std::string name;
  Shape shape;
  bool decay = true;
  Init init = Init::Normal;
  double init_std = 0.02;  // for Init::Normal
};

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
  void initialise(uint64_t seed);
  // Copies master -> compute after the master changed outside the optimizer (load, init).
  void sync_compute_from_master();

  // CPU copies of the master weights by name, in declaration order (for checkpoints and export).
  std::vector<std::pair<std::string, Tensor>> named_master_weights() const;
  // Loads master weights by name; every parameter must be present with its exact shape, and no extra
  // names are allowed. Throws loom::Error naming `source` and the tensor otherwise.
  void load_named(const std::vector<std::pair<std::string, Tensor>>& tensors, const std::string& source);

 private:
  ParameterLayout layout_;
  Tensor master_, compute_, grads_;
};

}  // namespace loom
