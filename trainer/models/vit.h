// ViT / DeiT: patch embedding (a linear layer over flattened patches, equal to the strided convolution), a class
// token (and, for DeiT, a distillation token and head), learned position embeddings, the shared pre-LN
// transformer block (non-causal attention, exact erf GELU, LayerNorm eps 1e-6), a final norm and the head.
//
// Inputs are patch rows [B, Np, C·P·P], each row ordered (channel, dy, dx) like a flattened timm
// `patch_embed.proj.weight` [D, C, P, P]; the image loader patchifies on the host (core/image_loader.h).
// Parameter names are timm's, with 2-D shapes (`cls_token` [1, D] for timm's [1, 1, D], `pos_embed` [T, D],
// `patch_embed.proj.weight` [D, C·P·P]); trainer/models/interop/timm_vit.h converts.
//
// Without a teacher, the distillation head is trained on the true labels (loss = mean of both heads' losses)
// and, as in timm, evaluation averages the two heads' logits. With soft targets (model.h Batch::soft) both
// heads learn from them too. The heads are replicated under tensor parallelism, so distillation works there.
#pragma once
#include <map>
#include <vector>

#include "core/config.pb.h"
#include "trainer/models/model.h"
#include "trainer/models/transformer_block.h"

namespace loom {

// FLOPs of one image, forward + backward: per token (patches + class tokens) the blocks' matmuls as for GPT,
// 6·T·Σ heads·(qk_dim + v_dim) per token for attention, the patch embedding per patch, and the head(s) per
// head token.
SampleFlops vit_flops_per_image(const ModelShape& shape);

class VitModel final : public Model {
 public:
  // With a tensor-parallel context (not owned, may be null) this rank holds its share of every block; the
  // patch embedding, position table, final norm and the (small) classification heads stay replicated, every
  // tensor rank computing them in full.
  // `shape.kind` must be "vit".
  VitModel(const ModelShape& shape, Backend& backend, DType master_dtype, DType compute_dtype, uint64_t seed,
           double label_smoothing, const TensorParallelContext* tp = nullptr);

  ParameterStore& params() override { return params_; }
  Backend& backend() override { return backend_; }
  // batch.inputs: patch rows [B, Np, C·P·P]; batch.targets: labels I32 [B].
  void forward_backward_into(const Batch& batch, double loss_scale, Tensor& loss_total, double loss_weight) override;
  EvalStats evaluate(const Batch& batch) override;
  Tensor logits(const Tensor& patches) override;
  SampleFlops flops_per_sample() const override { return vit_flops_per_image(shape_); }
  int64_t tokens_per_sample() const override { return shape_.tokens(); }
  const ModelShape& shape() const override { return shape_; }
  void set_active_embedding_channels(int64_t channels) override;
  void set_residual_dtype(DType residual) override;
  void set_recompute_gelu(bool recompute) override;

 private:
  struct Activations {
    Tensor patch_rows;           // the input patch rows in the compute dtype (the batch's own tensor when it is)
    Tensor patch_rows_converted; // [B, Np, C·P·P] buffer for inputs of another dtype (f32 images, bf16 model)
    Tensor patch_emb;            // [B, Np, D]
    Tensor pos_plus;             // [T, D]: position embedding with the class/dist tokens added to its first rows
    std::vector<Tensor> resid;   // [n, D] token rows of this rank at every block boundary (n = B·T without SP)
    // [B, T, D]: the blocks' input and output over every token (SP only). With an f32 residual stream `embedded`
    // is the blocks' shared compute-dtype `branch` buffer ([n, D]), converted into resid[0].
    Tensor embedded, last_full;
    Tensor branch;
    Tensor gelu;  // [B·T·max mlp_dim] shared GELU output (train.recompute: gelu only)
    std::vector<BlockActivations> blocks;
    Tensor normed, norm_mean, norm_rstd;  // final norm over every token
    Tensor head_in;              // [B, prefix, D]: the class (and distillation) token rows
    Tensor logits, logits_dist, losses;
    Tensor dsoft;                // [B, classes]: the distillation gradient (allocated by the first distilled batch)
    Tensor dresid, dpos_plus;    // gradient buffers of the backward (dresid in the residual dtype)
    Tensor dhead;                // [B, 1, D]: a head's input gradient (a pruned block's scratch can be narrower)
    Tensor drows;                // [n, D]: the blocks' residual gradient (SP only; dresid's view without)
  };
  Activations& activations_for(int64_t batch);
  Activations& forward(const Tensor& patches);

  ModelShape shape_;
  int64_t ln_channels_ = 0;  // LayerNorm statistics over this many channels (0: all d_model)
  Backend& backend_;
  DType compute_dtype_;
  DType residual_dtype_;
  bool recompute_gelu_ = false;
  double label_smoothing_;
  const TensorParallelContext* tp_;
  std::vector<TransformerBlock> blocks_;
  ParameterStore params_;
  std::map<int64_t, Activations> activations_;
  std::map<int64_t, BlockScratch> scratch_;
};

}  // namespace loom
