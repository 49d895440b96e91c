// Vocabulary-parallel cross-entropy over a real tensor-parallel group (the MPI world, 2 or 4 ranks): the
// named operation against Backend::cross_entropy on the full logits, and GPT's evaluate() and last_logits()
// (the paths the training-equivalence suite does not run) under tensor parallelism against one process.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "core/config.h"
#include "core/rng.h"
#include "kernels/backend.h"
#include "parallel/tensor_parallel.h"
#include "tests/mpi/mpi_test_util.h"
#include "trainer/models/gpt.h"

namespace loom::testing {
namespace {

// Columns [begin, begin + width) of a CPU [N, Vp] tensor, as a new [N, width] tensor.
Tensor columns(const Tensor& full, int64_t begin, int64_t width) {
  const int64_t N = full.dim(0), Vp = full.dim(1);
  Tensor out = Tensor::empty({N, width}, full.dtype());
  for (int64_t n = 0; n < N; ++n) out.slice_flat(n * width, {width}).copy_from(full.slice_flat(n * Vp + begin, {width}));
  return out;
}

// Every rank holds its 7 columns of the same logits; the vocabulary stops 9 columns short of the padded width,
// so the last rank holds only padding (and with 4 ranks the third holds some).
void check_against_cross_entropy(DType dtype, double tol) {
  MpiCommunicator& world = test_world();
  const TensorParallelContext tp{&world, false};
  auto cpu = make_backend(Device::cpu());
  const int R = world.size();
  const int64_t N = 6, Vr = 7, Vp = R * Vr, vocab = Vp - 9;
  const uint64_t seed = shared_seed(world);
  std::vector<double> z = rank_values(seed, 0, N * Vp);
  for (double& v : z) v *= 4;
  const Tensor logits = tensor_of(z, dtype).view({N, Vp});
  std::vector<int32_t> t;
  for (double u : rank_values(seed, 1, N)) t.push_back(static_cast<int32_t>((u + 1) / 2 * vocab) % vocab);
  t[1] = -1;                                             // ignored row
  t[2] = static_cast<int32_t>(vocab - 1);                // the last class
  t[3] = static_cast<int32_t>(std::min(Vr, vocab - 1));  // rank 1's first column
  const Tensor targets = Tensor::from_ints(t, {N});
  for (double smoothing : {0.0, 0.1}) {
    const std::string tag =
        " (rank " + std::to_string(world.rank()) + ", smoothing " + std::to_string(smoothing) + ")";
    Tensor losses_ref = Tensor::empty({N}, dtype), dlogits_ref = Tensor::empty({N, Vp}, dtype);
    cpu->cross_entropy(losses_ref, dlogits_ref, logits, targets, vocab, 0.25, smoothing);

    const Tensor local = columns(logits, world.rank() * Vr, Vr);
    Tensor losses = poisoned(N, dtype), dlogits = poisoned(N * Vr, dtype).view({N, Vr});
    vocab_parallel_cross_entropy(*cpu, &tp, losses, dlogits, local, targets, vocab, 0.25, smoothing);
    const Tensor want = columns(dlogits_ref, world.rank() * Vr, Vr);
    for (int64_t n = 0; n < N; ++n)
      EXPECT_NEAR(losses.item(n), losses_ref.item(n), tol * std::max(1.0, std::fabs(losses_ref.item(n))))
          << "loss row " << n << tag;
    for (int64_t i = 0; i < N * Vr; ++i) EXPECT_NEAR(dlogits.item(i), want.item(i), tol) << "dlogits " << i << tag;

    // In place, losses only (evaluation).
    Tensor inplace = columns(logits, world.rank() * Vr, Vr), losses_only = poisoned(N, dtype), none;
    vocab_parallel_cross_entropy(*cpu, &tp, losses, inplace, inplace, targets, vocab, 0.25, smoothing);
    vocab_parallel_cross_entropy(*cpu, &tp, losses_only, none, local, targets, vocab, 0.25, smoothing);
    for (int64_t i = 0; i < N * Vr; ++i) EXPECT_EQ(inplace.item(i), dlogits.item(i)) << "in place " << i << tag;
    for (int64_t n = 0; n < N; ++n) EXPECT_EQ(losses_only.item(n), losses.item(n)) << "losses only " << n << tag;
  }
}

TEST(VocabParallelLoss, MatchesCrossEntropyFloat64) { check_against_cross_entropy(DType::F64, 1e-12); }
TEST(VocabParallelLoss, MatchesCrossEntropyFloat32) { check_against_cross_entropy(DType::F32, 2e-6); }

// vocab 50 pads to 128 rows: over 4 ranks (32 each) rank 1 holds 18 classes and ranks 2 and 3 only padding.
ModelShape small_gpt() {
  config::ModelConfig m;
  m.set_kind("gpt");
  m.set_n_layer(2);
  m.set_d_model(8);
  m.set_n_head(4);
  m.set_mlp_dim(16);
  m.set_vocab_size(50);
  m.set_max_seq_len(6);
  return model_shape_from_config(m);
}

TEST(VocabParallelLoss, GptEvaluateAndLastLogitsMatchOneProcess) {
  MpiCommunicator& world = test_world();
  auto cpu = make_backend(Device::cpu());
  const ModelShape shape = small_gpt();
  const uint64_t seed = shared_seed(world);
  const int64_t B = 2, T = 6;
  PhiloxStream rng(seed, 0);
  std::vector<int32_t> in, tgt;
  for (int64_t i = 0; i < B * T; ++i) {
    in.push_back(static_cast<int32_t>(rng.below(50)));
    tgt.push_back(i == 4 ? -1 : static_cast<int32_t>(rng.below(50)));
  }
  const Batch batch{Tensor::from_ints(in, {B, T}), Tensor::from_ints(tgt, {B, T})};
  // The first 4 tokens of each sequence (the model pads contexts to T rows, which SP splits across the ranks).
  std::vector<int32_t> prefix;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < 4; ++i) prefix.push_back(in[b * T + i]);
  const Tensor context = Tensor::from_ints(prefix, {B, 4});
  for (bool sequence : {false, true}) {
    const std::string tag = std::string(sequence ? " with" : " without") + " sequence parallelism, rank " +
                            std::to_string(world.rank());
    const TensorParallelContext tp{&world, sequence};
    GptModel single(shape, *cpu, DType::F64, DType::F64, T, 7);
    GptModel split(shape, *cpu, DType::F64, DType::F64, T, 7, &tp);

    const EvalStats want = single.evaluate(batch), got = split.evaluate(batch);
    EXPECT_EQ(got.count, want.count) << tag;
    EXPECT_NEAR(got.loss_sum, want.loss_sum, 1e-12 * std::fabs(want.loss_sum)) << "evaluate" << tag;
    cpu->zero(single.params().grads());
    cpu->zero(split.params().grads());
    const double loss_single = single.forward_backward(batch, 1.0), loss_split = split.forward_backward(batch, 1.0);
    EXPECT_NEAR(loss_split, loss_single, 1e-12 * std::fabs(loss_single)) << "forward_backward" << tag;

    const std::vector<float> logits_single = single.last_logits(context), logits_split = split.last_logits(context);
    ASSERT_EQ(logits_split.size(), static_cast<size_t>(B * shape.vocab)) << tag;
    for (size_t v = 0; v < logits_single.size(); ++v)
      EXPECT_NEAR(logits_split[v], logits_single[v], 1e-6 * std::max(1.f, std::fabs(logits_single[v])))
          << "last_logits column " << v << tag;
  }
}

}  // namespace
}  // namespace loom::testing
