// The CPU backend's vocabulary-parallel cross-entropy pair (cross_entropy_partials, cross_entropy_from_partials)
// against cross_entropy on the full logits: R ∈ {1, 2, 3} tensor ranks are simulated by slicing the columns of
// one [N, Vp] logits tensor, and each rank's result must equal the full op's losses and its columns of the
// gradient (padding columns, ignored rows, label smoothing, ranks whose columns are all padding).
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "parallel/tensor_parallel.h"
#include "tests/unit/cpu_kernels_testing.h"

namespace loom {
namespace {

using cpu_test::clone;
using cpu_test::poisoned;
using cpu_test::random_tensor;

struct SplitCase {
  int64_t rows, local_columns, ranks, vocab;  // Vp = ranks · local_columns
};

std::string case_name(const SplitCase& c) {
  return "N" + std::to_string(c.rows) + "_Vr" + std::to_string(c.local_columns) + "_R" + std::to_string(c.ranks) +
         "_V" + std::to_string(c.vocab);
}

// Columns [begin, begin + width) of a CPU [N, Vp] tensor, as a new [N, width] tensor.
Tensor columns(const Tensor& full, int64_t begin, int64_t width) {
  const int64_t N = full.dim(0), Vp = full.dim(1);
  Tensor out = Tensor::empty({N, width}, full.dtype());
  for (int64_t n = 0; n < N; ++n) out.slice_flat(n * width, {width}).copy_from(full.slice_flat(n * Vp + begin, {width}));
  return out;
}

// Random targets in [0, vocab) with row 1 ignored, the last class and the first class of each rank's columns.
Tensor make_targets(const SplitCase& c, std::mt19937_64& rng) {
  std::uniform_int_distribution<int32_t> dist(0, static_cast<int32_t>(c.vocab - 1));
  std::vector<int32_t> t(static_cast<size_t>(c.rows));
  for (auto& x : t) x = dist(rng);
  if (c.rows > 1) t[1] = -1;
  if (c.rows > 2) t[2] = static_cast<int32_t>(c.vocab - 1);
  for (int64_t r = 1; r < c.ranks && 2 + r < c.rows; ++r)
    t[2 + r] = static_cast<int32_t>(std::min(r * c.local_columns, c.vocab - 1));
  return Tensor::from_ints(t, {c.rows});
}

// Expects |a - b| <= tol·max(1, |b|) element-wise; tol 0 demands bit equality. NaN fails.
void expect_near(const Tensor& actual, const Tensor& reference, double tol, const std::string& what) {
  ASSERT_EQ(actual.numel(), reference.numel()) << what;
  for (int64_t i = 0; i < actual.numel(); ++i) {
    const double a = actual.item(i), r = reference.item(i);
    if (tol == 0)
      EXPECT_EQ(a, r) << what << " element " << i;
    else
      EXPECT_NEAR(a, r, tol * std::max(1.0, std::fabs(r))) << what << " element " << i;
  }
}

class VocabParallelCrossEntropy : public ::testing::TestWithParam<SplitCase> {
 protected:
  // Runs the pair for every simulated rank on `logits` (dtype of the test) with partials of `partial_dtype`
  // and compares with cross_entropy on the full logits within `tol` (0: bit-identical).
  void check_against_full(DType dtype, DType partial_dtype, double tol) {
    const SplitCase c = GetParam();
    const int64_t N = c.rows, Vr = c.local_columns, R = c.ranks, Vp = R * Vr;
    const Tensor logits = random_tensor({N, Vp}, dtype, rng, -4, 4);
    const Tensor targets = make_targets(c, rng);
    for (double smoothing : {0.0, 0.1}) {
      const std::string tag = " (" + case_name(c) + ", smoothing " + std::to_string(smoothing) + ")";
      const double dloss = 0.37;
      Tensor losses_ref = poisoned({N}, partial_dtype), dlogits_ref = poisoned({N, Vp}, dtype);
      cpu.cross_entropy(losses_ref, dlogits_ref, logits, targets, c.vocab, dloss, smoothing);

      // Every rank's partials, stacked as the all-gather would: gathered[r] = rank r's.
      std::vector<Tensor> locals;
      Tensor gathered = poisoned({R, N, 4}, partial_dtype);
      for (int64_t r = 0; r < R; ++r) {
        locals.push_back(columns(logits, r * Vr, Vr));
        Tensor partials = poisoned({N, 4}, partial_dtype);
        cpu.cross_entropy_partials(partials, locals[r], targets, r * Vr, c.vocab);
        gathered.slice_flat(r * N * 4, {N, 4}).copy_from(partials);
      }

      Tensor losses_rank0;
      for (int64_t r = 0; r < R; ++r) {
        const std::string rank = " rank " + std::to_string(r) + tag;
        Tensor losses = poisoned({N}, partial_dtype), dlogits = poisoned({N, Vr}, dtype);
        cpu.cross_entropy_from_partials(losses, dlogits, gathered, locals[r], targets, r * Vr, c.vocab, dloss,
                                        smoothing);
        expect_near(losses, losses_ref, tol, "losses" + rank);
        expect_near(dlogits, columns(dlogits_ref, r * Vr, Vr), tol, "dlogits" + rank);
        // Ignored rows and padding columns are exactly zero.
        if (N > 1) {
          EXPECT_EQ(losses.item(1), 0.0) << "ignored row" << rank;
          for (int64_t j = 0; j < Vr; ++j) EXPECT_EQ(dlogits.item(Vr + j), 0.0) << "ignored row" << rank;
        }
        for (int64_t n = 0; n < N; ++n)
          for (int64_t j = std::max<int64_t>(0, c.vocab - r * Vr); j < Vr; ++j)
            EXPECT_EQ(dlogits.item(n * Vr + j), 0.0) << "padding column " << n << "," << j << rank;
        // Every rank combines the same numbers: the losses agree bit for bit.
        if (r == 0)
          losses_rank0 = clone(losses);
        else
          expect_near(losses, losses_rank0, 0, "losses equal rank 0's" + rank);

        // In place (dlogits aliasing the logits) and losses only give the same results.
        Tensor inplace = clone(locals[r]), losses_inplace = poisoned({N}, partial_dtype), none;
        cpu.cross_entropy_from_partials(losses_inplace, inplace, gathered, inplace, targets, r * Vr, c.vocab, dloss,
                                        smoothing);
        expect_near(inplace, dlogits, 0, "in-place dlogits" + rank);
        expect_near(losses_inplace, losses, 0, "in-place losses" + rank);
        Tensor losses_only = poisoned({N}, partial_dtype);
        cpu.cross_entropy_from_partials(losses_only, none, gathered, locals[r], targets, r * Vr, c.vocab, dloss,
                                        smoothing);
        expect_near(losses_only, losses, 0, "losses only" + rank);
      }
    }
  }

