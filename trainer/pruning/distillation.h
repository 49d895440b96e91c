// Distillation from the unpruned model while a pruning run prunes and fine-tunes (issue 14; NViT distils from
// the unpruned DeiT): the teacher is the model of model.init_from, the checkpoint the run prunes, built in the
// same process beside the student and run forward only. Its weights are held once, in the compute dtype (no
// f32 master copy), with no gradients and no optimizer state. For each micro-batch attach() runs the teacher
// on the batch's inputs and gives its logits to the student's forward_backward as soft targets
// (trainer/models/soft_targets.h: loss = w·τ²·KL + (1 − w)·hard loss, w = prune.distill_weight,
// τ = prune.distill_temperature). Under data parallelism every rank builds its own teacher replica and
// distils its own share of the batch, so the averaged gradients are those of one process with the global batch.
//
// Thread-safety: driven by the training thread only.
#pragma once
#include <memory>
#include <string>

#include "core/config.pb.h"
#include "trainer/models/model.h"

namespace loom {

class Distiller {
 public:
  // `teacher` (owned) must produce logits of the student's shape and dtype (same classes or vocabulary, same
  // compute dtype); temperature > 0, weight in (0, 1].
  Distiller(std::unique_ptr<Model> teacher, double temperature, double weight);

  // Runs the teacher's forward on batch.inputs and sets batch.soft. The logits stay valid until the next
  // attach(), so the student's forward_backward on this batch must come first.
  void attach(Batch& batch);

  Model& teacher() { return *teacher_; }
  double temperature() const { return temperature_; }
  double weight() const { return weight_; }

 private:
  std::unique_ptr<Model> teacher_;
  double temperature_, weight_;
};

// The teacher of a run of `cfg` (the run's config as given: model.init_from names the unpruned checkpoint,
// whose shape and weights the teacher takes, whatever train.resume holds), or null when the run does not
// distil: no prune: section, or prune.distill_weight 0 (its default is 0.5). The teacher lives on `backend`
// in `compute_dtype`. Throws loom::Error naming the field, before any training: distillation without
// model.init_from, a GPT teacher with parallel.tensor > 1 (vocabulary-parallel logits).
std::unique_ptr<Distiller> make_distiller(const config::RunConfig& cfg, Backend& backend, DType compute_dtype);

}  // namespace loom
