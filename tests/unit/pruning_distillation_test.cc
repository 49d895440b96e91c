// Distillation from the unpruned model (issue 14), in float64 on the CPU:
// - a student's loss with a teacher's soft targets equals an independent host computation of
//   (1 − w)·CE + w·τ²·KL from the two models' logits, and its gradient matches central finite differences
//   of that loss (GPT token logits, ViT class logits, and a DeiT student with two heads);
// - the trainer hands each micro-batch's teacher logits to the student (a step's loss is the reference mix);
// - make_distiller builds the teacher from model.init_from, forward only in the compute dtype, and refuses
//   what it cannot do, naming the field;
// - a pruning run (run_training) distils from model.init_from while it prunes and while it fine-tunes: with
//   weight 1 its first step's loss is exactly 0 (the student is still the teacher), with weight 0.5 exactly
//   half the hard loss of a run without distillation.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <sstream>

#include "core/config.h"
#include "core/safetensors.h"
#include "core/token_shards.h"
#include "tests/common/model_testing.h"
#include "tests/common/test_util.h"
#include "trainer/models/gpt.h"
#include "trainer/models/vit.h"
#include "trainer/pruning/distillation.h"
#include "trainer/pruning/latency_table.h"
#include "trainer/run.h"
#include "trainer/trainer.h"

