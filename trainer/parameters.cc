#include "trainer/parameters.h"

#include <algorithm>
#include <unordered_set>

#include "kernels/backend.h"

namespace loom {

namespace {
// Below this many elements a parameter is drawn on the calling thread (a thread team costs microseconds).
constexpr int64_t kParallelDrawElements = int64_t{1} << 16;

// Views a tensor of `shape` as [outer, shape[dim], inner] for the section copies below.
struct DimSplit {
  int64_t outer = 1, inner = 1;
};
DimSplit split_at(const Shape& shape, int dim) {
  DimSplit d;
  for (int i = 0; i < dim; ++i) d.outer *= shape[i];
  for (size_t i = dim + 1; i < shape.size(); ++i) d.inner *= shape[i];
  return d;
}

// Copies rank `r`'s part between a full tensor and a local one (to_local: full -> local, else local -> full).
// Both are host F64 tensors here; callers cast.
void copy_sections(const ParamSpec& spec, double* full, double* local, int r, int R, bool to_local) {
  const Shape fshape = full_shape(spec, R);
  const int dim = spec.sharding.dim;
  const DimSplit d = split_at(spec.shape, dim);
  const int64_t Ld = spec.shape[dim], Fd = fshape[dim];
  int64_t local_off = 0;
  for (int64_t s : spec.sharding.local_sections) {
    const int64_t full_off = R * local_off + r * s;
    for (int64_t o = 0; o < d.outer; ++o)
      for (int64_t j = 0; j < s; ++j) {
        double* l = local + (o * Ld + local_off + j) * d.inner;
        double* f = full + (o * Fd + full_off + j) * d.inner;
        if (to_local)
          std::copy(f, f + d.inner, l);
        else
          std::copy(l, l + d.inner, f);
      }
    local_off += s;
  }
}
}  // namespace

Shape full_shape(const ParamSpec& spec, int tensor_size) {
  Shape s = spec.shape;
  if (spec.sharding.sharded()) {
    int64_t sum = 0;
    for (int64_t x : spec.sharding.local_sections) sum += x;
    LOOM_CHECK(spec.sharding.dim < static_cast<int>(s.size()) && sum == s[spec.sharding.dim],
               "parameter '", spec.name, "': sharding sections do not add up to dimension ", spec.sharding.dim,
               " of ", shape_str(s));
    s[spec.sharding.dim] *= tensor_size;
  }
  return s;
}

Tensor shard_of_full(const ParamSpec& spec, const Tensor& full, int tensor_rank, int tensor_size) {
  LOOM_CHECK(full.shape() == full_shape(spec, tensor_size), "parameter '", spec.name, "': expected the full shape ",
             shape_str(full_shape(spec, tensor_size)), ", got ", shape_str(full.shape()));
  if (!spec.sharding.sharded() || tensor_size == 1) return full.cast(full.dtype());
  Tensor f = full.cast(DType::F64), local = Tensor::empty(spec.shape, DType::F64);
  copy_sections(spec, f.data<double>(), local.data<double>(), tensor_rank, tensor_size, /*to_local=*/true);
  return local.cast(full.dtype());
}

Tensor full_from_shards(const ParamSpec& spec, const Tensor& parts, int tensor_size) {
  const int64_t n = shape_numel(spec.shape);
  LOOM_CHECK(parts.numel() == n * tensor_size, "parameter '", spec.name, "': ", parts.numel(),
             " gathered elements, expected ", n * tensor_size);
  if (!spec.sharding.sharded() || tensor_size == 1) return parts.cast(parts.dtype()).view(spec.shape);
  Tensor p = parts.cast(DType::F64), full = Tensor::empty(full_shape(spec, tensor_size), DType::F64);
  for (int r = 0; r < tensor_size; ++r)
    copy_sections(spec, full.data<double>(), p.data<double>() + r * n, r, tensor_size, /*to_local=*/false);
  return full.cast(parts.dtype());
}

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
  LOOM_CHECK(grads_.defined(), "no gradient of '", name, "': this model's gradients were released (forward only)");
  const auto& e = layout_.entry(name);
  return grads_.slice_flat(e.offset, e.spec.shape);
}

Tensor ParameterStore::master_weight(const std::string& name) const {
  const auto& e = layout_.entry(name);
  return master_.slice_flat(e.offset, e.spec.shape);
}

void ParameterStore::initialise(uint64_t seed, int tensor_rank, int tensor_size) {
  // Element i of parameter p is draw i of Philox stream p (counter-based), so the draws run in parallel and give
  // the same values whatever the thread count: at 1B+ parameters one host thread took minutes. Each parameter
  // is drawn in f64 and written into a host arena of the master dtype.
  Tensor host = Tensor::zeros({layout_.total()}, master_.dtype());
  for (size_t p = 0; p < layout_.entries().size(); ++p) {
    const ParamEntry& e = layout_.entries()[p];
    const bool sharded = e.spec.sharding.sharded() && tensor_size > 1;
    const Shape shape = sharded ? full_shape(e.spec, tensor_size) : e.spec.shape;
    Tensor values = Tensor::empty(shape, DType::F64);
    double* v = values.data<double>();
    const int64_t n = values.numel();
    const Init init = e.spec.init;
    const double init_std = e.spec.init_std;
#pragma omp parallel for schedule(static) if (n > kParallelDrawElements)
    for (int64_t i = 0; i < n; ++i) {
      switch (init) {
        case Init::Normal: v[i] = init_std * PhiloxStream(seed, /*stream=*/p, /*position=*/i).normal(); break;
        case Init::Zeros: v[i] = 0; break;
        case Init::Ones: v[i] = 1; break;
      }
    }
    if (sharded) values = shard_of_full(e.spec, values, tensor_rank, tensor_size);
    host.slice_flat(e.offset, e.spec.shape).copy_from(values.cast(host.dtype()));
  }
  set_from_host_master(host);
}

void ParameterStore::set_from_host_master(const Tensor& host) {
  master_.copy_from(host);
  if (!compute_is_master()) compute_.copy_from(host.cast(compute_.dtype()));
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
  set_from_host_master(host);
}

}  // namespace loom
