#include "trainer/models/structure_map.h"

#include <algorithm>
#include <set>

#include "core/error.h"

namespace loom {

StructureMap::StructureMap(std::vector<Axis> axes) : axes_(std::move(axes)) {
  for (size_t i = 0; i < axes_.size(); ++i)
    LOOM_CHECK(index_.emplace(axes_[i].name, i).second, "structure map: axis '", axes_[i].name, "' declared twice");
}

const Axis& StructureMap::axis(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) fail("structure map: no axis named '", name, "'");
  return axes_[it->second];
}

const Axis& StructureMap::block_axis(int block, AxisKind kind) const {
  static const char* kSuffix[] = {"embedding", "heads", "qk_dims", "v_dims", "mlp"};
  if (kind == AxisKind::Embedding) return embedding();
  return axis("blocks." + std::to_string(block) + "." + kSuffix[static_cast<int>(kind)]);
}

std::vector<Axis> block_axes(int block, const BlockWidths& w, std::vector<ParamSlice>* embedding) {
  const std::string p = "blocks." + std::to_string(block) + ".";
  const int64_t H = w.heads, dqk = w.qk_dim, dv = w.v_dim, QK = H * dqk;
  const std::string qkv_w = p + "attn.qkv.weight", qkv_b = p + "attn.qkv.bias", proj_w = p + "attn.proj.weight";
  // The fused QKV rows are [q heads | k heads | v heads], each head's rows contiguous.
  Axis heads{p + "heads", AxisKind::Heads, block, H, {}};
  Axis qk{p + "qk_dims", AxisKind::QkDims, block, dqk, {}};
  Axis v{p + "v_dims", AxisKind::VDims, block, dv, {}};
  for (const std::string& t : {qkv_w, qkv_b}) {
    heads.slices.push_back({t, 0, 0, dqk, dqk});
    heads.slices.push_back({t, 0, QK, dqk, dqk});
    heads.slices.push_back({t, 0, 2 * QK, dv, dv});
    qk.slices.push_back({t, 0, 0, 1, 1, H, dqk});
    qk.slices.push_back({t, 0, QK, 1, 1, H, dqk});
    v.slices.push_back({t, 0, 2 * QK, 1, 1, H, dv});
  }
  heads.slices.push_back({proj_w, 1, 0, dv, dv});
  v.slices.push_back({proj_w, 1, 0, 1, 1, H, dv});
  Axis mlp{p + "mlp",
           AxisKind::MlpNeurons,
           block,
           w.mlp_dim,
           {{p + "mlp.fc1.weight", 0}, {p + "mlp.fc1.bias", 0}, {p + "mlp.fc2.weight", 1}}};
  if (embedding) {
    for (const char* t : {"norm1.weight", "norm1.bias", "attn.proj.bias", "norm2.weight", "norm2.bias",
                          "attn.proj.weight", "mlp.fc2.weight", "mlp.fc2.bias"})
      embedding->push_back({p + t, 0});
    for (const char* t : {"attn.qkv.weight", "mlp.fc1.weight"}) embedding->push_back({p + t, 1});
  }
  return {heads, qk, v, mlp};
}

StructureMap structure_map(const ModelShape& s) {
  Axis emb{"embedding", AxisKind::Embedding, -1, s.d_model, {}};
  std::vector<Axis> axes;
  std::vector<Axis> blocks;
  if (s.is_gpt()) {
    emb.slices.push_back({"wte.weight", 1});
    emb.slices.push_back({"wpe.weight", 1});
  } else {
    emb.slices.push_back({"patch_embed.proj.weight", 0});
    emb.slices.push_back({"patch_embed.proj.bias", 0});
    emb.slices.push_back({"cls_token", 1});
    if (s.distilled) emb.slices.push_back({"dist_token", 1});
    emb.slices.push_back({"pos_embed", 1});
  }
  for (int i = 0; i < s.n_layer(); ++i)
    for (Axis& a : block_axes(i, s.blocks[i], &emb.slices)) blocks.push_back(std::move(a));
  emb.slices.push_back({"norm.weight", 0});
  emb.slices.push_back({"norm.bias", 0});
  if (s.is_vit()) {
    emb.slices.push_back({"head.weight", 1});
    if (s.distilled) emb.slices.push_back({"head_dist.weight", 1});
  }
  axes.push_back(std::move(emb));
  for (Axis& a : blocks) axes.push_back(std::move(a));
  return StructureMap(std::move(axes));
}