namespace loom {
namespace {

constexpr double kTemperature = 2.5, kWeight = 0.3, kSmoothing = 0.1;

ModelShape gpt_shape(std::vector<BlockWidths> blocks) { return testing::tiny_gpt_shape(std::move(blocks), 0.4); }

ModelShape vit_shape(std::vector<BlockWidths> blocks, bool distilled) {
  return testing::tiny_vit_shape(std::move(blocks), distilled, 0.4);
}

std::unique_ptr<Model> make_model(const ModelShape& s, Backend& be, uint64_t seed) {
  if (s.is_gpt()) return std::make_unique<GptModel>(s, be, DType::F64, DType::F64, 5, seed);
  return std::make_unique<VitModel>(s, be, DType::F64, DType::F64, seed, kSmoothing);
}

Batch random_batch(const ModelShape& s, uint64_t seed) {
  PhiloxStream rng(seed, 0);
  if (s.is_gpt()) {
    std::vector<int32_t> ids(10), targets(10);
    for (auto& t : ids) t = static_cast<int32_t>(rng.below(s.vocab));
    for (auto& t : targets) t = static_cast<int32_t>(rng.below(s.vocab));
    return {Tensor::from_ints(ids, {2, 5}), Tensor::from_ints(targets, {2, 5})};
  }
  std::vector<float> patches(static_cast<size_t>(3 * s.patches() * s.patch_dim()));
  for (auto& v : patches) v = rng.normal();
  std::vector<int32_t> labels(3);
  for (auto& l : labels) l = static_cast<int32_t>(rng.below(static_cast<uint64_t>(s.num_classes)));
  return {Tensor::from_vector(patches, {3, s.patches(), s.patch_dim()}).cast(DType::F64), Tensor::from_ints(labels, {3})};
}

// log Σ_c exp(x_c / τ) over the first K entries of a row, in double.
double log_sum_exp(const double* x, int64_t K, double tau) {
  double m = -INFINITY, sum = 0;
  for (int64_t c = 0; c < K; ++c) m = std::max(m, x[c] / tau);
  for (int64_t c = 0; c < K; ++c) sum += std::exp(x[c] / tau - m);
  return m + std::log(sum);
}

// The mean over rows of (1 − w)·CE(label, smoothing ε) + w·τ²·KL(softmax(t/τ) ‖ softmax(s/τ)), from host copies
// of student and teacher logits [N, Vp] whose first K columns are classes: written from the definitions, not
// from the backend's kernels.
double reference_loss(const Tensor& student, const Tensor& teacher, const Tensor& labels, int64_t K, double eps,
                      double tau, double w) {
  const Tensor s = student.to(Device::cpu()).cast(DType::F64), t = teacher.to(Device::cpu()).cast(DType::F64);
  const int64_t Vp = s.dim(-1), N = s.numel() / Vp;
  double total = 0;
  for (int64_t n = 0; n < N; ++n) {
    const double *sr = s.data<double>() + n * Vp, *tr = t.data<double>() + n * Vp;
    const double lse_s1 = log_sum_exp(sr, K, 1), lse_st = log_sum_exp(sr, K, tau), lse_tt = log_sum_exp(tr, K, tau);
    const int32_t label = labels.data<int32_t>()[n];
    double ce = 0, kl = 0;
    for (int64_t c = 0; c < K; ++c) {
      const double target = (c == label ? 1 - eps : 0) + eps / static_cast<double>(K);
      ce -= target * (sr[c] - lse_s1);
      const double log_p = tr[c] / tau - lse_tt, log_q = sr[c] / tau - lse_st;
      kl += std::exp(log_p) * (log_p - log_q);
    }
    total += (1 - w) * ce + w * tau * tau * kl;
  }
  return total / static_cast<double>(N);
}

struct Case {
  std::string name;
  ModelShape student, teacher;
};

std::vector<Case> cases() {
  const std::vector<BlockWidths> pruned = {BlockWidths{3, 4, 2, 10}, BlockWidths{2, 3, 5, 7}};
  const std::vector<BlockWidths> full = {BlockWidths{4, 6, 6, 16}, BlockWidths{4, 6, 6, 16}};
  return {{"gpt", gpt_shape(pruned), gpt_shape(full)},
          {"vit", vit_shape(pruned, false), vit_shape(full, false)},
          {"deit_two_heads", vit_shape(pruned, true), vit_shape(full, true)}};
}

class Distillation : public ::testing::TestWithParam<int> {};

TEST_P(Distillation, LossIsTheReferenceMixAndItsGradientMatchesFiniteDifferencesInFloat64) {
  const Case c = cases()[static_cast<size_t>(GetParam())];
  SCOPED_TRACE(c.name);
  auto be = make_backend(Device::cpu());
  auto student = make_model(c.student, *be, 3);
  auto teacher = make_model(c.teacher, *be, 4);
  Batch batch = random_batch(c.student, 9);
  // The teacher's logits, copied so that nothing the student does can touch them.
  const Tensor teacher_logits = teacher->logits(batch.inputs).to(Device::cpu());
  batch.soft = {teacher_logits, kTemperature, kWeight};
  const bool gpt = c.student.is_gpt();
  const int64_t classes = gpt ? c.student.vocab : c.student.num_classes;

  be->zero(student->params().grads());
  const double loss = student->forward_backward(batch, 1.0);
  if (!c.student.distilled) {  // one head: its logits are the model's logits()
    const Tensor s = student->logits(batch.inputs).to(Device::cpu());
    const double ref = reference_loss(s, teacher_logits, batch.targets.view({s.dim(0)}), classes,
                                      gpt ? 0.0 : kSmoothing, kTemperature, kWeight);
    EXPECT_NEAR(loss, ref, 1e-12 * std::abs(ref));
  }
  // The hard loss alone is what a batch without soft targets gives; the mix differs from it.
  Batch hard(batch.inputs, batch.targets);
  const double hard_loss = student->forward_backward(hard, 0.0);
  EXPECT_GT(std::abs(loss - hard_loss), 1e-3 * std::abs(hard_loss));

  testing::expect_gradient_matches_finite_differences(student->params(), [&] {
    Tensor keep = student->params().grads().to(Device::cpu());
    const double l = student->forward_backward(batch, 0.0);
    student->params().grads().copy_from(keep);
    return l;
  });
}

INSTANTIATE_TEST_SUITE_P(GptVitDeit, Distillation, ::testing::Values(0, 1, 2),
                         [](const ::testing::TestParamInfo<int>& i) { return cases()[i.param].name; });

TEST(Distillation, SoftTargetsOfAnotherShapeAreAnErrorNamingBoth) {
  auto be = make_backend(Device::cpu());
  const Case c = cases()[1];
  auto student = make_model(c.student, *be, 3);
  ModelShape other = c.teacher;
  other.num_classes = 7;
  auto teacher = make_model(other, *be, 4);
  Batch batch = random_batch(c.student, 9);
  batch.soft = {teacher->logits(batch.inputs), kTemperature, kWeight};
  const std::string message = testing::error_message([&] { student->forward_backward(batch, 1.0); });
  EXPECT_NE(message.find("teacher's logits"), std::string::npos) << message;
  EXPECT_NE(message.find("[3, 7]"), std::string::npos) << message;
}

// The trainer attaches the teacher's logits to every micro-batch before the student's forward_backward: with
// two accumulation steps on one fixed batch, the first step's loss is the reference mix of the two models'
// logits (the step's mean over its micro-batches, both the same batch).
TEST(Distillation, TheTrainerDistilsEveryMicroBatch) {
  testing::TempDir dir;
  const config::RunConfig cfg = parse_run_config(
      "model: {kind: vit, n_layer: 2, d_model: 8, n_head: 2, image_size: 6, patch_size: 3, in_channels: 2, "
      "num_classes: 5}\n"
      "data: {train: unused, batch_size: 3}\n"
      "optim: {lr: 0.01, warmup_steps: 0, label_smoothing: 0.1}\n"
      "train: {max_steps: 1, grad_accum_steps: 2, log_every: 0, progress: false, checkpoint_every: -1, out_dir: \"" +
          dir.path() + "\"}\n",
      "distill_trainer");
  auto be = make_backend(Device::cpu());
  const Case c = cases()[1];
  auto student = make_model(c.student, *be, 3);
  auto teacher_model = make_model(c.teacher, *be, 4);
  Model& teacher = *teacher_model;
  const Batch batch = random_batch(c.student, 9);
  const Tensor student_logits = student->logits(batch.inputs).to(Device::cpu());
  const Tensor teacher_logits = teacher.logits(batch.inputs).to(Device::cpu());
  const double ref = reference_loss(student_logits, teacher_logits, batch.targets, 5, kSmoothing, kTemperature, kWeight);
  Distiller distiller(std::move(teacher_model), kTemperature, kWeight);
  testing::FixedBatch data(batch);
  std::ostringstream log;
  Trainer trainer(cfg, *student, data, log);
  trainer.set_distiller(&distiller);
  const TrainResult r = trainer.run();
  ASSERT_EQ(r.steps_done, 1);
  EXPECT_NEAR(r.last_train_loss, ref, 1e-12 * ref);
}

TEST(Distillation, TheTeacherIsInitFromsModelForwardOnlyInTheComputeDtype) {
  testing::TempDir dir;
  auto be = make_backend(Device::cpu());
  const std::string init = dir / "teacher.safetensors";
  auto config = [&](const std::string& extra) {
    return parse_run_config("model: {kind: gpt, n_layer: 2, d_model: 8, n_head: 4, vocab_size: 11, max_seq_len: 6, "
                            "mlp_dim: 16, head_dim: 6, init_from: \"" + init + "\"}\n"
                            "data: {train: unused, batch_size: 2, seq_len: 5}\n"
                            "train: {max_steps: 1, device: cpu}\n" + extra,
                            "distill.yaml");
  };
  const ModelShape full = model_shape_from_config(config("").model());
  GptModel original(full, *be, DType::F32, DType::F32, 5, 11);
  safetensors::write(init, original.params().named_master_weights());
  EXPECT_EQ(make_distiller(config(""), *be, DType::F32), nullptr) << "no prune: section, no teacher";
  EXPECT_EQ(make_distiller(config("prune: {target_ratio: 0.5, distill_weight: 0}"), *be, DType::F32), nullptr);
  // The default weight (0.5) distils; a resumed (pruned) checkpoint does not change the teacher's shape.
  config::RunConfig cfg = config("prune: {target_ratio: 0.5, distill_temperature: 4}");
  cfg.mutable_train()->set_resume(dir / "no_such_checkpoint");
  const auto distiller = make_distiller(cfg, *be, DType::F32);
  ASSERT_NE(distiller, nullptr);
  EXPECT_EQ(distiller->weight(), 0.5);
  EXPECT_EQ(distiller->temperature(), 4);
  Model& teacher = distiller->teacher();
  EXPECT_EQ(teacher.shape(), full);
  EXPECT_FALSE(teacher.params().grads().defined()) << "the teacher keeps no gradients";
  EXPECT_TRUE(teacher.params().compute_is_master()) << "one copy of the teacher's weights";
  EXPECT_EQ(teacher.params().master().dtype(), DType::F32);
  const Batch batch = random_batch(full, 5);
  const std::vector<float> want = original.logits(batch.inputs).to_vector();
  EXPECT_EQ(teacher.logits(batch.inputs).to_vector(), want) << "the teacher holds init_from's weights";

  const std::string no_init = testing::error_message([&] {
    config::RunConfig c = config("prune: {target_ratio: 0.5}");
    c.mutable_model()->clear_init_from();
    make_distiller(c, *be, DType::F32);
  });
  EXPECT_NE(no_init.find("prune.distill_weight"), std::string::npos) << no_init;
  EXPECT_NE(no_init.find("model.init_from"), std::string::npos) << no_init;
  const std::string tensor_parallel = testing::error_message([&] {
    config::RunConfig c = config("prune: {target_ratio: 0.5}");
    c.mutable_parallel()->set_tensor(2);
    make_distiller(c, *be, DType::F32);
  });
  EXPECT_NE(tensor_parallel.find("parallel.tensor"), std::string::npos) << tensor_parallel;
}

// A tiny GPT pruning run on random tokens: the unpruned checkpoint, a latency table of this CPU's key
// (model_testing.h), and `loom train`'s path with the given prune: extras.
class DistillingRun {
 public:
  DistillingRun() {
    PhiloxStream rng(3, 0);
    std::vector<int32_t> tokens(4096);
    for (auto& t : tokens) t = static_cast<int32_t>(rng.below(64));
    write_shard(dir_ / "train_000.bin", tokens);
    std::ostringstream log;
    const TrainResult base = run_training(config(dir_ / "base", 20, ""), log);
    init_ = base.last_checkpoint + "/model.safetensors";
    const config::RunConfig cfg = config(dir_ / "unused", 6, prune(0));
    auto cpu = make_backend(Device::cpu());
    testing::multilinear_latency_table(latency_key_for(cfg, *cpu), {{4, 16}, {1, 2}, {4, 8}, {4, 8}, {8, 32}})
        .save(dir_ / "table.json");
  }

