#include "trainer/transformer_block.h"

#include <algorithm>
#include <cmath>

namespace loom {

TransformerBlock::TransformerBlock(int index, int64_t d_model, const BlockWidths& widths, bool causal,
                                   GeluKind gelu, double ln_eps)
    : index_(index), d_model_(d_model), widths_(widths), causal_(causal), gelu_(gelu), ln_eps_(ln_eps) {}

void TransformerBlock::declare_parameters(std::vector<ParamSpec>& specs, double init_std, int n_layer) const {
  const std::string p = prefix();
  const int64_t C = d_model_, Q = widths_.qkv_width(), A = widths_.attn_out_width(), M = widths_.mlp_dim;
  const double proj_std = init_std / std::sqrt(2.0 * n_layer);
  specs.push_back({p + "norm1.weight", {C}, false, Init::Ones});
  specs.push_back({p + "norm1.bias", {C}, false, Init::Zeros});
  specs.push_back({p + "attn.qkv.weight", {Q, C}, true, Init::Normal, init_std});
  specs.push_back({p + "attn.qkv.bias", {Q}, false, Init::Zeros});
  specs.push_back({p + "attn.proj.weight", {C, A}, true, Init::Normal, proj_std});
  specs.push_back({p + "attn.proj.bias", {C}, false, Init::Zeros});
  specs.push_back({p + "norm2.weight", {C}, false, Init::Ones});
  specs.push_back({p + "norm2.bias", {C}, false, Init::Zeros});
  specs.push_back({p + "mlp.fc1.weight", {M, C}, true, Init::Normal, init_std});
  specs.push_back({p + "mlp.fc1.bias", {M}, false, Init::Zeros});
  specs.push_back({p + "mlp.fc2.weight", {C, M}, true, Init::Normal, proj_std});
  specs.push_back({p + "mlp.fc2.bias", {C}, false, Init::Zeros});
}

AttentionShape TransformerBlock::attention_shape(int64_t batch, int64_t seq) const {
  AttentionShape s;
  s.batch = batch;
  s.seq = seq;
  s.heads = widths_.heads;
  s.qk_dim = widths_.qk_dim;
  s.v_dim = widths_.v_dim;
  s.causal = causal_;
  s.scale = 1.0 / std::sqrt(static_cast<double>(widths_.qk_dim));
  return s;
}

BlockActivations TransformerBlock::allocate_activations(int64_t B, int64_t T, DType dtype,
                                                        const Backend& backend) const {
  const Device dev = backend.device();
  const int64_t C = d_model_;
  const AttentionShape as = attention_shape(B, T);
  BlockActivations a;
  a.ln1 = Tensor::empty({B, T, C}, dtype, dev);
  a.ln1_mean = Tensor::empty({B * T}, dtype == DType::F64 ? DType::F64 : DType::F32, dev);
  a.ln1_rstd = Tensor::empty({B * T}, a.ln1_mean.dtype(), dev);
  a.qkv = Tensor::empty({B, T, widths_.qkv_width()}, dtype, dev);
  a.att = Tensor::empty({B, T, widths_.attn_out_width()}, dtype, dev);
  const DType saved_dtype = backend.attention_saved_dtype() == DType::F32 && dtype == DType::F64
                                ? DType::F64
                                : backend.attention_saved_dtype();
  a.att_saved = Tensor::empty(backend.attention_saved_shape(as, dtype), saved_dtype, dev);
  a.mid = Tensor::empty({B, T, C}, dtype, dev);
  a.ln2 = Tensor::empty({B, T, C}, dtype, dev);
  a.ln2_mean = Tensor::empty({B * T}, a.ln1_mean.dtype(), dev);
  a.ln2_rstd = Tensor::empty({B * T}, a.ln1_mean.dtype(), dev);
  a.fc1 = Tensor::empty({B, T, widths_.mlp_dim}, dtype, dev);
  a.gelu = Tensor::empty({B, T, widths_.mlp_dim}, dtype, dev);
  return a;
}

void TransformerBlock::forward(Backend& be, const ParameterStore& p, const Tensor& x, Tensor& out,
                               BlockActivations& a) const {
  const std::string n = prefix();
  const AttentionShape as = attention_shape(x.dim(0), x.dim(1));
  be.layernorm_forward(a.ln1, a.ln1_mean, a.ln1_rstd, x, p.weight(n + "norm1.weight"), p.weight(n + "norm1.bias"),
                       ln_eps_);
  be.matmul_forward(a.qkv, a.ln1, p.weight(n + "attn.qkv.weight"), p.weight(n + "attn.qkv.bias"));
  be.attention_forward(a.att, a.att_saved, a.qkv, as);
  // `out` holds the attention projection for a moment before it becomes the block output.
  be.matmul_forward(out, a.att, p.weight(n + "attn.proj.weight"), p.weight(n + "attn.proj.bias"));
  be.add(a.mid, x, out);
  be.layernorm_forward(a.ln2, a.ln2_mean, a.ln2_rstd, a.mid, p.weight(n + "norm2.weight"),
                       p.weight(n + "norm2.bias"), ln_eps_);
  be.matmul_forward(a.fc1, a.ln2, p.weight(n + "mlp.fc1.weight"), p.weight(n + "mlp.fc1.bias"));
  be.gelu_forward(a.gelu, a.fc1, gelu_);
  be.matmul_forward(out, a.gelu, p.weight(n + "mlp.fc2.weight"), p.weight(n + "mlp.fc2.bias"));
  be.add(out, a.mid, out);
}

void TransformerBlock::backward(Backend& be, const ParameterStore& p, Tensor& dresid, const Tensor& x,
                                const BlockActivations& a, BlockScratch& s) const {
  const std::string n = prefix();
  const int64_t B = x.dim(0), T = x.dim(1), C = d_model_;
  const AttentionShape as = attention_shape(B, T);
  Tensor dln = s.dln.slice_flat(0, {B, T, C});
  Tensor dfc = s.dfc.slice_flat(0, {B, T, widths_.mlp_dim});
  Tensor datt = s.datt.slice_flat(0, {B, T, widths_.attn_out_width()});
  Tensor dqkv = s.dqkv.slice_flat(0, {B, T, widths_.qkv_width()});

  // MLP branch: dresid is dLoss/d(out) = dLoss/d(mlp output); it also flows straight into mid.
  Tensor dfc2_w = p.grad(n + "mlp.fc2.weight"), dfc2_b = p.grad(n + "mlp.fc2.bias");
  be.matmul_backward(dfc, dfc2_w, dfc2_b, dresid, a.gelu, p.weight(n + "mlp.fc2.weight"));
  be.gelu_backward(dfc, dfc, a.fc1, gelu_);
  Tensor dfc1_w = p.grad(n + "mlp.fc1.weight"), dfc1_b = p.grad(n + "mlp.fc1.bias");
  be.matmul_backward(dln, dfc1_w, dfc1_b, dfc, a.ln2, p.weight(n + "mlp.fc1.weight"));
  Tensor dn2_w = p.grad(n + "norm2.weight"), dn2_b = p.grad(n + "norm2.bias");
  be.layernorm_backward(dresid, dn2_w, dn2_b, dln, a.mid, p.weight(n + "norm2.weight"), a.ln2_mean, a.ln2_rstd);

  // Attention branch: dresid is now dLoss/d(mid).
  Tensor dproj_w = p.grad(n + "attn.proj.weight"), dproj_b = p.grad(n + "attn.proj.bias");
  be.matmul_backward(datt, dproj_w, dproj_b, dresid, a.att, p.weight(n + "attn.proj.weight"));
  be.attention_backward(dqkv, datt, a.qkv, a.att, a.att_saved, as);
  Tensor dqkv_w = p.grad(n + "attn.qkv.weight"), dqkv_b = p.grad(n + "attn.qkv.bias");
  be.matmul_backward(dln, dqkv_w, dqkv_b, dqkv, a.ln1, p.weight(n + "attn.qkv.weight"));
  Tensor dn1_w = p.grad(n + "norm1.weight"), dn1_b = p.grad(n + "norm1.bias");
  be.layernorm_backward(dresid, dn1_w, dn1_b, dln, x, p.weight(n + "norm1.weight"), a.ln1_mean, a.ln1_rstd);
}

BlockScratch allocate_block_scratch(const std::vector<TransformerBlock>& blocks, int64_t d_model, int64_t B,
                                    int64_t T, DType dtype, Device device) {
  int64_t qkv = 0, att = 0, mlp = 0;
  for (const auto& b : blocks) {
    qkv = std::max(qkv, b.widths().qkv_width());
    att = std::max(att, b.widths().attn_out_width());
    mlp = std::max(mlp, b.widths().mlp_dim);
  }
  BlockScratch s;
  s.dln = Tensor::empty({B * T * d_model}, dtype, device);
  s.dqkv = Tensor::empty({B * T * qkv}, dtype, device);
  s.datt = Tensor::empty({B * T * att}, dtype, device);
  s.dfc = Tensor::empty({B * T * mlp}, dtype, device);
  return s;
}

}  // namespace loom
