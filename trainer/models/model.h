// What the training loop needs from a model (GPT or ViT): its parameters, a fused forward+backward on a
// micro-batch, a forward-only evaluation, its FLOP counts for MFU, and its shape (what checkpoints record and
// the run, export and pruning read; callers never need the concrete class).
//
// Thread-safety: a model is driven by one thread.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "kernels/backend.h"
#include "trainer/models/model_shape.h"
#include "trainer/models/soft_targets.h"
#include "trainer/parameters.h"

namespace loom {

// One micro-batch on the model's device. GPT: inputs and targets I32 [B, T]. ViT: inputs f32 patch rows
// [B, patches, channels·P·P] (core/image_loader.h patchifies on the host), targets I32 [B] labels.
struct Batch {
  Batch() = default;
  Batch(Tensor inputs_, Tensor targets_) : inputs(std::move(inputs_)), targets(std::move(targets_)) {}
  Tensor inputs, targets;
  SoftTargets soft;  // distillation (forward_backward only); the hard-label loss alone without it
};

struct EvalStats {
  double loss_sum = 0;   // summed over counted targets
  int64_t count = 0;     // targets counted (ignored targets excluded)
  int64_t correct = 0;   // argmax == target (classifiers only)
  bool classifies = false;  // true when `correct` is meaningful (ViT), false for language models
};

// FLOPs of one training sample (one sequence or one image), forward + backward.
struct SampleFlops {
  double model = 0;     // the model's useful work, from its actual widths (docs/ARCHITECTURE.md, "FLOPs")
  double hardware = 0;  // what the kernels execute: padding, recomputation included
};

// The dtype of a model's losses and LayerNorm statistics for activations of `compute`: f64 in float64 gradient
// checks, else f32.
DType reduction_dtype(DType compute);
// Σ of every element of `t` in double, from its own precision (copied to the host first when it lives on a GPU).
double sum_on_host(const Tensor& t);

class Model {
 public:
  virtual ~Model() = default;
  virtual ParameterStore& params() = 0;
  virtual Backend& backend() = 0;
  // Forward and backward on `batch`, reading nothing on the host (the training step's path): adds
  // loss_weight · (the mean loss over the batch's targets) to loss_total[0] (F64, one element on the backend's
  // device) in the backend's stream order; parameter gradients ACCUMULATE dLoss/dθ · loss_scale (loss_scale =
  // 1/accumulation steps for a mean over micro-batches, and the trainer's loss_weight). With batch.soft.logits
  // defined the loss (reported and differentiated) is the distillation mix of trainer/models/soft_targets.h;
  // throws loom::Error when they do not have the shape and dtype of the model's logits, and for GPT under
  // tensor parallelism (no rank holds the vocabulary-parallel logits).
  virtual void forward_backward_into(const Batch& batch, double loss_scale, Tensor& loss_total,
                                     double loss_weight) = 0;
  // The same, returning the mean loss: reads it on the host, so it waits for the forward and backward (tests,
  // benchmarks, tools; the trainer's step uses forward_backward_into).
  double forward_backward(const Batch& batch, double loss_scale);
  // Forward only, hard labels (batch.soft is ignored).
  virtual EvalStats evaluate(const Batch& batch) = 0;
  // Forward only: the logits for `inputs`, on the device in the compute dtype, as forward_backward's soft
  // targets want them: ViT [B, num_classes] (with a distillation head, the mean of both heads, as evaluate
  // scores), GPT [B·T, padded vocabulary] (the padding columns are not classes). A view of the model's own
  // buffer: valid until the model's next forward. GPT throws loom::Error under tensor parallelism (ViT's
  // heads are replicated, so every rank has them).
  virtual Tensor logits(const Tensor& inputs) = 0;
  virtual SampleFlops flops_per_sample() const = 0;
  // Tokens per sample as throughput is reported (sequence length, or patches + class tokens).
  virtual int64_t tokens_per_sample() const = 0;
  // The full (single-process) shape the model was built from, whatever share a tensor-parallel rank holds.
  virtual const ModelShape& shape() const = 0;
  // Language models: logits of the last position of each sequence in `tokens` (I32 [B, t]) as host floats
  // [B, vocab]. Other models throw loom::Error naming their kind.
  virtual std::vector<float> last_logits(const Tensor& tokens) {
    fail("a ", shape().kind, " model does not predict tokens");
  }
  // Every LayerNorm takes its statistics over `channels` of the d_model embedding channels (d_model: all, the
  // default). The other channels must be held at exact zeros in the residual stream, and their LayerNorm
  // weights and biases zero, by a mask of the embedding axis (trainer/models/structure_map.h apply_mask); then
  // the model computes exactly what the model without those channels computes. Throws unless
  // 1 <= channels <= d_model.
  virtual void set_active_embedding_channels(int64_t channels) = 0;
  // The residual stream's dtype (train.residual_dtype; trainer/models/transformer_block.h): the compute dtype
  // (the default) or f32 beside bf16/f16 activations. Drops the activation buffers, which the next forward
  // allocates in the new dtype. Throws loom::Error (check_residual_dtype) for any other dtype and under sequence
  // parallelism.
  virtual void set_residual_dtype(DType residual) = 0;
  // train.recompute: gelu — the blocks share one GELU-output buffer and each backward recomputes its own from the
  // saved pre-activation (one elementwise pass a block), instead of keeping B·T·mlp_dim values per block. The
  // gradients are those of the stored path up to the GELU's rounding where a backend fuses it into the GEMM.
  // Drops the activation buffers, which the next forward allocates accordingly.
  virtual void set_recompute_gelu(bool recompute) = 0;

  // Called during forward_backward() each time the gradients of a group of parameters are final for this
  // micro-batch: with the group's name prefix (e.g. "blocks.3.") after each block, and with "" (every parameter
  // not yet announced) at the end. The data-parallel gradient reducer launches its buckets from it.
  using GradReadyHook = std::function<void(const std::string& prefix)>;
  void set_grad_ready_hook(GradReadyHook hook) { grad_ready_ = std::move(hook); }
  // Called once per forward_backward() where the forward (loss included) ends and the backward begins; the
  // trainer records a timing marker there.
  void set_backward_start_hook(std::function<void()> hook) { backward_start_ = std::move(hook); }

 protected:
  void grads_ready(const std::string& prefix) {
    if (grad_ready_) grad_ready_(prefix);
  }
  void backward_starts() {
    if (backward_start_) backward_start_();
  }

 private:
  GradReadyHook grad_ready_;
  std::function<void()> backward_start_;
};

}  // namespace loom
