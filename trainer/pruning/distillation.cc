#include "trainer/pruning/distillation.h"

#include "core/error.h"
#include "trainer/run.h"

namespace loom {

Distiller::Distiller(std::unique_ptr<Model> teacher, double temperature, double weight)
    : teacher_(std::move(teacher)), temperature_(temperature), weight_(weight) {
  LOOM_CHECK(teacher_ != nullptr, "distillation: no teacher model");
  LOOM_CHECK(temperature > 0, "prune.distill_temperature must be positive, got ", temperature);
  LOOM_CHECK(weight > 0 && weight <= 1, "prune.distill_weight must be in (0, 1] to distil, got ", weight);
}

void Distiller::attach(Batch& batch) {
  batch.soft.logits = teacher_->logits(batch.inputs);
  batch.soft.temperature = temperature_;
  batch.soft.weight = weight_;
}

std::unique_ptr<Distiller> make_distiller(const config::RunConfig& cfg, Backend& backend, DType compute_dtype) {
  if (!cfg.has_prune() || cfg.prune().distill_weight() == 0) return nullptr;
  const config::PruneConfig& p = cfg.prune();
  LOOM_CHECK(cfg.model().has_init_from() && !cfg.model().init_from().empty(),
             "prune.distill_weight: distillation learns from the unpruned model, which model.init_from names; set "
             "model.init_from to its model.safetensors (or prune.distill_weight: 0 to train on the labels alone)");
  LOOM_CHECK(cfg.model().kind() != "gpt" || cfg.parallel().tensor() == 1,
             "prune.distill_weight: distilling a GPT needs every vocabulary column on one rank, but "
             "parallel.tensor is ", cfg.parallel().tensor(), " (set prune.distill_weight: 0 or parallel.tensor: 1)");
  // The unpruned shape: model.init_from's, never the resumed (pruned) checkpoint's.
  config::RunConfig unpruned = cfg;
  unpruned.mutable_train()->clear_resume();
  auto teacher = build_model_of_shape(resolve_model_shape(unpruned), unpruned, backend, compute_dtype, compute_dtype);
  teacher->params().release_gradients();
  load_initial_weights(cfg.model().init_from(), *teacher, nullptr);
  return std::make_unique<Distiller>(std::move(teacher), p.distill_temperature(), p.distill_weight());
}

}  // namespace loom
