#include "trainer/models/gpt.h"

#include <cmath>

namespace loom {

SampleFlops gpt_flops_per_token(const ModelShape& s, int64_t seq) {
  double matmul_weights = 0, attention = 0;
  for (const auto& b : s.blocks) {
    matmul_weights += static_cast<double>(b.qkv_width()) * s.d_model + static_cast<double>(b.attn_out_width()) * s.d_model +
                      2.0 * b.mlp_dim * s.d_model;
    attention += static_cast<double>(b.heads) * (b.qk_dim + b.v_dim);
  }
  SampleFlops f;
  f.model = 6.0 * (matmul_weights + static_cast<double>(s.vocab) * s.d_model) + 6.0 * seq * attention;
  f.hardware = 6.0 * (matmul_weights + static_cast<double>(s.padded_vocab) * s.d_model) + 6.0 * seq * attention;
  return f;
}

namespace {
std::vector<ParamSpec> gpt_parameters(const ModelShape& s, const std::vector<TransformerBlock>& blocks,
                                     const TensorParallelContext* tp) {
  const int R = tensor_size(tp);
  if (s.padded_vocab % R != 0)
    fail("the padded vocabulary (", s.padded_vocab, " rows for model.vocab_size ", s.vocab,
         ") must divide by parallel.tensor (", R, ")");
  ParamSharding vocab{0, {s.padded_vocab / R}}, norm;
  norm.grad_partial_over_tensor = sequence_parallel(tp);
  std::vector<ParamSpec> specs;
  specs.push_back({"wte.weight", {s.padded_vocab / R, s.d_model}, true, Init::Normal, s.init_std, vocab});
  specs.push_back({"wpe.weight", {s.max_seq, s.d_model}, true, Init::Normal, s.init_std / 2});
  for (const auto& b : blocks) b.declare_parameters(specs, s.init_std, static_cast<int>(blocks.size()));
  specs.push_back({"norm.weight", {s.d_model}, false, Init::Ones, 0.02, norm});
  specs.push_back({"norm.bias", {s.d_model}, false, Init::Zeros, 0.02, norm});
  return specs;
}

std::vector<TransformerBlock> gpt_blocks(const ModelShape& s, const TensorParallelContext* tp) {
  std::vector<TransformerBlock> blocks;
  for (size_t i = 0; i < s.blocks.size(); ++i)
    blocks.emplace_back(static_cast<int>(i), s.d_model, s.blocks[i], /*causal=*/true, GeluKind::Tanh, s.ln_eps, tp);
  return blocks;
}

}  // namespace

GptModel::GptModel(const ModelShape& shape, Backend& backend, DType master_dtype, DType compute_dtype, int64_t seq,
                   uint64_t seed, const TensorParallelContext* tp)
    : shape_(shape),
      backend_(backend),
      tp_(tp),
      compute_dtype_(compute_dtype),
      residual_dtype_(compute_dtype),
      seq_(seq),
      blocks_(gpt_blocks(shape, tp)),
      params_(ParameterLayout(gpt_parameters(shape, blocks_, tp)), master_dtype, compute_dtype, backend.device()) {
  LOOM_CHECK(shape.is_gpt(), "GptModel: the shape is of kind \"", shape.kind, "\"");
  if (seq <= 0 || seq > shape.max_seq)
    fail("data.seq_len ", seq, " must be in [1, model.max_seq_len=", shape.max_seq, "]");
  params_.initialise(seed, tensor_rank(tp), tensor_size(tp));
  if (tensor_size(tp) > 1) {
    table_ = Tensor::empty({shape.padded_vocab, shape.d_model}, compute_dtype, backend.device());
    dtable_ = Tensor::empty({shape.padded_vocab, shape.d_model}, compute_dtype, backend.device());
  }
}

GptModel::Activations& GptModel::activations_for(int64_t B, int64_t T) {
  auto key = std::make_pair(B, T);
  auto it = activations_.find(key);
  if (it != activations_.end()) return it->second;
  const Device dev = backend_.device();
  const int64_t C = shape_.d_model, L = static_cast<int64_t>(blocks_.size()), N = B * T;
  const int64_t n = sequence_rows(tp_, B, T);
  const bool sp = sequence_parallel(tp_);
  Activations a;
  for (int64_t i = 0; i <= L; ++i) a.resid.push_back(Tensor::empty({n, C}, residual_dtype_, dev));
  if (residual_dtype_ != compute_dtype_) a.branch = Tensor::empty({n, C}, compute_dtype_, dev);
  a.embedded = sp                ? Tensor::empty({B, T, C}, compute_dtype_, dev)
               : a.branch.defined() ? a.branch.view({B, T, C})
                                    : a.resid[0].view({B, T, C});
  if (recompute_gelu_) a.gelu = Tensor::empty({N * widest_mlp(blocks_)}, compute_dtype_, dev);
  for (const auto& b : blocks_)
    a.blocks.push_back(b.allocate_activations(B, T, compute_dtype_, backend_, residual_dtype_, a.branch, a.gelu));
  a.lnf = Tensor::empty({n, C}, compute_dtype_, dev);
  a.lnf_mean = Tensor::empty({n}, reduction_dtype(compute_dtype_), dev);
  a.lnf_rstd = Tensor::empty({n}, reduction_dtype(compute_dtype_), dev);
  a.lnf_full = sp ? Tensor::empty({N, C}, compute_dtype_, dev) : a.lnf;
  a.logits = Tensor::empty({N, shape_.padded_vocab / tensor_size(tp_)}, compute_dtype_, dev);
  a.losses = Tensor::empty({N}, reduction_dtype(compute_dtype_), dev);
  return activations_.emplace(key, std::move(a)).first->second;
}

GptModel::Activations& GptModel::forward(const Tensor& tokens) {
  LOOM_CHECK(tokens.ndim() == 2 && tokens.dtype() == DType::I32, "gpt forward: tokens must be I32 [B, T], got ",
             tokens.str());
  const int64_t B = tokens.dim(0), T = tokens.dim(1), L = static_cast<int64_t>(blocks_.size());
  LOOM_CHECK(T <= shape_.max_seq, "gpt forward: sequence length ", T, " exceeds model.max_seq_len ", shape_.max_seq);
  Activations& a = activations_for(B, T);
  VocabParallelEmbedding::forward(backend_, tp_, a.embedded, table_, tokens, params_.weight("wte.weight"));
  backend_.add_position_forward(a.embedded, params_.weight("wpe.weight"));
  if (sequence_parallel(tp_)) scatter_to_sequence_region_forward(backend_, tp_, a.resid[0], a.embedded);
  if (a.branch.defined()) backend_.convert(a.resid[0], a.embedded);
  for (int64_t i = 0; i < L; ++i) blocks_[i].forward(backend_, params_, a.resid[i], a.resid[i + 1], a.blocks[i]);
  backend_.layernorm_forward(a.lnf, a.lnf_mean, a.lnf_rstd, a.resid[L], params_.weight("norm.weight"),
                             params_.weight("norm.bias"), shape_.ln_eps, ln_channels_);
  if (sequence_parallel(tp_)) gather_from_sequence_region_forward(backend_, tp_, a.lnf_full, a.lnf);
  // The output projection is column-parallel over the vocabulary: each rank's logits for its rows of wte.
  ColumnParallelLinear::forward(backend_, a.logits, a.lnf_full, params_.weight("wte.weight"), Tensor());
  return a;
}

void GptModel::forward_backward_into(const Batch& batch, double loss_scale, Tensor& loss_total, double loss_weight) {
  Activations& a = forward(batch.inputs);
  const int64_t B = batch.inputs.dim(0), T = batch.inputs.dim(1), N = B * T, C = shape_.d_model;
  const int64_t L = static_cast<int64_t>(blocks_.size()), n = a.lnf.dim(0);
  const bool sp = sequence_parallel(tp_);
  LOOM_CHECK(batch.targets.numel() == N, "gpt: targets ", batch.targets.str(), " do not match inputs ",
             batch.inputs.str());
  Tensor targets = batch.targets.view({N});
  // Distillation (soft_targets.h): the soft part's gradient goes to a.dsoft first, as the hard loss then
  // overwrites the logits with its own gradient.
  const SoftTargets& soft = batch.soft;
  const bool distilled = soft.logits.defined();
  LOOM_CHECK(!distilled || tensor_size(tp_) == 1, "gpt: distillation needs every vocabulary column on one rank; "
             "parallel.tensor splits them over ", tensor_size(tp_), " ranks");
  if (distilled)
    distillation_term(backend_, soft, a.logits, shape_.vocab, loss_scale / N, a.losses, a.dsoft, loss_total,
                      loss_weight, static_cast<double>(N));
  const double hard_weight = distilled ? 1 - soft.weight : 1;
  // The loss is the mean over the N targets; the logits buffer is overwritten by its own gradient. Under TP
  // the ranks exchange per-row partials of their vocabulary columns, never the logits themselves.
  vocab_parallel_cross_entropy(backend_, tp_, a.losses, a.logits, a.logits, targets, shape_.vocab,
                               hard_weight * loss_scale / N, 0.0);
  if (distilled) backend_.accumulate(a.logits, a.dsoft);
  backend_.accumulate_sum(loss_total, a.losses, loss_weight * hard_weight, static_cast<double>(N));
  backward_starts();

  auto sk = std::make_pair(B, T);
  if (!scratch_.count(sk))
    scratch_.emplace(sk, allocate_block_scratch(blocks_, C, B, T, compute_dtype_, residual_dtype_,
                                                backend_.device(), tp_));
  BlockScratch& s = scratch_.at(sk);
  if (!dresid_.defined() || dresid_.numel() < N * C)
    dresid_ = Tensor::empty({N * C}, residual_dtype_, backend_.device());
  Tensor dresid = dresid_.slice_flat(0, {n, C});
  backend_.zero(dresid);

  Tensor dlnf_full = s.dln.slice_flat(0, {N, C});
  Tensor dwte = params_.grad("wte.weight"), none;
  Tensor dlnf = sp ? s.dln_part.slice_flat(0, {n, C}) : dlnf_full;
  Tensor dlnf_part = sp ? dlnf : Tensor();
  ColumnParallelLinear::backward_overlapped(backend_, tp_, dlnf_full, dlnf_part, dwte, none, a.logits, a.lnf_full,
                                            params_.weight("wte.weight"));
  Tensor dnorm_w = params_.grad("norm.weight"), dnorm_b = params_.grad("norm.bias");
  backend_.layernorm_backward(dresid, dnorm_w, dnorm_b, dlnf, a.resid[L], params_.weight("norm.weight"), a.lnf_mean,
                              a.lnf_rstd, ln_channels_);
  for (int64_t i = L - 1; i >= 0; --i) {
    blocks_[i].backward(backend_, params_, dresid, a.resid[i], a.blocks[i], s);
    grads_ready(blocks_[i].prefix());
  }
  // The embeddings see every token: under SP the rows' gradients are gathered first (s.dout_full is free now);
  // an f32 residual gradient is converted to the compute dtype (into `branch`, free in the backward).
  Tensor demb = sp ? s.dout_full.slice_flat(0, {B, T, C}) : a.branch.defined() ? a.embedded : dresid.view({B, T, C});
  if (sp) scatter_to_sequence_region_backward(backend_, tp_, demb, dresid);
  if (a.branch.defined()) backend_.convert(demb, dresid);
  VocabParallelEmbedding::backward(backend_, tp_, dwte, dtable_, demb, batch.inputs);
  Tensor dwpe = params_.grad("wpe.weight");
  backend_.add_position_backward(dwpe, demb);
  grads_ready("");
}

EvalStats GptModel::evaluate(const Batch& batch) {
  Activations& a = forward(batch.inputs);
  const int64_t N = batch.inputs.numel();
  Tensor targets = batch.targets.view({N}), none;
  vocab_parallel_cross_entropy(backend_, tp_, a.losses, none, a.logits, targets, shape_.vocab, 1.0, 0.0);
  EvalStats st;
  st.loss_sum = sum_on_host(a.losses);
  st.count = N;
  return st;
}

Tensor GptModel::logits(const Tensor& tokens) {
  LOOM_CHECK(tensor_size(tp_) == 1, "gpt: logits() needs every vocabulary column on one rank; parallel.tensor "
             "splits them over ", tensor_size(tp_), " ranks");
  return forward(tokens).logits;
}

SampleFlops GptModel::flops_per_sample() const {
  SampleFlops f = gpt_flops_per_token(shape_, seq_);
  f.model *= seq_;
  f.hardware *= seq_;
  return f;
}

void GptModel::set_recompute_gelu(bool recompute) {
  recompute_gelu_ = recompute;
  activations_.clear();
}

void GptModel::set_residual_dtype(DType residual) {
  check_residual_dtype(residual, compute_dtype_, tp_);
  residual_dtype_ = residual;
  activations_.clear();
  scratch_.clear();
  dresid_ = Tensor();
}

void GptModel::set_active_embedding_channels(int64_t channels) {
  LOOM_CHECK(channels >= 1 && channels <= shape_.d_model, "active embedding channels ", channels,
             " must be in [1, d_model=", shape_.d_model, "]");
  ln_channels_ = channels == shape_.d_model ? 0 : channels;
  for (auto& b : blocks_) b.set_layernorm_channels(ln_channels_);
}

std::vector<float> GptModel::last_logits(const Tensor& tokens) {
  const int64_t B = tokens.dim(0), t = tokens.dim(1);
  LOOM_CHECK(t >= 1 && t <= seq_, "last_logits: context length ", t, " must be in [1, ", seq_, "]");
  // Pad the context to the model's sequence length: attention is causal, so positions after t-1 cannot change
  // the logits at t-1, and one activation arena serves every context length.
  Tensor padded = Tensor::zeros({B, seq_}, DType::I32);
  Tensor host = tokens.to(Device::cpu());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < t; ++i) padded.data<int32_t>()[b * seq_ + i] = host.data<int32_t>()[b * t + i];
  Activations& a = forward(padded.to(backend_.device()));
  // Only position t-1 of each sequence is needed: pick those B rows of this rank's vocabulary columns, then
  // gather the columns of every rank for them alone.
  const Device dev = backend_.device();
  const int64_t Vr = a.logits.dim(1);
  Tensor last = Tensor::empty({B, 1, Vr}, compute_dtype_, dev);
  backend_.copy_tokens(last, 0, a.logits.view({B, seq_, Vr}), t - 1, 1, /*accumulate=*/false);
  Tensor full = Tensor::empty({B, shape_.padded_vocab}, compute_dtype_, dev);
  gather_vocab_columns(backend_, tp_, full, last.view({B, Vr}));
  const std::vector<float> all = full.to_vector();
  std::vector<float> out(static_cast<size_t>(B * shape_.vocab));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t v = 0; v < shape_.vocab; ++v) out[b * shape_.vocab + v] = all[b * shape_.padded_vocab + v];
  return out;
}

}  // namespace loom
