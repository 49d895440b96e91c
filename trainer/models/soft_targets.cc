#include "trainer/models/soft_targets.h"

#include <cmath>

#include "core/error.h"
#include "trainer/models/model.h"

namespace loom {

void distillation_term(Backend& be, const SoftTargets& soft, const Tensor& logits, int64_t classes, double dloss,
                       Tensor& losses, Tensor& dsoft, Tensor& loss_total, double loss_weight, double count) {
  LOOM_CHECK(soft.logits.shape() == logits.shape() && soft.logits.dtype() == logits.dtype(),
             "distillation: the teacher's logits ", soft.logits.str(), " must have the shape and dtype of the "
             "student's ", logits.str(), " (the same classes / vocabulary and compute dtype)");
  LOOM_CHECK(soft.temperature > 0 && std::isfinite(soft.temperature), "distillation: temperature ",
             soft.temperature, " must be positive and finite");
  LOOM_CHECK(soft.weight >= 0 && soft.weight <= 1, "distillation: weight ", soft.weight, " must be in [0, 1]");
  if (!dsoft.defined() || dsoft.shape() != logits.shape() || dsoft.dtype() != logits.dtype())
    dsoft = Tensor::empty(logits.shape(), logits.dtype(), logits.device());
  be.distillation_loss(losses, dsoft, logits, soft.logits, classes, soft.temperature, dloss * soft.weight);
  be.accumulate_sum(loss_total, losses, loss_weight * soft.weight, count);
}

}  // namespace loom