std::vector<int64_t> owned_positions(const ParamSlice& s, int64_t index) {
  std::vector<int64_t> out;
  for (int64_t r = 0; r < s.repeats; ++r)
    for (int64_t k = 0; k < s.width; ++k) out.push_back(s.offset + index * s.stride + r * s.repeat_stride + k);
  std::sort(out.begin(), out.end());
  return out;
}

ParamSharding sharding_from_axis(const Axis& axis, const std::string& param, const Shape& full, int R) {
  if (!(R >= 1 && axis.size % R == 0))
    fail("tensor parallelism: axis '", axis.name, "' has ", axis.size,
         " indices, which do not divide by parallel.tensor (", R, ")");
  std::vector<const ParamSlice*> slices;
  for (const ParamSlice& s : axis.slices)
    if (s.param == param) slices.push_back(&s);
  LOOM_CHECK(!slices.empty(), "tensor parallelism: axis '", axis.name, "' owns no slice of '", param, "'");
  std::sort(slices.begin(), slices.end(), [](auto* a, auto* b) { return a->offset < b->offset; });
  ParamSharding sharding;
  sharding.dim = slices[0]->dim;
  int64_t next = 0;
  for (const ParamSlice* s : slices) {
    // A section is the slice's indices side by side: [offset, offset + size·stride).
    LOOM_CHECK(s->dim == sharding.dim && s->repeats == 1 && s->width == s->stride && s->offset == next,
               "tensor parallelism: the slices of axis '", axis.name, "' on '", param,
               "' are not contiguous sections of one dimension");
    sharding.local_sections.push_back(axis.size / R * s->stride);
    next += axis.size * s->stride;
  }
  LOOM_CHECK(sharding.dim < static_cast<int>(full.size()) && next == full[sharding.dim], "tensor parallelism: axis '",
             axis.name, "' covers ", next, " of the ",
             sharding.dim < static_cast<int>(full.size()) ? full[sharding.dim] : 0, " positions of '", param,
             "' along dimension ", sharding.dim);
  return sharding;
}

void check_selection(const StructureMap& map, const AxisSelection& selection) {
  for (const auto& [name, kept] : selection) {
    const Axis& axis = map.axis(name);
    if (kept.empty()) fail("selection of axis '", name, "': keeps no index (at least one must stay)");
    for (size_t i = 0; i < kept.size(); ++i) {
      if (!(kept[i] >= 0 && kept[i] < axis.size))
        fail("selection of axis '", name, "': index ", kept[i], " is outside [0, ", axis.size, ")");
      if (i > 0 && kept[i] <= kept[i - 1])
        fail("selection of axis '", name, "': kept indices must be ascending and unique, got ", kept[i - 1], " then ",
             kept[i]);
    }
  }
}

AxisSelection delete_one(const StructureMap& map, const std::string& name, int64_t index) {
  const Axis& axis = map.axis(name);
  LOOM_CHECK(index >= 0 && index < axis.size, "axis '", name, "': index ", index, " is outside [0, ", axis.size, ")");
  std::vector<int64_t> kept;
  for (int64_t i = 0; i < axis.size; ++i)
    if (i != index) kept.push_back(i);
  AxisSelection selection{{name, kept}};
  check_selection(map, selection);
  return selection;
}

