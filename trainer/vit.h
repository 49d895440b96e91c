// ViT / DeiT: patch embedding (a linear layer over flattened patches, equal to the strided convolution), a class
// token (and, for DeiT, a distillation token and head), learned position embeddings, the shared pre-LN
// transformer block (non-causal attention, exact erf GELU, LayerNorm eps 1e-6), a final norm and the head.
//
// Inputs are patch rows [B, Np, C·P·P], each row ordered (channel, dy, dx) like a flattened timm
// `patch_embed.proj.weight` [D, C, P, P]; the image loader patchifies on the host (core/image_loader.h).
// Parameter names are timm's, with 2-D shapes (`cls_token` [1, D] for timm's [1, 1, D], `pos_embed` [T, D],
// `patch_embed.proj.weight` [D, C·P·P]); trainer/timm_vit.h converts.
//
// Without a teacher, the distillation head is trained on the true labels (loss = mean of both heads' losses)
// and, as in timm, evaluation averages the two heads' logits.
#pragma once
#include <map>
#include <vector>

#include "core/config.pb.h"
#include "trainer/model.h"
#include "trainer/transformer_block.h"

namespace loom {

struct VitShape {
  int64_t image_size = 0, patch_size = 0, in_channels = 0, num_classes = 0, d_model = 0;
  bool distilled = false;
  std::vector<BlockWidths> blocks;
  double ln_eps = 1e-6, init_std = 0.02;

  int64_t patches() const { return (image_size / patch_size) * (image_size / patch_size); }
  int64_t patch_dim() const { return in_channels * patch_size * patch_size; }
  int64_t prefix_tokens() const { return distilled ? 2 : 1; }
  int64_t tokens() const { return patches() + prefix_tokens(); }
};

// Resolves the shape from the config. Throws loom::Error naming the field on invalid values.
VitShape vit_shape_from_config(const config::ModelConfig& model);

// FLOPs of one image, forward + backward: per token (patches + class tokens) the blocks' matmuls as for GPT,
// 6·T·Σ heads·(qk_dim + v_dim) per token for attention, the patch embedding per patch, and the head(s) per
// head token.
SampleFlops vit_flops_per_image(const VitShape& shape);

class VitModel final : public Model {
 public:
  // With a tensor-parallel context (not owned, may be null) this rank holds its share of every block; the
  // patch embedding, position table, final norm and the (small) classification heads stay replicated, every
  // tensor rank computing them in full.
  VitModel(const VitShape& shape, Backend& backend, DType master_dtype, DType compute_dtype, uint64_t seed,
           double label_smoothing, const TensorParallelContext* tp = nullptr);

  ParameterStore& params() override { return params_; }
  Backend& backend() override { return backend_; }
  // batch.inputs: patch rows [B, Np, C·P·P]; batch.targets: labels I32 [B].
  double forward_backward(const Batch& batch, double loss_scale) override;
  EvalStats evaluate(const Batch& batch) override;
  SampleFlops flops_per_sample() const override { return vit_flops_per_image(shape_); }
  int64_t tokens_per_sample() const override { return shape_.tokens(); }
  const VitShape& shape() const { return shape_; }

 private:
  struct Activations {
    Tensor patch_emb;            // [B, Np, D]
    Tensor pos_plus;             // [T, D]: position embedding with the class/dist tokens added to its first rows
    std::vector<Tensor> resid;   // [n, D] token rows of this rank at every block boundary (n = B·T without SP)
    Tensor embedded, last_full;  // [B, T, D]: the blocks' input and output over every token (SP only)
    std::vector<BlockActivations> blocks;
    Tensor normed, norm_mean, norm_rstd;  // final norm over every token
    Tensor head_in;              // [B, prefix, D]: the class (and distillation) token rows
    Tensor logits, logits_dist, losses;
    Tensor dresid, dpos_plus;    // gradient buffers of the backward
    Tensor drows;                // [n, D]: the blocks' residual gradient (SP only; dresid's view without)
  };
  Activations& activations_for(int64_t batch);
  Activations& forward(const Tensor& patches);

  VitShape shape_;
  Backend& backend_;
  DType compute_dtype_;
  double label_smoothing_;
  const TensorParallelContext* tp_;
  std::vector<TransformerBlock> blocks_;
  ParameterStore params_;
  std::map<int64_t, Activations> activations_;
  std::map<int64_t, BlockScratch> scratch_;
};

}  // namespace loom