  config::RunConfig config(const std::string& out, int steps, const std::string& prune_section) const {
    std::ostringstream y;
    // A pruning run takes the widths from its checkpoint (the pruned one's differ from any in the config).
    y << "model: {kind: gpt, "
      << (init_.empty() ? "n_layer: 2, d_model: 16, n_head: 2, mlp_dim: 32, vocab_size: 64, max_seq_len: 8"
                        : "init_from: \"" + init_ + "\"") << "}\n"
      << "data: {train: \"" << dir_ / "train_*.bin" << "\", batch_size: 4, seq_len: 8}\n"
      << "optim: {lr: 0.003, warmup_steps: 0}\n"
      << "train: {max_steps: " << steps << ", device: cpu, progress: false, log_every: 1, val_every: 0, "
      << "checkpoint_every: 0, out_dir: \"" << out << "\"}\n" << prune_section;
    return parse_run_config(y.str(), "distilling_run.yaml");
  }
  std::string prune(double weight) const {
    std::ostringstream y;
    y << "prune: {latency_table: \"" << dir_ / "table.json" << "\", schedule: one_shot, begin_step: 2, "
      << "saliency_batches: 2, target_ratio: 0.6, embedding_group: 4, heads_group: 1, qk_group: 4, v_group: 4, "
      << "mlp_group: 8, eta: 0, distill_temperature: 2, distill_weight: " << weight << "}\n";
    return y.str();
  }
  // Trains a pruning run distilling with `weight` into out_dir `name`; returns the step losses.
  std::vector<double> run(double weight, const std::string& name, std::string* log_out = nullptr,
                          TrainResult* result = nullptr) const {
    std::ostringstream log;
    const TrainResult r = run_training(config(dir_ / name, 6, prune(weight)), log);
    if (log_out) *log_out = log.str();
    if (result) *result = r;
    std::vector<double> losses;
    std::ifstream in(dir_ / name + "/metrics.jsonl");
    for (std::string line; std::getline(in, line);) {
      const nlohmann::json record = nlohmann::json::parse(line);
      if (record.contains("loss")) losses.push_back(record["loss"]);  // not the "fine-tuning" event line
    }
    return losses;
  }

