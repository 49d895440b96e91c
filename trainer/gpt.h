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
#include "trainer/model.h"
#include "trainer/transformer_block.h"

namespace loom {

struct GptShape {
  int64_t vocab = 0, padded_vocab = 0, max_seq = 0, d_model = 0;
  std::vector<BlockWidths> blocks;
  double ln_eps = 1e-5, init_std = 0.02;
};

// Resolves the shape from the config. Throws loom::Error naming the field on invalid values.
GptShape gpt_shape_from_config(const config::ModelConfig& model);
int64_t pad_vocab(int64_t vocab);

// Model FLOPs per token, forward + backward: 6·N + 6·T·Σ_blocks heads·(qk_dim + v_dim), N the weights of every
// matmul (qkv, proj, fc1, fc2 of every block, and the V×C output projection), biases, norms and position
// embeddings not. Causal masking is not discounted. Hardware FLOPs use the padded vocabulary.
SampleFlops gpt_flops_per_token(const GptShape& shape, int64_t seq);

class GptModel final : public Model {
 public:
  // Parameters are created on the backend's device: master weights in `master_dtype` (f32, or f64 for
  // gradient checks), activations and the compute copy in `compute_dtype`. Weights are initialised from `seed`.
  // With a tensor-parallel context (not owned, may be null) this rank holds its share of every block, and the
  // token embedding / output projection is vocabulary-parallel (rows of wte split across the group; the padded
  // vocabulary must divide by the group size).
  GptModel(const GptShape& shape, Backend& backend, DType master_dtype, DType compute_dtype, int64_t seq,
           uint64_t seed, const TensorParallelContext* tp = nullptr);

  ParameterStore& params() override { return params_; }
  Backend& backend() override { return backend_; }
  double forward_backward(const Batch& batch, double loss_scale) override;
  EvalStats evaluate(const Batch& batch) override;
  SampleFlops flops_per_sample() const override;
  int64_t tokens_per_sample() const override { return seq_; }

  // Logits of the last position of each sequence in `tokens` (I32 [B, t], t <= max_seq), as host floats
  // [B, vocab] (padding dropped). Used for sampling.
  std::vector<float> last_logits(const Tensor& tokens);
  const GptShape& shape() const { return shape_; }

 private:
  struct Activations {
    Tensor embedded;            // [B, T, C] token + position embeddings (resid[0] itself without SP)
    std::vector<Tensor> resid;  // resid[i] = input of block i ([n, C] rows of this rank); resid[L] = the output
    std::vector<BlockActivations> blocks;
    Tensor lnf, lnf_mean, lnf_rstd;  // [n, C] rows
    Tensor lnf_full;                 // [N, C] (lnf itself without SP)
    Tensor logits;                   // [N, Vp / R]: this rank's vocabulary columns (all Vp without TP)
    Tensor losses;                   // [N] on every rank
  };
  Activations& activations_for(int64_t batch, int64_t seq);
  // Forward through the final norm and logits; returns the activations used.
  Activations& forward(const Tensor& tokens);

  GptShape shape_;
  Backend& backend_;
  const TensorParallelContext* tp_;
  DType compute_dtype_;
  int64_t seq_;
  std::vector<TransformerBlock> blocks_;
  ParameterStore params_;
  std::map<std::pair<int64_t, int64_t>, Activations> activations_;
  std::map<std::pair<int64_t, int64_t>, BlockScratch> scratch_;
  Tensor dresid_;
  Tensor table_, dtable_;  // the gathered vocabulary-parallel embedding table and its gradient (TP only)
};

}  // namespace loom
