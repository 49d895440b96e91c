// The one pre-LayerNorm transformer block shared by GPT (causal) and ViT/DeiT (non-causal):
//
//   mid = x + proj( attention( qkv( norm1(x) ) ) )
//   out = mid + fc2( gelu( fc1( norm2(mid) ) ) )
//
// Every block carries its own widths (heads, q/k head dim, v head dim, MLP width), because structural pruning
// makes them differ block by block. Parameters are named as in timm ("blocks.{i}.attn.qkv.weight", ...), which
// makes ViT/DeiT import direct and GPT-2 import a rename (trainer/models/interop/hf_gpt2.h).
//
// With a tensor-parallel context (parallel/tensor_parallel.h) of R ranks, this rank holds heads / R heads and
// mlp_dim / R neurons: qkv and fc1 are column-parallel, proj and fc2 row-parallel; with sequence parallelism
// the block's input, output and LayerNorms cover only this rank's N / R token rows. A null context (or R = 1)
// is the single-process block.
//
// The residual stream (x, mid, out and the backward's dresid) has the residual dtype: the compute dtype, or f32
// beside a bf16/f16 compute dtype (train.residual_dtype f32, as PyTorch autocast keeps it). Then the branches'
// GEMMs, attention and LayerNorm outputs stay in the compute dtype: a branch's output goes to the compute-dtype
// buffer `branch` and joins the stream through an f32 add, and the backward converts the stream's gradient to
// the compute dtype once per branch for the GEMMs. Not with sequence parallelism.
//
// Thread-safety: a block is driven by one thread through one Backend.
#pragma once
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "parallel/tensor_parallel.h"
#include "trainer/parameters.h"
#include "trainer/models/widths.h"

namespace loom {

// What one block's forward saves for its backward, for one (batch, sequence) shape.
// Rows: N = B·T tokens; n = N / R rows of this rank under sequence parallelism, else n = N. H and M are this
// rank's heads and MLP width.
struct BlockActivations {
  int64_t batch = 0, seq = 0;
  Tensor ln1, ln1_mean, ln1_rstd;  // [n,C], [n], [n]
  Tensor ln1_full;                 // [B,T,C]: ln1 gathered over the sequence (ln1 itself without SP)
  Tensor qkv;                      // [B,T,H*(2*dqk+dv)]
  Tensor att, att_saved;           // [B,T,H*dv], backend-specific
  Tensor mid;                      // residual stream after attention [n,C]
  Tensor ln2, ln2_mean, ln2_rstd, ln2_full;
  Tensor fc1, gelu;                // [B,T,M] before and after the activation
  bool gelu_recomputed = false;    // gelu is a buffer shared by every block: the backward recomputes it from fc1
  Tensor partial;                  // [B,T,C]: a row-parallel layer's partial sums (SP only)
  Tensor branch;                   // [n,C] compute dtype: a branch's output before an f32 residual stream adds it
                                   // (f32 residual only; forward only, so every block may share one)
};

// Gradient buffers reused by every block's backward (sized for the widest block).
struct BlockScratch {
  Tensor dln, dqkv, datt, dfc;
  Tensor dln_part, dout_full;  // [n,C] and [N,C] (sequence parallelism only)
  Tensor dout_compute;         // [N,C]: an f32 residual gradient converted for the GEMMs (f32 residual only)
};

// Throws loom::Error unless `residual` is `compute`, or f32 beside a bf16/f16 compute dtype without sequence
// parallelism (tp may be null).
void check_residual_dtype(DType residual, DType compute, const TensorParallelContext* tp);

class TransformerBlock {
 public:
  // `widths` are the full (single-process) widths; `tp` (may be null; not owned) selects this rank's share.
  // Throws loom::Error naming model.blocks[index].heads / .mlp_dim when they do not divide by the tensor size.
  TransformerBlock(int index, int64_t d_model, const BlockWidths& widths, bool causal, GeluKind gelu,
                   double ln_eps, const TensorParallelContext* tp = nullptr);

  // Appends this block's parameters. Output projections (attn.proj, mlp.fc2) get init_std/sqrt(2·n_layer),
  // as GPT-2 does, so the residual stream's variance does not grow with depth.
  void declare_parameters(std::vector<ParamSpec>& specs, double init_std, int n_layer) const;

  // Activations in the compute `dtype`, mid in `residual` (check_residual_dtype). With an f32 residual, `branch`
  // is the [n,C] compute-dtype buffer the branches write (undefined: one is allocated). A defined `gelu_scratch`
  // (at least B·T·mlp_dim elements of `dtype`, shared by every block) holds the GELU output instead of a buffer of
  // the block's own: the forward writes it for fc2, the backward recomputes it from fc1 (train.recompute: gelu).
  BlockActivations allocate_activations(int64_t batch, int64_t seq, DType dtype, const Backend& backend,
                                        DType residual, const Tensor& branch = Tensor(),
                                        const Tensor& gelu_scratch = Tensor()) const;

  // out = block(x). `out` must not alias `x`. x and out are [B,T,C] or, under sequence parallelism, [n,C], in the
  // residual dtype of the activations `a`.
  void forward(Backend& be, const ParameterStore& p, const Tensor& x, Tensor& out, BlockActivations& a) const;

  // On entry dresid holds dLoss/d(out); on exit dLoss/d(x). Parameter gradients accumulate into p's grads.
  void backward(Backend& be, const ParameterStore& p, Tensor& dresid, const Tensor& x, const BlockActivations& a,
                BlockScratch& s) const;

  const BlockWidths& widths() const { return widths_; }  // this rank's widths
  // LayerNorm statistics over `channels` embedding channels (0: all); see Model::set_active_embedding_channels.
  void set_layernorm_channels(int64_t channels) { ln_channels_ = channels; }
  AttentionShape attention_shape(int64_t batch, int64_t seq) const;
  std::string prefix() const { return "blocks." + std::to_string(index_) + "."; }

 private:
  int index_;
  int64_t d_model_;
  BlockWidths full_widths_, widths_;  // single-process widths, and this rank's share
  bool causal_;
  GeluKind gelu_;
  double ln_eps_;
  int64_t ln_channels_ = 0;
  const TensorParallelContext* tp_;
};

// Scratch sized for the widest of `blocks` at (batch, seq), for a residual stream of dtype `residual`.
BlockScratch allocate_block_scratch(const std::vector<TransformerBlock>& blocks, int64_t d_model, int64_t batch,
                                    int64_t seq, DType dtype, DType residual, Device device,
                                    const TensorParallelContext* tp = nullptr);

// The largest MLP width (this rank's share) among `blocks`: the size of a buffer every block's GELU fits.
int64_t widest_mlp(const std::vector<TransformerBlock>& blocks);

// Token rows this rank holds in the sequence-parallel regions: B·T / R under sequence parallelism, else B·T.
// Throws loom::Error when B·T does not divide by R.
int64_t sequence_rows(const TensorParallelContext* tp, int64_t batch, int64_t seq);

}  // namespace loom
