// GPT with the GPT-2 layout: token and learned position embeddings, pre-LayerNorm blocks (causal attention,
// tanh GELU), a final LayerNorm, and an output projection tied to the token embedding.
//
// The vocabulary is padded to a multiple of 128 rows (50257 -> 50304 for GPT-2) so the output GEMM has a
// friendly shape; padded rows never receive probability mass (the loss masks them) and are dropped on export.
#pragma once
#include <map>
#include <memory>
#include <vector>

#include "core/config.pb.h"
#include "trainer/models/model.h"
#include "trainer/models/transformer_block.h"

namespace loom {

// Model FLOPs per token, forward + backward: 6·N + 6·T·Σ_blocks heads·(qk_dim + v_dim), N the weights of every
// matmul (qkv, proj, fc1, fc2 of every block, and the V×C output projection), biases, norms and position
// embeddings not. Causal masking is not discounted. Hardware FLOPs use the padded vocabulary.
SampleFlops gpt_flops_per_token(const ModelShape& shape, int64_t seq);

class GptModel final : public Model {
 public:
  // Parameters are created on the backend's device: master weights in `master_dtype` (f32, or f64 for
  // gradient checks), activations and the compute copy in `compute_dtype`. Weights are initialised from `seed`.
  // With a tensor-parallel context (not owned, may be null) this rank holds its share of every block, and the
  // token embedding / output projection is vocabulary-parallel (rows of wte split across the group; the padded
  // vocabulary must divide by the group size).
  // `shape.kind` must be "gpt".
  GptModel(const ModelShape& shape, Backend& backend, DType master_dtype, DType compute_dtype, int64_t seq,
           uint64_t seed, const TensorParallelContext* tp = nullptr);

  ParameterStore& params() override { return params_; }
  Backend& backend() override { return backend_; }
  void forward_backward_into(const Batch& batch, double loss_scale, Tensor& loss_total, double loss_weight) override;
  EvalStats evaluate(const Batch& batch) override;
  Tensor logits(const Tensor& tokens) override;
  SampleFlops flops_per_sample() const override;
  int64_t tokens_per_sample() const override { return seq_; }

  // Logits of the last position of each sequence in `tokens` (I32 [B, t], t <= max_seq), as host floats
  // [B, vocab] (padding dropped). Used for sampling.
  std::vector<float> last_logits(const Tensor& tokens) override;
  const ModelShape& shape() const override { return shape_; }
  void set_active_embedding_channels(int64_t channels) override;
  void set_residual_dtype(DType residual) override;
  void set_recompute_gelu(bool recompute) override;

 private:
  struct Activations {
    // [B, T, C] token + position embeddings in the compute dtype: resid[0] itself without SP and with a residual
    // stream of the compute dtype; with an f32 one, the blocks' shared `branch` buffer, converted into resid[0].
    Tensor embedded;
    std::vector<Tensor> resid;  // resid[i] = input of block i ([n, C] rows of this rank); resid[L] = the output
    Tensor branch;              // [n, C] compute dtype, shared by every block (f32 residual only)
    Tensor gelu;                // [B·T·max mlp_dim] shared GELU output (train.recompute: gelu only)
    std::vector<BlockActivations> blocks;
    Tensor lnf, lnf_mean, lnf_rstd;  // [n, C] rows
    Tensor lnf_full;                 // [N, C] (lnf itself without SP)
    Tensor logits;                   // [N, Vp / R]: this rank's vocabulary columns (all Vp without TP)
    Tensor losses;                   // [N] on every rank
    Tensor dsoft;                    // [N, Vp]: the distillation gradient (allocated by the first distilled batch)
  };
  Activations& activations_for(int64_t batch, int64_t seq);
  // Forward through the final norm and logits; returns the activations used.
  Activations& forward(const Tensor& tokens);

  ModelShape shape_;
  int64_t ln_channels_ = 0;  // LayerNorm statistics over this many channels (0: all d_model)
  Backend& backend_;
  const TensorParallelContext* tp_;
  DType compute_dtype_;
  DType residual_dtype_;
  bool recompute_gelu_ = false;
  int64_t seq_;
  std::vector<TransformerBlock> blocks_;
  ParameterStore params_;
  std::map<std::pair<int64_t, int64_t>, Activations> activations_;
  std::map<std::pair<int64_t, int64_t>, BlockScratch> scratch_;
  Tensor dresid_;
  Tensor table_, dtable_;  // the gathered vocabulary-parallel embedding table and its gradient (TP only)
};

}  // namespace loom
