#include "trainer/parameters.h"

#include <algorithm>
#include <unordered_set>

#include "kernels/backend.h"

namespace loom {

ParameterLayout::ParameterLayout(std::vector<ParamSpec> specs) {
  std::stable_partition(specs.begin(), specs.end(), [](const ParamSpec& s) { return s.decay; });
  for (auto& spec : specs) {
    LOOM_CHECK(!index_.count(spec.name), "parameter '", spec.name, "' declared twice");
    ParamEntry e;
    e.numel = shape_numel(spec.shape);
    e.offset = total_;
    e.spec = std::move(spec);
    total_ += e.numel;
    if (e.spec.decay) decay_numel_ += e.numel;
    index_[e.spec.name] = entries_.size();
    entries_.push_back(std::move(e));
  }
}

const ParamEntry& ParameterLayout::entry(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) fail("no parameter named '", name, "'");
  return entries_[it->second];
}

ParameterStore::ParameterStore(ParameterLayout layout, DType master_dtype, DType compute_dtype, Device device)
    : layout_(std::move(layout)) {
  master_ = Tensor::zeros({layout_.total()}, master_dtype, device);
  compute_ = compute_dtype == master_dtype ? master_ : Tensor::zeros({layout_.total()}, compute_dtype, device);
  grads_ = Tensor::zeros({layout_.total()}, compute_dtype, device);
}

Tensor ParameterStore::weight(const std::string& name) const {
  const auto& e = layout_.entry(name);
  return compute_.slice_flat(e.offset, e.spec.shape);
}

Tensor ParameterStore::grad(const std::string& name) const {
  const auto& e = layout_.entry(name);
  return grads_.slice_flat(e.offset, e.spec.shape);
}

Tensor ParameterStore::master_weight(const std::string& name) const {
  const auto& e = layout_.entry(name);
  return master_.slice_flat(e.offset, e.spec.shape);
}

void ParameterStore::initialise(uint64_t seed) {
  Tensor host = Tensor::empty({layout_.total()}, DType::F64);
  double* h = host.data<double>();
  for (size_t p = 0; p < layout_.entries().size(); ++p) {
    const ParamEntry& e = layout_.entries()[p];
    PhiloxStream rng(seed, /*stream=*/p);
    for (int64_t i = 0; i < e.numel; ++i) {
      double v = 0;
      switch (e.spec.init) {
        case Init::Normal: v = e.spec.init_std * rng.normal(); break;
        case Init::Zeros: v = 0; break;
        case Init::Ones: v = 1; break;
      }
      h[e.offset + i] = v;
    }
  }
  master_.copy_from(host.cast(master_.dtype()));
  sync_compute_from_master();
}

void ParameterStore::sync_compute_from_master() {
  if (compute_is_master()) return;
  Tensor host = master_.to(Device::cpu()).cast(compute_.dtype());
  compute_.copy_from(host);
}

std::vector<std::pair<std::string, Tensor>> ParameterStore::named_master_weights() const {
  Tensor host = master_.to(Device::cpu());
  std::vector<std::pair<std::string, Tensor>> out;
  for (const auto& e : layout_.entries()) {
    Tensor t = Tensor::empty(e.spec.shape, host.dtype());
    t.copy_from(host.slice_flat(e.offset, e.spec.shape));
    out.emplace_back(e.spec.name, t);
  }
  return out;
}

void ParameterStore::load_named(const std::vector<std::pair<std::string, Tensor>>& tensors,
                                const std::string& source) {
  Tensor host = master_.to(Device::cpu());
  std::unordered_set<std::string> seen;
  for (const auto& [name, t] : tensors) {
    if (!layout_.contains(name)) fail(source, ": unexpected tensor '", name, "' (the model has no such parameter)");
    const auto& e = layout_.entry(name);
    if (t.shape() != e.spec.shape)
      fail(source, ": tensor '", name, "' has shape ", shape_str(t.shape()), " but the model expects ",
           shape_str(e.spec.shape));
    host.slice_flat(e.offset, e.spec.shape).copy_from(t.device().is_cpu() ? t.cast(host.dtype()) : t.to(Device::cpu()).cast(host.dtype()));
    seen.insert(name);
  }
  for (const auto& e : layout_.entries())
    if (!seen.count(e.spec.name)) fail(source, ": missing tensor '", e.spec.name, "'");
  master_.copy_from(host);
  sync_compute_from_master();
}

}  // namespace loom
