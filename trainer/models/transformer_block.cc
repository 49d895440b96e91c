#include "trainer/models/transformer_block.h"

#include <algorithm>
#include <cmath>

#include "trainer/models/model.h"
#include "trainer/models/structure_map.h"

namespace loom {
namespace {

// This rank's share of the full widths: heads and MLP neurons split evenly over the tensor group.
BlockWidths local_widths(int index, const BlockWidths& full, const TensorParallelContext* tp) {
  const int R = tensor_size(tp);
  const std::string at = "model.blocks[" + std::to_string(index) + "]";
  if (full.heads % R != 0) fail(at, ".heads (", full.heads, ") must divide by parallel.tensor (", R, ")");
  if (full.mlp_dim % R != 0) fail(at, ".mlp_dim (", full.mlp_dim, ") must divide by parallel.tensor (", R, ")");
  BlockWidths w = full;
  w.heads /= R;
  w.mlp_dim /= R;
  return w;
}

}  // namespace

void check_residual_dtype(DType residual, DType compute, const TensorParallelContext* tp) {
  if (residual == compute) return;
  if (residual != DType::F32 || (compute != DType::BF16 && compute != DType::F16))
    fail("train.residual_dtype: a ", dtype_name(residual), " residual stream beside ", dtype_name(compute),
         " activations is not supported (the compute dtype, or f32 beside bf16/f16)");
  if (sequence_parallel(tp))
    fail("train.residual_dtype: an f32 residual stream is not supported with parallel.sequence (its sequence "
         "region exchanges carry the compute dtype); set residual_dtype: compute");
}

int64_t sequence_rows(const TensorParallelContext* tp, int64_t B, int64_t T) {
  if (!sequence_parallel(tp)) return B * T;
  if (B * T % tp->size() != 0)
    fail("sequence parallelism: the ", B * T, " token rows of a micro-batch (", B, " x ", T,
         ") must divide by parallel.tensor (", tp->size(), ")");
  return B * T / tp->size();
}

TransformerBlock::TransformerBlock(int index, int64_t d_model, const BlockWidths& widths, bool causal,
                                   GeluKind gelu, double ln_eps, const TensorParallelContext* tp)
    : index_(index),
      d_model_(d_model),
      full_widths_(widths),
      widths_(local_widths(index, widths, tp)),
      causal_(causal),
      gelu_(gelu),
      ln_eps_(ln_eps),
      tp_(tp) {}

void TransformerBlock::declare_parameters(std::vector<ParamSpec>& specs, double init_std, int n_layer) const {
  const std::string p = prefix();
  const int64_t C = d_model_, Q = widths_.qkv_width(), A = widths_.attn_out_width(), M = widths_.mlp_dim;
  const double proj_std = init_std / std::sqrt(2.0 * n_layer);
  // Column-parallel layers split their output rows (q, k and v sections separately, so each rank holds whole
  // heads of each); row-parallel layers split their input columns; the rest is replicated. A rank's share is a
  // contiguous range of the heads and MLP axes of the block's structure map.
  const int R = tensor_size(tp_);
  const std::vector<Axis> axes = block_axes(index_, full_widths_);
  const Axis &heads = axes[0], &mlp = axes[3];
  const ParamSharding qkv = sharding_from_axis(heads, p + "attn.qkv.weight", {R * Q, C}, R);
  const ParamSharding qkv_bias = sharding_from_axis(heads, p + "attn.qkv.bias", {R * Q}, R);
  const ParamSharding proj = sharding_from_axis(heads, p + "attn.proj.weight", {C, R * A}, R);
  const ParamSharding fc1 = sharding_from_axis(mlp, p + "mlp.fc1.weight", {R * M, C}, R);
  const ParamSharding fc1_bias = sharding_from_axis(mlp, p + "mlp.fc1.bias", {R * M}, R);
  const ParamSharding fc2 = sharding_from_axis(mlp, p + "mlp.fc2.weight", {C, R * M}, R);
  ParamSharding norm;
  norm.grad_partial_over_tensor = sequence_parallel(tp_);
  specs.push_back({p + "norm1.weight", {C}, false, Init::Ones, 0.02, norm});
  specs.push_back({p + "norm1.bias", {C}, false, Init::Zeros, 0.02, norm});
  specs.push_back({p + "attn.qkv.weight", {Q, C}, true, Init::Normal, init_std, qkv});
  specs.push_back({p + "attn.qkv.bias", {Q}, false, Init::Zeros, 0.02, qkv_bias});
  specs.push_back({p + "attn.proj.weight", {C, A}, true, Init::Normal, proj_std, proj});
  specs.push_back({p + "attn.proj.bias", {C}, false, Init::Zeros});
  specs.push_back({p + "norm2.weight", {C}, false, Init::Ones, 0.02, norm});
  specs.push_back({p + "norm2.bias", {C}, false, Init::Zeros, 0.02, norm});
  specs.push_back({p + "mlp.fc1.weight", {M, C}, true, Init::Normal, init_std, fc1});
  specs.push_back({p + "mlp.fc1.bias", {M}, false, Init::Zeros, 0.02, fc1_bias});
  specs.push_back({p + "mlp.fc2.weight", {C, M}, true, Init::Normal, proj_std, fc2});
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
  s.scale = widths_.scale();
  return s;
}

BlockActivations TransformerBlock::allocate_activations(int64_t B, int64_t T, DType dtype, const Backend& backend,
                                                        DType residual, const Tensor& branch,
                                                        const Tensor& gelu_scratch) const {
  check_residual_dtype(residual, dtype, tp_);
  const Device dev = backend.device();
  const int64_t C = d_model_, n = sequence_rows(tp_, B, T);
  const bool sp = sequence_parallel(tp_);
  const AttentionShape as = attention_shape(B, T);
  const DType stat_dtype = reduction_dtype(dtype);
  BlockActivations a;
  a.batch = B;
  a.seq = T;
  a.ln1 = Tensor::empty({n, C}, dtype, dev);
  a.ln1_mean = Tensor::empty({n}, stat_dtype, dev);
  a.ln1_rstd = Tensor::empty({n}, stat_dtype, dev);
  a.ln1_full = sp ? Tensor::empty({B, T, C}, dtype, dev) : a.ln1.view({B, T, C});
  a.qkv = Tensor::empty({B, T, widths_.qkv_width()}, dtype, dev);
  a.att = Tensor::empty({B, T, widths_.attn_out_width()}, dtype, dev);
  const DType saved_dtype = backend.attention_saved_dtype() == DType::F32 && dtype == DType::F64
                                ? DType::F64
                                : backend.attention_saved_dtype();
  a.att_saved = Tensor::empty(backend.attention_saved_shape(as, dtype), saved_dtype, dev);
  a.mid = Tensor::empty({n, C}, residual, dev);
  if (residual != dtype) a.branch = branch.defined() ? branch : Tensor::empty({n, C}, dtype, dev);
  a.ln2 = Tensor::empty({n, C}, dtype, dev);
  a.ln2_mean = Tensor::empty({n}, stat_dtype, dev);
  a.ln2_rstd = Tensor::empty({n}, stat_dtype, dev);
  a.ln2_full = sp ? Tensor::empty({B, T, C}, dtype, dev) : a.ln2.view({B, T, C});
  a.fc1 = Tensor::empty({B, T, widths_.mlp_dim}, dtype, dev);
  a.gelu_recomputed = gelu_scratch.defined();
  a.gelu = a.gelu_recomputed ? gelu_scratch.slice_flat(0, {B, T, widths_.mlp_dim})
                             : Tensor::empty({B, T, widths_.mlp_dim}, dtype, dev);
  if (sp) a.partial = Tensor::empty({B, T, C}, dtype, dev);
  return a;
}

void TransformerBlock::forward(Backend& be, const ParameterStore& p, const Tensor& x_in, Tensor& out_in,
                               BlockActivations& a) const {
  const std::string n = prefix();
  const int64_t B = a.batch, T = a.seq, C = d_model_, rows = a.mid.dim(0);
  const bool sp = sequence_parallel(tp_);
  LOOM_CHECK(x_in.numel() == rows * C && out_in.numel() == rows * C, "block ", index_, ": input ", x_in.str(),
             " / output ", out_in.str(), " must hold ", rows, " token rows of ", C);
  const Tensor x = x_in.view({rows, C});
  Tensor out = out_in.view({rows, C});
  const AttentionShape as = attention_shape(B, T);
  // Region exits joining the residual stream: stream_out = stream_in + the row-parallel projection of `in`.
  // Without SP and with the stream in the compute dtype, one GEMM that adds stream_in (the sum taken tile by tile
  // while the GEMM runs under TP); under SP the partial sums are reduce-scattered to rows, and with an f32 stream
  // (SP refused then) the projection goes to the compute-dtype `branch`, each then added to the stream.
  Tensor branch = a.branch.defined() ? a.branch.view({rows, C}) : Tensor();
  auto exit_to_stream = [&](Tensor& stream_out, const Tensor& stream_in, const Tensor& in, const Tensor& w,
                            const Tensor& b) {
    if (sp) {
      RowParallelLinear::forward(be, tp_, a.partial, in, w, b);
      reduce_scatter_to_sequence_region_forward(be, tp_, branch.defined() ? branch : stream_out, a.partial);
      be.add(stream_out, stream_in, branch.defined() ? branch : stream_out);
    } else if (branch.defined()) {
      RowParallelLinear::forward_reduced(be, tp_, branch, in, w, b);
      be.add(stream_out, stream_in, branch);
    } else {
      RowParallelLinear::forward_reduced_residual(be, tp_, stream_out, in, w, b, stream_in);
    }
  };

  be.layernorm_forward(a.ln1, a.ln1_mean, a.ln1_rstd, x, p.weight(n + "norm1.weight"), p.weight(n + "norm1.bias"),
                       ln_eps_, ln_channels_);
  if (sp) gather_from_sequence_region_forward(be, tp_, a.ln1_full, a.ln1);
  ColumnParallelLinear::forward(be, a.qkv, a.ln1_full, p.weight(n + "attn.qkv.weight"), p.weight(n + "attn.qkv.bias"));
  be.attention_forward(a.att, a.att_saved, a.qkv, as);
  exit_to_stream(a.mid, x, a.att, p.weight(n + "attn.proj.weight"), p.weight(n + "attn.proj.bias"));

  be.layernorm_forward(a.ln2, a.ln2_mean, a.ln2_rstd, a.mid, p.weight(n + "norm2.weight"),
                       p.weight(n + "norm2.bias"), ln_eps_, ln_channels_);
  if (sp) gather_from_sequence_region_forward(be, tp_, a.ln2_full, a.ln2);
  // fc1 is column-parallel, a purely local matmul (ColumnParallelLinear::forward), so it fuses with the GELU.
  be.matmul_gelu_forward(a.gelu, a.fc1, a.ln2_full, p.weight(n + "mlp.fc1.weight"), p.weight(n + "mlp.fc1.bias"),
                         gelu_);
  exit_to_stream(out, a.mid, a.gelu, p.weight(n + "mlp.fc2.weight"), p.weight(n + "mlp.fc2.bias"));
}

void TransformerBlock::backward(Backend& be, const ParameterStore& p, Tensor& dresid_in, const Tensor& x_in,
                                const BlockActivations& a, BlockScratch& s) const {
  const std::string n = prefix();
  const int64_t B = a.batch, T = a.seq, C = d_model_, rows = a.mid.dim(0);
  const bool sp = sequence_parallel(tp_);
  const AttentionShape as = attention_shape(B, T);
  Tensor dresid = dresid_in.view({rows, C});
  const Tensor x = x_in.view({rows, C});
  Tensor dln = s.dln.slice_flat(0, {B, T, C});
  Tensor dfc = s.dfc.slice_flat(0, {B, T, widths_.mlp_dim});
  Tensor datt = s.datt.slice_flat(0, {B, T, widths_.attn_out_width()});
  Tensor dqkv = s.dqkv.slice_flat(0, {B, T, widths_.qkv_width()});
  // Under SP the region's output gradient is gathered from every rank's rows, and its input gradient (partial
  // per rank) is reduce-scattered back to rows; without SP the input gradient is all-reduced in place.
  // An f32 residual gradient enters the branches' GEMMs converted to the compute dtype (SP is refused then).
  const bool f32_residual = dresid.dtype() != dln.dtype();
  Tensor dout = sp             ? s.dout_full.slice_flat(0, {B, T, C})
                : f32_residual ? s.dout_compute.slice_flat(0, {B, T, C})
                               : dresid.view({B, T, C});
  Tensor dln_rows = sp ? s.dln_part.slice_flat(0, {rows, C}) : dln.view({rows, C});
  auto enter_region_backward = [&]() {
    if (sp)
      reduce_scatter_to_sequence_region_backward(be, tp_, dout, dresid);
    else if (f32_residual)
      be.convert(dout, dresid);
  };
  // The column-parallel input gradient's reduction (all-reduce, or reduce-scatter to rows under SP) overlaps the
  // weight-gradient GEMM.
  Tensor dln_part = sp ? dln_rows : Tensor();

  // MLP branch: dresid is dLoss/d(out) = dLoss/d(mlp output); it also flows straight into mid.
  enter_region_backward();
  Tensor dfc2_w = p.grad(n + "mlp.fc2.weight"), dfc2_b = p.grad(n + "mlp.fc2.bias");
  // fc2's backward (RowParallelLinear::backward, local) fused with the GELU's: dfc = dLoss/d(fc1 output).
  if (a.gelu_recomputed) {  // the shared buffer holds a later block's GELU: recompute this one's from fc1
    Tensor gelu = a.gelu;
    be.gelu_forward(gelu, a.fc1, gelu_);
  }
  be.matmul_backward_gelu(dfc, dfc2_w, dfc2_b, dout, a.gelu, p.weight(n + "mlp.fc2.weight"), a.fc1, gelu_);
  Tensor dfc1_w = p.grad(n + "mlp.fc1.weight"), dfc1_b = p.grad(n + "mlp.fc1.bias");
  ColumnParallelLinear::backward_overlapped(be, tp_, dln, dln_part, dfc1_w, dfc1_b, dfc, a.ln2_full,
                                            p.weight(n + "mlp.fc1.weight"));
  Tensor dn2_w = p.grad(n + "norm2.weight"), dn2_b = p.grad(n + "norm2.bias");
  be.layernorm_backward(dresid, dn2_w, dn2_b, dln_rows, a.mid, p.weight(n + "norm2.weight"), a.ln2_mean, a.ln2_rstd,
                        ln_channels_);

  // Attention branch: dresid is now dLoss/d(mid).
  enter_region_backward();
  Tensor dproj_w = p.grad(n + "attn.proj.weight"), dproj_b = p.grad(n + "attn.proj.bias");
  RowParallelLinear::backward(be, datt, dproj_w, dproj_b, dout, a.att, p.weight(n + "attn.proj.weight"));
  be.attention_backward(dqkv, datt, a.qkv, a.att, a.att_saved, as);
  Tensor dqkv_w = p.grad(n + "attn.qkv.weight"), dqkv_b = p.grad(n + "attn.qkv.bias");
  ColumnParallelLinear::backward_overlapped(be, tp_, dln, dln_part, dqkv_w, dqkv_b, dqkv, a.ln1_full,
                                            p.weight(n + "attn.qkv.weight"));
  Tensor dn1_w = p.grad(n + "norm1.weight"), dn1_b = p.grad(n + "norm1.bias");
  be.layernorm_backward(dresid, dn1_w, dn1_b, dln_rows, x, p.weight(n + "norm1.weight"), a.ln1_mean, a.ln1_rstd,
                        ln_channels_);
}

int64_t widest_mlp(const std::vector<TransformerBlock>& blocks) {
  int64_t widest = 0;
  for (const auto& b : blocks) widest = std::max(widest, b.widths().mlp_dim);
  return widest;
}

BlockScratch allocate_block_scratch(const std::vector<TransformerBlock>& blocks, int64_t d_model, int64_t B,
                                    int64_t T, DType dtype, DType residual, Device device,
                                    const TensorParallelContext* tp) {
  check_residual_dtype(residual, dtype, tp);
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
  if (residual != dtype) s.dout_compute = Tensor::empty({B * T * d_model}, dtype, device);
  if (sequence_parallel(tp)) {
    s.dln_part = Tensor::empty({sequence_rows(tp, B, T) * d_model}, dtype, device);
    s.dout_full = Tensor::empty({B * T * d_model}, dtype, device);
  }
  return s;
}

}  // namespace loom
