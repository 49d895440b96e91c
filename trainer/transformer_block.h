// The one pre-LayerNorm transformer block shared by GPT (causal) and ViT/DeiT (non-causal):
//
//   mid = x + proj( attention( qkv( norm1(x) ) ) )
//   out = mid + fc2( gelu( fc1( norm2(mid) ) ) )
//
// Every block carries its own widths (heads, q/k head dim, v head dim, MLP width), because structural pruning
// makes them differ block by block. Parameters are named as in timm ("blocks.{i}.attn.qkv.weight", ...), which
// makes ViT/DeiT import direct and GPT-2 import a rename (trainer/hf_gpt2.h).
//
// Thread-safety: a block is driven by one thread through one Backend.
#pragma once
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "trainer/parameters.h"
#include "trainer/widths.h"

namespace loom {

// What one block's forward saves for its backward, for one (batch, sequence) shape.
struct BlockActivations {
  Tensor ln1, ln1_mean, ln1_rstd;  // [B,T,C], [B*T], [B*T]
  Tensor qkv;                      // [B,T,H*(2*dqk+dv)]
  Tensor att, att_saved;           // [B,T,H*dv], backend-specific
  Tensor mid;                      // residual stream after attention [B,T,C]
  Tensor ln2, ln2_mean, ln2_rstd;
  Tensor fc1, gelu;                // [B,T,M] before and after the activation
};

// Gradient buffers reused by every block's backward (sized for the widest block).
struct BlockScratch {
  Tensor dln, dqkv, datt, dfc;
};

class TransformerBlock {
 public:
  TransformerBlock(int index, int64_t d_model, const BlockWidths& widths, bool causal, GeluKind gelu,
                   double ln_eps);

  // Appends this block's parameters. Output projections (attn.proj, mlp.fc2) get init_std/sqrt(2·n_layer),
  // as GPT-2 does, so the residual stream's variance does not grow with depth.
  void declare_parameters(std::vector<ParamSpec>& specs, double init_std, int n_layer) const;

  BlockActivations allocate_activations(int64_t batch, int64_t seq, DType dtype, const Backend& backend) const;

  // out = block(x). `out` must not alias `x`.
  void forward(Backend& be, const ParameterStore& p, const Tensor& x, Tensor& out, BlockActivations& a) const;

  // On entry dresid holds dLoss/d(out); on exit dLoss/d(x). Parameter gradients accumulate into p's grads.
  void backward(Backend& be, const ParameterStore& p, Tensor& dresid, const Tensor& x, const BlockActivations& a,
                BlockScratch& s) const;

  const BlockWidths& widths() const { return widths_; }
  AttentionShape attention_shape(int64_t batch, int64_t seq) const;
  std::string prefix() const { return "blocks." + std::to_string(index_) + "."; }

 private:
  int index_;
  int64_t d_model_;
  BlockWidths widths_;
  bool causal_;
  GeluKind gelu_;
  double ln_eps_;
};

// Scratch sized for the widest of `blocks` at (batch, seq).
BlockScratch allocate_block_scratch(const std::vector<TransformerBlock>& blocks, int64_t d_model, int64_t batch,
                                    int64_t seq, DType dtype, Device device);

}  // namespace loom