namespace {

// For each parameter and dimension, the positions some deleted index owns.
using Deleted = std::map<std::pair<std::string, int>, std::set<int64_t>>;

Deleted deleted_positions(const StructureMap& map, const AxisSelection& selection) {
  check_selection(map, selection);
  Deleted out;
  for (const auto& [name, kept] : selection) {
    const Axis& axis = map.axis(name);
    std::vector<bool> keep(static_cast<size_t>(axis.size), false);
    for (int64_t k : kept) keep[k] = true;
    for (int64_t i = 0; i < axis.size; ++i) {
      if (keep[i]) continue;
      for (const ParamSlice& s : axis.slices)
        for (int64_t pos : owned_positions(s, i)) out[{s.param, s.dim}].insert(pos);
    }
  }
  return out;
}

// Row-major strides of `shape`.
std::vector<int64_t> strides_of(const Shape& shape) {
  std::vector<int64_t> st(shape.size(), 1);
  for (int d = static_cast<int>(shape.size()) - 2; d >= 0; --d) st[d] = st[d + 1] * shape[d + 1];
  return st;
}

}  // namespace

ArenaMask arena_mask(const ParameterLayout& layout, const StructureMap& map, const AxisSelection& selection) {
  // Every slice must fit its parameter: a tensor-parallel shard (or another model's layout) does not.
  for (const Axis& axis : map.axes())
    for (const ParamSlice& s : axis.slices) {
      const Shape& shape = layout.entry(s.param).spec.shape;
      const int64_t last = s.offset + (axis.size - 1) * s.stride + (s.repeats - 1) * s.repeat_stride + s.width - 1;
      if (!(s.dim < static_cast<int>(shape.size()) && last < shape[s.dim]))
        fail("structure map: axis '", axis.name, "' reaches position ", last, " of dimension ", s.dim, " of '", s.param,
             "' ", shape_str(shape), " (masks take the single-process model, not a tensor-parallel shard)");
    }
  const Deleted deleted = deleted_positions(map, selection);
  ArenaMask mask;
  mask.arena_elements = layout.total();
  std::vector<int32_t> flags;
  // Per masked parameter, its elements no masked dimension deletes: numel · Π (kept / size), dimension by
  // dimension (each division is exact: the count still holds that dimension's full size as a factor).
  std::map<std::string, int64_t> kept_count;
  for (const auto& [key, positions] : deleted) {
    const auto& [param, dim] = key;
    const ParamEntry& e = layout.entry(param);
    const Shape& shape = e.spec.shape;
    LOOM_CHECK(dim < static_cast<int>(shape.size()), "structure map: '", param, "' has no dimension ", dim);
    LOOM_CHECK(*positions.rbegin() < shape[dim], "structure map: position ", *positions.rbegin(),
               " is outside dimension ", dim, " of '", param, "' ", shape_str(shape));
    mask.dims.push_back({e.offset, e.numel, shape[dim], strides_of(shape)[dim], static_cast<int64_t>(flags.size())});
    for (int64_t i = 0; i < shape[dim]; ++i) flags.push_back(positions.count(i) ? 0 : 1);
    int64_t& count = kept_count.emplace(param, e.numel).first->second;
    count = count / shape[dim] * (shape[dim] - static_cast<int64_t>(positions.size()));
  }
  for (const ParamEntry& e : layout.entries()) {
    const auto it = kept_count.find(e.spec.name);
    mask.kept_elements += it == kept_count.end() ? e.numel : it->second;
  }
  mask.keep = Tensor::from_ints(flags, {static_cast<int64_t>(flags.size())});
  return mask;
}

void apply_mask(Backend& backend, Tensor& arena, const ArenaMask& mask) {
  if (arena.numel() != mask.arena_elements)
    fail("apply_mask: arena ", arena.str(), " is not of the mask's layout (", mask.arena_elements, " elements)");
  if (mask.dims.empty()) return;
  backend.zero_deleted(arena, mask.dims, mask.keep.device() == backend.device() ? mask.keep
                                                                                  : mask.keep.to(backend.device()));
}

ArenaMask mask_model(Model& model, const StructureMap& map, const AxisSelection& selection) {
  ParameterStore& p = model.params();
  Backend& backend = model.backend();
  ArenaMask mask = arena_mask(p.layout(), map, selection);
  mask.keep = mask.keep.to(backend.device());
  apply_mask(backend, p.master(), mask);
  p.sync_compute_from_master();
  apply_mask(backend, p.grads(), mask);
  const auto it = selection.find("embedding");
  model.set_active_embedding_channels(it == selection.end() ? model.shape().d_model
                                                            : static_cast<int64_t>(it->second.size()));
  return mask;
}

