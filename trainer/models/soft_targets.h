// Knowledge-distillation targets of a micro-batch (Hinton et al. 2015), and the part of a model's loss they
// add. trainer/pruning/distillation.h attaches a teacher's logits to each batch; GptModel and VitModel mix:
//
//   loss = weight·τ²·KL(softmax(teacher/τ) ‖ softmax(student/τ)) + (1 − weight)·(the hard-label loss)
//
// per target row, averaged like the hard loss (kernels/backend.h distillation_loss states the math; τ² keeps
// the soft gradient's scale independent of τ). Thread-safety: pure functions of their arguments.
#pragma once
#include <cstdint>

#include "kernels/backend.h"

namespace loom {

struct SoftTargets {
  Tensor logits;            // the teacher's logits (Model::logits): the student's shape and dtype; undefined: none
  double temperature = 1;   // τ > 0
  double weight = 0;        // in [0, 1]
};

// The soft part for student logits [N, Vp] whose first `classes` columns are classes: writes
// dloss·weight·∂(τ²·KL_n)/∂logits into `dsoft` (allocated [N, Vp] in the logits' dtype when undefined or of
// another shape; padding columns 0) and each row's τ²·KL into `losses` [N] (the caller's loss buffer), and
// adds (loss_weight·weight·Σ_n τ²·KL_n) / count to loss_total[0] on the device (Backend::accumulate_sum). The
// caller then writes the hard loss's gradient with dloss·(1 − weight), accumulates `dsoft` into it and adds
// its (1 − weight)-weighted hard loss to loss_total. Throws loom::Error naming both tensors when soft.logits
// does not have the shape and dtype of `logits`, or when τ or the weight is out of range.
void distillation_term(Backend& be, const SoftTargets& soft, const Tensor& logits, int64_t classes, double dloss,
                       Tensor& losses, Tensor& dsoft, Tensor& loss_total, double loss_weight, double count);

}  // namespace loom