  CpuBackend cpu;
  std::mt19937_64 rng{20261126};
};

TEST_P(VocabParallelCrossEntropy, Float64MatchesCrossEntropy) {
  // One rank is cross_entropy exactly (the same operations in the same order); more ranks regroup the sum.
  check_against_full(DType::F64, DType::F64, GetParam().ranks == 1 ? 0 : 1e-12);
}

TEST_P(VocabParallelCrossEntropy, Float32MatchesCrossEntropy) {
  check_against_full(DType::F32, DType::F32, 2e-6);
}

INSTANTIATE_TEST_SUITE_P(
    Splits, VocabParallelCrossEntropy,
    ::testing::Values(SplitCase{5, 9, 1, 7},    // one rank, two padding columns
                      SplitCase{6, 5, 2, 9},    // the last rank holds one padding column
                      SplitCase{7, 4, 3, 7},    // rank 2's columns are all padding
                      SplitCase{4, 3, 3, 9},    // no padding
                      SplitCase{1, 1, 3, 2},    // one row, one column per rank, rank 2 all padding
                      SplitCase{9, 13, 2, 14}),  // rank 1 holds a single class column
    [](const ::testing::TestParamInfo<SplitCase>& info) { return case_name(info.param); });

TEST(VocabParallelCrossEntropyOrder, GatheredRankOrderDoesNotChangeTheLoss) {
  CpuBackend cpu;
  std::mt19937_64 rng{7};
  const int64_t N = 4, Vr = 6, R = 3, vocab = 16;
  const Tensor logits = random_tensor({N, R * Vr}, DType::F64, rng, -3, 3);
  const Tensor targets = Tensor::from_ints({0, 15, -1, 8}, {N});
  Tensor in_order = Tensor::empty({R, N, 4}, DType::F64), reversed = Tensor::empty({R, N, 4}, DType::F64);
  for (int64_t r = 0; r < R; ++r) {
    Tensor partials = poisoned({N, 4}, DType::F64);
    cpu.cross_entropy_partials(partials, columns(logits, r * Vr, Vr), targets, r * Vr, vocab);
    in_order.slice_flat(r * N * 4, {N, 4}).copy_from(partials);
    reversed.slice_flat((R - 1 - r) * N * 4, {N, 4}).copy_from(partials);
  }
  Tensor a = poisoned({N}, DType::F64), b = poisoned({N}, DType::F64), none;
  const Tensor local = columns(logits, Vr, Vr);
  cpu.cross_entropy_from_partials(a, none, in_order, local, targets, Vr, vocab, 1.0, 0.1);
  cpu.cross_entropy_from_partials(b, none, reversed, local, targets, Vr, vocab, 1.0, 0.1);
  expect_near(b, a, 1e-14, "losses from reversed rank order");
}

// Without a tensor-parallel group the named operation is cross_entropy itself.
TEST(VocabParallelCrossEntropyOperation, WithoutAGroupIsCrossEntropy) {
  CpuBackend cpu;
  std::mt19937_64 rng{11};
  const Tensor logits = random_tensor({5, 8}, DType::F64, rng, -3, 3);
  const Tensor targets = Tensor::from_ints({0, 6, -1, 3, 5}, {5});
  Tensor losses = poisoned({5}, DType::F64), dlogits = poisoned({5, 8}, DType::F64);
  Tensor losses_ref = poisoned({5}, DType::F64), dlogits_ref = poisoned({5, 8}, DType::F64);
  const TensorParallelContext single;
  vocab_parallel_cross_entropy(cpu, &single, losses, dlogits, logits, targets, 7, 0.5, 0.1);
  cpu.cross_entropy(losses_ref, dlogits_ref, logits, targets, 7, 0.5, 0.1);
  expect_near(losses, losses_ref, 0, "losses");
  expect_near(dlogits, dlogits_ref, 0, "dlogits");
  Tensor losses_null = poisoned({5}, DType::F64), none;
  vocab_parallel_cross_entropy(cpu, nullptr, losses_null, none, logits, targets, 7, 0.5, 0.1);
  expect_near(losses_null, losses_ref, 0, "losses, null context");
}

TEST(VocabParallelCrossEntropyErrors, BadArgumentsThrow) {
  CpuBackend cpu;
  const Tensor logits = Tensor::zeros({3, 4}, DType::F32);
  const Tensor targets = Tensor::from_ints({0, -1, 6}, {3});
  Tensor partials = Tensor::empty({3, 4}, DType::F32), none;
  EXPECT_NO_THROW(cpu.cross_entropy_partials(partials, logits, targets, 4, 7));
  EXPECT_THROW(cpu.cross_entropy_partials(partials, logits, Tensor::from_ints({0, 7, 1}, {3}), 4, 7), Error)
      << "target >= vocab";
  EXPECT_THROW(cpu.cross_entropy_partials(partials, logits, Tensor::from_ints({0, -2, 1}, {3}), 4, 7), Error)
      << "target < -1";
  EXPECT_THROW(cpu.cross_entropy_partials(partials, logits, Tensor::from_ints({0, 1}, {2}), 4, 7), Error)
      << "one target short";
  EXPECT_THROW(cpu.cross_entropy_partials(partials, logits, targets, -4, 7), Error) << "negative vocab_begin";
  EXPECT_THROW(cpu.cross_entropy_partials(partials, logits, targets, 4, 0), Error) << "empty vocabulary";
  Tensor short_partials = Tensor::empty({3, 3}, DType::F32);
  EXPECT_THROW(cpu.cross_entropy_partials(short_partials, logits, targets, 4, 7), Error) << "partials [3, 3]";

  Tensor gathered = Tensor::zeros({2, 3, 4}, DType::F32), losses = Tensor::empty({3}, DType::F32);
  Tensor dlogits = Tensor::empty({3, 4}, DType::F32);
  EXPECT_NO_THROW(cpu.cross_entropy_from_partials(losses, dlogits, gathered, logits, targets, 4, 7, 1, 0));
  Tensor flat = Tensor::zeros({24}, DType::F32), wrong_rows = Tensor::zeros({2, 2, 4}, DType::F32);
  EXPECT_THROW(cpu.cross_entropy_from_partials(losses, dlogits, flat, logits, targets, 4, 7, 1, 0), Error)
      << "gathered not [R, N, 4]";
  EXPECT_THROW(cpu.cross_entropy_from_partials(losses, dlogits, wrong_rows, logits, targets, 4, 7, 1, 0), Error)
      << "gathered for 2 rows";
  Tensor f64_losses = Tensor::empty({3}, DType::F64);
  EXPECT_THROW(cpu.cross_entropy_from_partials(f64_losses, dlogits, gathered, logits, targets, 4, 7, 1, 0), Error)
      << "losses f64, gathered f32";
  Tensor wide = Tensor::empty({3, 5}, DType::F32);
  EXPECT_THROW(cpu.cross_entropy_from_partials(losses, wide, gathered, logits, targets, 4, 7, 1, 0), Error)
      << "dlogits_local of another shape";
  EXPECT_THROW(cpu.cross_entropy_from_partials(losses, none, gathered, logits, targets, 4, 7, 1, 1.5), Error)
      << "label smoothing > 1";
}

}  // namespace
}  // namespace loom
