#include "trainer/models/vit.h"

#include <algorithm>

namespace loom {

SampleFlops vit_flops_per_image(const ModelShape& s) {
  const double T = static_cast<double>(s.tokens()), D = static_cast<double>(s.d_model);
  double block_weights = 0, attention = 0;
  for (const auto& b : s.blocks) {
    block_weights += (static_cast<double>(b.qkv_width()) + b.attn_out_width() + 2.0 * b.mlp_dim) * D;
    attention += static_cast<double>(b.heads) * (b.qk_dim + b.v_dim);
  }
  const double patch_embed = 6.0 * s.patches() * s.patch_dim() * D;
  SampleFlops f;
  f.model = 6.0 * T * block_weights + 6.0 * T * T * attention + patch_embed +
            6.0 * s.prefix_tokens() * D * s.num_classes;
  // The patch embedding's input gradient is never computed (the images are not trained).
  f.hardware = f.model - patch_embed / 3.0;
  return f;
}

namespace {
std::vector<TransformerBlock> vit_blocks(const ModelShape& s, const TensorParallelContext* tp) {
  std::vector<TransformerBlock> blocks;
  for (size_t i = 0; i < s.blocks.size(); ++i)
    blocks.emplace_back(static_cast<int>(i), s.d_model, s.blocks[i], /*causal=*/false, GeluKind::Erf, s.ln_eps, tp);
  return blocks;
}

std::vector<ParamSpec> vit_parameters(const ModelShape& s, const std::vector<TransformerBlock>& blocks) {
  const int64_t D = s.d_model;
  std::vector<ParamSpec> specs;
  specs.push_back({"patch_embed.proj.weight", {D, s.patch_dim()}, true, Init::Normal, s.init_std});
  specs.push_back({"patch_embed.proj.bias", {D}, false, Init::Zeros});
  // cls_token and dist_token must stay adjacent: the forward adds them to the position table as one [k, D] block.
  specs.push_back({"cls_token", {1, D}, false, Init::Normal, s.init_std});
  if (s.distilled) specs.push_back({"dist_token", {1, D}, false, Init::Normal, s.init_std});
  specs.push_back({"pos_embed", {s.tokens(), D}, false, Init::Normal, s.init_std});
  for (const auto& b : blocks) b.declare_parameters(specs, s.init_std, static_cast<int>(blocks.size()));
  specs.push_back({"norm.weight", {D}, false, Init::Ones});
  specs.push_back({"norm.bias", {D}, false, Init::Zeros});
  specs.push_back({"head.weight", {s.num_classes, D}, true, Init::Normal, s.init_std});
  specs.push_back({"head.bias", {s.num_classes}, false, Init::Zeros});
  if (s.distilled) {
    specs.push_back({"head_dist.weight", {s.num_classes, D}, true, Init::Normal, s.init_std});
    specs.push_back({"head_dist.bias", {s.num_classes}, false, Init::Zeros});
  }
  return specs;
}

// The [k, D] block of the class (and distillation) token in an arena (values or gradients).
Tensor prefix_rows(const ParameterStore& p, const Tensor& arena, const ModelShape& s) {
  const auto& cls = p.layout().entry("cls_token");
  if (s.distilled)
    LOOM_CHECK(p.layout().entry("dist_token").offset == cls.offset + s.d_model,
               "vit: cls_token and dist_token must be adjacent in the parameter arena");
  return arena.slice_flat(cls.offset, {s.prefix_tokens(), s.d_model});
}
}  // namespace

VitModel::VitModel(const ModelShape& shape, Backend& backend, DType master_dtype, DType compute_dtype, uint64_t seed,
                   double label_smoothing, const TensorParallelContext* tp)
    : shape_(shape),
      backend_(backend),
      compute_dtype_(compute_dtype),
      residual_dtype_(compute_dtype),
      label_smoothing_(label_smoothing),
      tp_(tp),
      blocks_(vit_blocks(shape, tp)),
      params_(ParameterLayout(vit_parameters(shape, blocks_)), master_dtype, compute_dtype, backend.device()) {
  LOOM_CHECK(shape.is_vit(), "VitModel: the shape is of kind \"", shape.kind, "\"");
  params_.initialise(seed, tensor_rank(tp), tensor_size(tp));
}

void VitModel::set_recompute_gelu(bool recompute) {
  recompute_gelu_ = recompute;
  activations_.clear();
}

void VitModel::set_residual_dtype(DType residual) {
  check_residual_dtype(residual, compute_dtype_, tp_);
  residual_dtype_ = residual;
  activations_.clear();
  scratch_.clear();
}

void VitModel::set_active_embedding_channels(int64_t channels) {
  LOOM_CHECK(channels >= 1 && channels <= shape_.d_model, "active embedding channels ", channels,
             " must be in [1, d_model=", shape_.d_model, "]");
  ln_channels_ = channels == shape_.d_model ? 0 : channels;
  for (auto& b : blocks_) b.set_layernorm_channels(ln_channels_);
}

VitModel::Activations& VitModel::activations_for(int64_t B) {
  auto it = activations_.find(B);
  if (it != activations_.end()) return it->second;
  const Device dev = backend_.device();
  const int64_t T = shape_.tokens(), D = shape_.d_model, L = static_cast<int64_t>(blocks_.size());
  Activations a;
  a.patch_emb = Tensor::empty({B, shape_.patches(), D}, compute_dtype_, dev);
  a.pos_plus = Tensor::empty({T, D}, compute_dtype_, dev);
  const int64_t n = sequence_rows(tp_, B, T);
  const bool sp = sequence_parallel(tp_);
  for (int64_t i = 0; i <= L; ++i) a.resid.push_back(Tensor::empty({n, D}, residual_dtype_, dev));
  if (residual_dtype_ != compute_dtype_) a.branch = Tensor::empty({n, D}, compute_dtype_, dev);
  a.embedded = sp                   ? Tensor::empty({B, T, D}, compute_dtype_, dev)
               : a.branch.defined() ? a.branch.view({B, T, D})
                                    : a.resid[0].view({B, T, D});
  a.last_full = sp ? Tensor::empty({B, T, D}, compute_dtype_, dev) : a.resid[L].view({B, T, D});
  if (recompute_gelu_) a.gelu = Tensor::empty({B * T * widest_mlp(blocks_)}, compute_dtype_, dev);
  for (const auto& b : blocks_)
    a.blocks.push_back(b.allocate_activations(B, T, compute_dtype_, backend_, residual_dtype_, a.branch, a.gelu));
  a.normed = Tensor::empty({B * T, D}, compute_dtype_, dev);
  a.norm_mean = Tensor::empty({B * T}, reduction_dtype(compute_dtype_), dev);
  a.norm_rstd = Tensor::empty({B * T}, reduction_dtype(compute_dtype_), dev);
  a.head_in = Tensor::empty({shape_.prefix_tokens(), B, 1, D}, compute_dtype_, dev);
  a.logits = Tensor::empty({B, shape_.num_classes}, compute_dtype_, dev);
  a.logits_dist = Tensor::empty({B, shape_.num_classes}, compute_dtype_, dev);
  a.losses = Tensor::empty({B}, reduction_dtype(compute_dtype_), dev);
  a.dresid = Tensor::empty({B, T, D}, residual_dtype_, dev);
  a.dpos_plus = Tensor::empty({T, D}, compute_dtype_, dev);
  a.dhead = Tensor::empty({B, 1, D}, compute_dtype_, dev);
  if (sp) a.drows = Tensor::empty({n, D}, compute_dtype_, dev);
  return activations_.emplace(B, std::move(a)).first->second;
}

VitModel::Activations& VitModel::forward(const Tensor& patches) {
  LOOM_CHECK(patches.ndim() == 3 && patches.dim(1) == shape_.patches() && patches.dim(2) == shape_.patch_dim(),
             "vit forward: expected patch rows [B, ", shape_.patches(), ", ", shape_.patch_dim(), "], got ",
             patches.str());
  const int64_t B = patches.dim(0), Np = shape_.patches(), T = shape_.tokens(), D = shape_.d_model;
  const int64_t k = shape_.prefix_tokens(), L = static_cast<int64_t>(blocks_.size());
  Activations& a = activations_for(B);
  // Images arrive in f32 from the loader; a bf16/f16 model converts them once into its own buffer.
  if (patches.dtype() == compute_dtype_) {
    a.patch_rows = patches;
  } else {
    if (!a.patch_rows_converted.defined())
      a.patch_rows_converted = Tensor::empty(patches.shape(), compute_dtype_, backend_.device());
    backend_.convert(a.patch_rows_converted, patches);
    a.patch_rows = a.patch_rows_converted;
  }
  Tensor pe = a.patch_emb.view({B * Np, D});
  backend_.matmul_forward(pe, a.patch_rows.view({B * Np, shape_.patch_dim()}), params_.weight("patch_embed.proj.weight"),
                          params_.weight("patch_embed.proj.bias"));
  Tensor& x = a.embedded;
  backend_.zero(x);
  backend_.copy_tokens(x, k, a.patch_emb, 0, Np, /*accumulate=*/false);
  // pos_plus = pos_embed with the class (and distillation) token added to its first k rows, so one position
  // add places the prefix tokens too.
  backend_.convert(a.pos_plus, params_.weight("pos_embed"));
  Tensor pos_prefix = a.pos_plus.slice_flat(0, {k, D});
  backend_.add(pos_prefix, pos_prefix, prefix_rows(params_, params_.compute(), shape_));
  backend_.add_position_forward(x, a.pos_plus);
  // Under SP the blocks see this rank's token rows; the final norm and heads see every token (replicated).
  if (sequence_parallel(tp_)) scatter_to_sequence_region_forward(backend_, tp_, a.resid[0], a.embedded);
  if (a.branch.defined()) backend_.convert(a.resid[0], a.embedded);
  for (int64_t i = 0; i < L; ++i) blocks_[i].forward(backend_, params_, a.resid[i], a.resid[i + 1], a.blocks[i]);
  if (sequence_parallel(tp_)) gather_from_sequence_region_forward(backend_, tp_, a.last_full, a.resid[L]);
  backend_.layernorm_forward(a.normed, a.norm_mean, a.norm_rstd, a.last_full.view({B * T, D}),
                             params_.weight("norm.weight"), params_.weight("norm.bias"), shape_.ln_eps, ln_channels_);
  const Tensor normed = a.normed.view({B, T, D});
  const char* heads[2] = {"head", "head_dist"};
  Tensor* logits[2] = {&a.logits, &a.logits_dist};
  for (int64_t h = 0; h < k; ++h) {
    Tensor in = a.head_in.slice_flat(h * B * D, {B, 1, D});
    backend_.copy_tokens(in, 0, normed, h, 1, false);
    backend_.matmul_forward(*logits[h], in.view({B, D}), params_.weight(std::string(heads[h]) + ".weight"),
                            params_.weight(std::string(heads[h]) + ".bias"));
  }
  return a;
}

void VitModel::forward_backward_into(const Batch& batch, double loss_scale, Tensor& loss_total, double loss_weight) {
  Activations& a = forward(batch.inputs);
  const int64_t B = batch.inputs.dim(0), Np = shape_.patches(), T = shape_.tokens(), D = shape_.d_model;
  const int64_t k = shape_.prefix_tokens(), L = static_cast<int64_t>(blocks_.size());
  LOOM_CHECK(batch.targets.numel() == B, "vit: ", batch.targets.str(), " labels for ", B, " images");
  const Tensor labels = batch.targets.view({B});

  if (!scratch_.count(B))
    scratch_.emplace(B, allocate_block_scratch(blocks_, D, B, T, compute_dtype_, residual_dtype_,
                                               backend_.device(), tp_));
  const bool sp = sequence_parallel(tp_);
  BlockScratch& s = scratch_.at(B);
  // The residual gradient and the final-norm gradient need [B, T, D] each; the block scratch `dln` is free
  // until the blocks run, so it carries the final norm's input gradient.
  Tensor& dresid = a.dresid;
  Tensor dnormed = s.dln.slice_flat(0, {B, T, D});
  backend_.zero(dnormed);

  backward_starts();  // the heads' losses are fused with their gradients, so the loss is timed as backward
  // Each head's loss is weighted 1/k, so the total is the mean of the heads' mean losses. With a teacher
  // (soft_targets.h) each head learns from its logits too; the soft part's gradient goes to a.dsoft first, as
  // the hard loss then overwrites the logits with its own gradient.
  const char* heads[2] = {"head", "head_dist"};
  Tensor* logits[2] = {&a.logits, &a.logits_dist};
  const SoftTargets& soft = batch.soft;
  const bool distilled = soft.logits.defined();
  const double hard_weight = distilled ? 1 - soft.weight : 1;
  for (int64_t h = 0; h < k; ++h) {
    const double dloss = loss_scale / (k * B);
    if (distilled)
      distillation_term(backend_, soft, *logits[h], shape_.num_classes, dloss, a.losses, a.dsoft, loss_total,
                        loss_weight, static_cast<double>(k * B));
    backend_.cross_entropy(a.losses, *logits[h], *logits[h], labels, shape_.num_classes, hard_weight * dloss,
                           label_smoothing_);
    if (distilled) backend_.accumulate(*logits[h], a.dsoft);
    backend_.accumulate_sum(loss_total, a.losses, loss_weight * hard_weight, static_cast<double>(k * B));
    const std::string name(heads[h]);
    Tensor dw = params_.grad(name + ".weight"), db = params_.grad(name + ".bias");
    Tensor& dhead = a.dhead;
    Tensor dhead_rows = dhead.view({B, D});
    backend_.matmul_backward(dhead_rows, dw, db, *logits[h], a.head_in.slice_flat(h * B * D, {B, D}),
                             params_.weight(name + ".weight"));
    backend_.copy_tokens(dnormed, h, dhead, 0, 1, false);
  }
  backend_.zero(dresid);
  Tensor dresid_rows = dresid.view({B * T, D});
  Tensor dnorm_w = params_.grad("norm.weight"), dnorm_b = params_.grad("norm.bias");
  backend_.layernorm_backward(dresid_rows, dnorm_w, dnorm_b, dnormed.view({B * T, D}), a.last_full.view({B * T, D}),
                              params_.weight("norm.weight"), a.norm_mean, a.norm_rstd, ln_channels_);
  // Under SP the blocks' gradient covers this rank's rows, and is gathered back over every token for the
  // embeddings (into dresid, free by then).
  Tensor drows = sp ? a.drows : dresid_rows;
  if (sp) gather_from_sequence_region_backward(backend_, tp_, drows, dresid_rows, /*replicated_consumer=*/true);
  for (int64_t i = L - 1; i >= 0; --i) {
    blocks_[i].backward(backend_, params_, drows, a.resid[i], a.blocks[i], s);
    grads_ready(blocks_[i].prefix());
  }
  if (sp) scatter_to_sequence_region_backward(backend_, tp_, dresid_rows, drows);

  // Position table (and through it the class/distillation tokens), then the patch embedding, from the residual
  // gradient in the compute dtype (an f32 one converted into `branch`, free in the backward).
  Tensor demb = a.branch.defined() ? a.embedded : dresid;
  if (a.branch.defined()) backend_.convert(demb, dresid);
  Tensor& dpos_plus = a.dpos_plus;
  backend_.zero(dpos_plus);
  backend_.add_position_backward(dpos_plus, demb);
  Tensor dpos = params_.grad("pos_embed");
  backend_.accumulate(dpos, dpos_plus);
  Tensor dprefix = prefix_rows(params_, params_.grads(), shape_);
  backend_.accumulate(dprefix, dpos_plus.slice_flat(0, {k, D}));
  Tensor dpatch = s.dln.slice_flat(0, {B, Np, D});
  backend_.copy_tokens(dpatch, 0, demb, k, Np, false);
  Tensor none, dw = params_.grad("patch_embed.proj.weight"), db = params_.grad("patch_embed.proj.bias");
  backend_.matmul_backward(none, dw, db, dpatch.view({B * Np, D}), a.patch_rows.view({B * Np, shape_.patch_dim()}),
                           params_.weight("patch_embed.proj.weight"));
  grads_ready("");
}

Tensor VitModel::logits(const Tensor& patches) {
  Activations& a = forward(patches);
  if (shape_.distilled) {  // timm's inference: the mean of both heads' logits
    backend_.add(a.logits, a.logits, a.logits_dist);
    backend_.scale(a.logits, 0.5);
  }
  return a.logits;
}

EvalStats VitModel::evaluate(const Batch& batch) {
  logits(batch.inputs);
  const int64_t B = batch.inputs.dim(0), K = shape_.num_classes;
  Activations& a = activations_for(B);
  Tensor none;
  const Tensor labels = batch.targets.view({B});
  backend_.cross_entropy(a.losses, none, a.logits, labels, K, 1.0, 0.0);
  EvalStats st;
  st.classifies = true;
  st.loss_sum = sum_on_host(a.losses);
  st.count = B;
  const std::vector<float> logits = a.logits.to_vector();
  const Tensor host_labels = labels.to(Device::cpu());
  for (int64_t b = 0; b < B; ++b) {
    const float* row = logits.data() + b * K;
    const int64_t pred = std::max_element(row, row + K) - row;
    st.correct += pred == host_labels.data<int32_t>()[b];
  }
  return st;
}

}  // namespace loom