 private:
  testing::TempDir dir_{"distilling-run"};
  std::string init_;
};

TEST(Distillation, APruningRunDistilsFromInitFromWhilePruningAndFineTuning) {
  DistillingRun runs;
  std::string log;
  TrainResult r;
  const std::vector<double> pure = runs.run(1.0, "pure", &log, &r);
  ASSERT_FALSE(r.pruned_checkpoint.empty()) << log;
  EXPECT_EQ(r.steps_done, 6);
  ASSERT_EQ(pure.size(), 6u) << log;
  EXPECT_EQ(pure[0], 0.0) << "step 1: the student is still the teacher, so KL is exactly 0";
  for (size_t i = 1; i < pure.size(); ++i) EXPECT_TRUE(std::isfinite(pure[i]) && pure[i] > 0) << "step " << i + 1;
  // The teacher is built for the pruning phase and again for the fine-tuning of the dense pruned model.
  const size_t first = log.find("distillation: teacher"), tuning = log.find("fine-tuning the pruned model");
  ASSERT_NE(first, std::string::npos) << log;
  ASSERT_NE(tuning, std::string::npos) << log;
  EXPECT_LT(first, tuning);
  EXPECT_NE(log.find("distillation: teacher", tuning), std::string::npos) << log;

  const std::vector<double> hard = runs.run(0.0, "hard", &log);
  EXPECT_EQ(log.find("distillation"), std::string::npos) << "weight 0 builds no teacher: " << log;
  const std::vector<double> half = runs.run(0.5, "half");
  ASSERT_FALSE(hard.empty());
  ASSERT_FALSE(half.empty());
  EXPECT_DOUBLE_EQ(half[0], 0.5 * hard[0]);
}

}  // namespace
}  // namespace loom