ModelShape shrink_shape(const ModelShape& shape, const StructureMap& map, const AxisSelection& selection) {
  check_selection(map, selection);
  auto kept = [&](const Axis& a) {
    auto it = selection.find(a.name);
    return it == selection.end() ? a.size : static_cast<int64_t>(it->second.size());
  };
  ModelShape out = shape;
  out.d_model = kept(map.embedding());
  for (int i = 0; i < shape.n_layer(); ++i) {
    BlockWidths& w = out.blocks[i];
    w.attention_scale = shape.blocks[i].scale();
    w.heads = kept(map.block_axis(i, AxisKind::Heads));
    w.qk_dim = kept(map.block_axis(i, AxisKind::QkDims));
    w.v_dim = kept(map.block_axis(i, AxisKind::VDims));
    w.mlp_dim = kept(map.block_axis(i, AxisKind::MlpNeurons));
  }
  return out;
}

NamedTensors shrink_tensors(const NamedTensors& tensors, const StructureMap& map, const AxisSelection& selection,
                            const std::string& prefix) {
  const Deleted deleted = deleted_positions(map, selection);
  NamedTensors out;
  for (const auto& [name, t] : tensors) {
    const std::string param = name.rfind(prefix, 0) == 0 ? name.substr(prefix.size()) : std::string();
    // Kept positions per dimension (all of them where no axis deletes any).
    const Shape& shape = t.shape();
    std::vector<std::vector<int64_t>> keep(shape.size());
    bool cut = false;
    for (size_t d = 0; d < shape.size(); ++d) {
      const auto it = param.empty() ? deleted.end() : deleted.find({param, static_cast<int>(d)});
      for (int64_t i = 0; i < shape[d]; ++i)
        if (it == deleted.end() || !it->second.count(i)) keep[d].push_back(i);
      cut |= static_cast<int64_t>(keep[d].size()) != shape[d];
    }
    for (const auto& [key, positions] : deleted)
      if (key.first == param)
        LOOM_CHECK(key.second < static_cast<int>(shape.size()) && *positions.rbegin() < shape[key.second],
                   "shrink: tensor '", name, "' ", shape_str(shape),
                   " does not have the shape the structure map expects");
    if (!cut) {
      out.emplace_back(name, t.device().is_cpu() ? t : t.to(Device::cpu()));
      continue;
    }
    Shape new_shape;
    for (const auto& k : keep) new_shape.push_back(static_cast<int64_t>(k.size()));
    const Tensor src = t.to(Device::cpu()).cast(DType::F64);
    Tensor dst = Tensor::empty(new_shape, DType::F64);
    const std::vector<int64_t> st = strides_of(shape);
    const double* s = src.data<double>();
    double* o = dst.data<double>();
    std::vector<int64_t> idx(shape.size(), 0);  // odometer over the new shape
    for (int64_t n = 0; n < dst.numel(); ++n) {
      int64_t at = 0;
      for (size_t d = 0; d < shape.size(); ++d) at += keep[d][idx[d]] * st[d];
      o[n] = s[at];
      for (int d = static_cast<int>(shape.size()) - 1; d >= 0; --d) {
        if (++idx[d] < new_shape[d]) break;
        idx[d] = 0;
      }
    }
    out.emplace_back(name, dst.cast(t.dtype()));
  }
  return out;
}

CheckpointContents shrink_checkpoint(const CheckpointContents& c, const ModelShape& shape,
                                     const AxisSelection& selection) {
  const StructureMap map = structure_map(shape);
  CheckpointContents out;
  out.model = shrink_tensors(c.model, map, selection);
  NamedTensors moments = shrink_tensors(c.optimizer, map, selection, "optim.m.");
  out.optimizer = shrink_tensors(moments, map, selection, "optim.v.");
  out.state = c.state;
  out.model_shape = model_shape_to_json(shrink_shape(shape, map, selection));
  return out;
}

}  // namespace loom
