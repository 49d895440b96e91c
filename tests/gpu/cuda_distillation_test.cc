// Distillation (trainer/models/soft_targets.h) through whole models on the CUDA backend against the float64
// CPU backend (same seeds, so the same weights): a teacher's logits() as soft targets of a narrower student's
// forward_backward, GPT (token logits over a padded vocabulary) and ViT / DeiT (class logits, one or two
// heads), in f32 and with bf16 activations over f32 master weights. Loss and gradients agree.
#include <cmath>
#include <memory>

#include "tests/gpu/cuda_backend_test_util.h"
#include "trainer/models/gpt.h"
#include "trainer/models/vit.h"

namespace loom::testing_cuda {
namespace {

constexpr double kTemperature = 3, kWeight = 0.6;

ModelShape gpt_shape(std::vector<BlockWidths> blocks) {
  ModelShape s;
  s.kind = "gpt";
  s.vocab = 77;
  s.padded_vocab = pad_vocab(s.vocab);
  s.max_seq = 16;
  s.d_model = 32;
  s.blocks = std::move(blocks);
  s.init_std = 0.1;
  return s;
}

ModelShape vit_shape(std::vector<BlockWidths> blocks, bool distilled) {
  ModelShape s;
  s.kind = "vit";
  s.image_size = 12;
  s.patch_size = 4;
  s.in_channels = 3;
  s.num_classes = 7;
  s.d_model = 32;
  s.distilled = distilled;
  s.blocks = std::move(blocks);
  s.init_std = 0.1;
  return s;
}

std::unique_ptr<Model> make(const ModelShape& s, Backend& be, DType master, DType compute, uint64_t seed) {
  if (s.is_gpt()) return std::make_unique<GptModel>(s, be, master, compute, 13, seed);
  return std::make_unique<VitModel>(s, be, master, compute, seed, 0.1);
}

class CudaDistillationTest : public CudaBackendTest,
                             public ::testing::WithParamInterface<std::tuple<DType, std::string>> {};

TEST_P(CudaDistillationTest, SoftTargetLossAndGradientsMatchCpuFloat64) {
  const auto [compute, kind] = GetParam();
  // The teacher is the unpruned model, the student a pruned one (head dims multiples of 8: flash attention).
  const std::vector<BlockWidths> full = {BlockWidths{4, 8, 8, 64}, BlockWidths{4, 8, 8, 64}};
  const std::vector<BlockWidths> pruned = {BlockWidths{3, 8, 8, 48}, BlockWidths{2, 8, 16, 32}};
  const bool gpt = kind == "gpt";
  const ModelShape teacher_shape = gpt ? gpt_shape(full) : vit_shape(full, kind == "deit");
  const ModelShape student_shape = gpt ? gpt_shape(pruned) : vit_shape(pruned, kind == "deit");
  const int64_t B = 3;
  Batch host;
  if (gpt) {
    host.inputs = Tensor::from_ints(ints(B * 13, 0, 76), {B, 13});
    host.targets = Tensor::from_ints(ints(B * 13, 0, 76), {B, 13});
  } else {
    host.inputs = random_host({B, student_shape.patches(), student_shape.patch_dim()}, compute);
    host.targets = Tensor::from_ints(ints(B, 0, 6), {B});
  }
  Batch dev{on_gpu(host.inputs), on_gpu(host.targets)};
  if (!gpt) host.inputs = as_f64(host.inputs);

  auto ref_teacher = make(teacher_shape, *cpu_, DType::F64, DType::F64, 21);
  auto ref = make(student_shape, *cpu_, DType::F64, DType::F64, 22);
  auto teacher = make(teacher_shape, *gpu_, compute, compute, 21);  // a teacher holds one compute-dtype copy
  teacher->params().release_gradients();
  auto student = make(student_shape, *gpu_, DType::F32, compute, 22);
  host.soft = {ref_teacher->logits(host.inputs), kTemperature, kWeight};
  dev.soft = {teacher->logits(dev.inputs), kTemperature, kWeight};
  cpu_->zero(ref->params().grads());
  gpu_->zero(student->params().grads());
  const double ref_loss = ref->forward_backward(host, 1.0);
  const double loss = student->forward_backward(dev, 1.0);
  gpu_->synchronize();

  const double tol = compute == DType::F32 ? 1e-5 : 3e-2;
  EXPECT_NEAR(loss, ref_loss, tol * ref_loss);
  EXPECT_LT(relative_l2(student->params().grads(), ref->params().grads()), tol);
  // The soft part is really there: the hard loss alone differs.
  const double hard = student->forward_backward(Batch(dev.inputs, dev.targets), 0.0);
  EXPECT_GT(std::abs(hard - loss), 10 * tol * ref_loss);
}

INSTANTIATE_TEST_SUITE_P(DtypesAndModels, CudaDistillationTest,
                         ::testing::Combine(::testing::Values(DType::F32, DType::BF16),
                                            ::testing::Values("gpt", "vit", "deit")),
                         [](const auto& info) {
                           return dtype_param_name(::testing::TestParamInfo<DType>(std::get<0>(info.param), 0)) +
                                  "_" + std::get<1>(info.param);
                         });

}  // namespace
}  // namespace loom::testing_cuda
