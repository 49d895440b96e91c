// CUDA vocabulary-parallel cross-entropy (cross_entropy_partials, cross_entropy_from_partials) against the
// float64 CPU twin: R tensor ranks are simulated by slicing the columns of one logits tensor; each rank's
// partials must match the CPU's, and the losses and each rank's gradient columns combined from the GPU partials
// must match cross_entropy on the full logits (padding columns, ignored rows, label smoothing, in place).
#include <algorithm>
#include <cmath>
#include <limits>

#include "tests/gpu/cuda_backend_test_util.h"

namespace loom::testing_cuda {
namespace {

struct SplitCase {
  int64_t rows, local_columns, ranks, vocab;  // Vp = ranks · local_columns
};

// Columns [begin, begin + width) of a host [N, Vp] tensor, as a new host [N, width] tensor.
Tensor columns(const Tensor& full, int64_t begin, int64_t width) {
  const Tensor host = full.device().is_cpu() ? full : full.to(Device::cpu());
  const int64_t N = host.dim(0), Vp = host.dim(1);
  Tensor out = Tensor::empty({N, width}, host.dtype());
  for (int64_t n = 0; n < N; ++n) out.slice_flat(n * width, {width}).copy_from(host.slice_flat(n * Vp + begin, {width}));
  return out;
}

// GPU partials [N, 4] against the CPU's (f64): -inf (no class columns, ignored rows) exactly where the CPU has
// it; m, s and the target logit within f32 rounding; Σz within the rounding of Vr terms of magnitude <= bound.
void expect_partials(const Tensor& gpu, const Tensor& cpu, int64_t Vr, double bound, const std::string& what) {
  const Tensor a = gpu.to(Device::cpu()).cast(DType::F64);
  int64_t failures = 0;
  for (int64_t i = 0; i < cpu.numel(); ++i) {
    const double x = a.item(i), r = cpu.item(i);
    const bool sum_z = i % 4 == 3;
    const double tol = sum_z ? 1e-6 * bound * static_cast<double>(Vr) : 1e-5 * (std::fabs(r) + 1);
    const bool ok = std::isinf(r) ? x == r : std::fabs(x - r) <= tol;
    if (!ok && ++failures <= 5)
      ADD_FAILURE() << what << ": row " << i / 4 << " partial " << i % 4 << " is " << x << ", expected " << r;
  }
  EXPECT_EQ(failures, 0) << what;
}

class CudaVocabParallelLossTest : public CudaBackendTest, public ::testing::WithParamInterface<DType> {
 protected:
  void check(const SplitCase& c, float range) {
    const DType dt = GetParam();
    const int64_t N = c.rows, Vr = c.local_columns, R = c.ranks, Vp = R * Vr;
    const std::string name = "N" + std::to_string(N) + " Vr" + std::to_string(Vr) + " R" + std::to_string(R) +
                             " V" + std::to_string(c.vocab);
    const Tensor logits = random_host({N, Vp}, dt, -range, range);
    std::vector<int32_t> t = ints(N, 0, static_cast<int32_t>(c.vocab - 1));
    if (N > 1) t[1] = -1;  // ignored row
    if (N > 2) t[2] = static_cast<int32_t>(c.vocab - 1);
    if (N > 3 && R > 1) t[3] = static_cast<int32_t>(std::min(Vr, c.vocab - 1));  // rank 1's first column
    const Tensor targets = Tensor::from_ints(t, {N}), targets_gpu = on_gpu(targets);
    for (double smoothing : {0.0, 0.1}) {
      const std::string tag = " (" + name + ", smoothing " + std::to_string(smoothing) + ")";
      const double dloss = 1.0 / 6;
      Tensor losses_ref = Tensor::empty({N}, DType::F64), dlogits_ref = Tensor::empty({N, Vp}, DType::F64);
      cpu_->cross_entropy(losses_ref, dlogits_ref, as_f64(logits), targets, c.vocab, dloss, smoothing);

      std::vector<Tensor> locals;
      Tensor gathered = poisoned({R, N, 4}, DType::F32);
      for (int64_t r = 0; r < R; ++r) {
        locals.push_back(columns(logits, r * Vr, Vr));
        Tensor partials = poisoned({N, 4}, DType::F32), partials_ref = Tensor::empty({N, 4}, DType::F64);
        gpu_->cross_entropy_partials(partials, on_gpu(locals[r]), targets_gpu, r * Vr, c.vocab);
        cpu_->cross_entropy_partials(partials_ref, as_f64(locals[r]), targets, r * Vr, c.vocab);
        expect_partials(partials, partials_ref, Vr, range, "partials rank " + std::to_string(r) + tag);
        gathered.slice_flat(r * N * 4, {N, 4}).copy_from(partials);
      }
      const double loss_tol = dt == DType::F32 ? 1e-5 : 1e-4;
      for (int64_t r = 0; r < R; ++r) {
        const std::string rank = " rank " + std::to_string(r) + tag;
        const Tensor reference = columns(dlogits_ref, r * Vr, Vr);
        Tensor losses = poisoned({N}, DType::F32), dlogits = poisoned({N, Vr}, dt);
        gpu_->cross_entropy_from_partials(losses, dlogits, gathered, on_gpu(locals[r]), targets_gpu, r * Vr, c.vocab,
                                          dloss, smoothing);
        expect_close(losses, losses_ref, loss_tol, "losses" + rank);
        // Gradients of ~1e-5 are f16 subnormals at large vocabularies, spaced 6e-8 apart.
        expect_close(dlogits, reference, tolerance(dt), "dlogits" + rank, dt == DType::F16 ? 6e-8 : 0);

        // In place (how the trainer calls it) and losses only.
        Tensor inplace = on_gpu(locals[r]), losses_inplace = poisoned({N}, DType::F32), none;
        gpu_->cross_entropy_from_partials(losses_inplace, inplace, gathered, inplace, targets_gpu, r * Vr, c.vocab,
                                          dloss, smoothing);
        expect_bitwise_equal(inplace, dlogits, "in-place dlogits" + rank);
        expect_bitwise_equal(losses_inplace, losses, "in-place losses" + rank);
        Tensor losses_only = poisoned({N}, DType::F32);
        gpu_->cross_entropy_from_partials(losses_only, none, gathered, on_gpu(locals[r]), targets_gpu, r * Vr,
                                          c.vocab, dloss, smoothing);
        expect_bitwise_equal(losses_only, losses, "losses only" + rank);
      }
    }
    gpu_->synchronize();  // no target was flagged
  }
};

TEST_P(CudaVocabParallelLossTest, MatchesCpuOnSlicedColumns) {
  check({4, 128, 1, 77}, 4.f);   // one rank: cross_entropy
  check({6, 40, 2, 77}, 4.f);    // the last rank holds 3 class columns
  check({7, 43, 3, 100}, 4.f);   // ragged width, rank 2 partly padding
  check({5, 40, 3, 77}, 4.f);    // rank 2's columns are all padding
}

TEST_P(CudaVocabParallelLossTest, Gpt2VocabularyOverTwoRanks) {
  check({3, 25152, 2, 50257}, 6.f);  // GPT-2's 50304 padded columns split in two
}

TEST_P(CudaVocabParallelLossTest, BadTargetIsReported) {
  const Tensor logits = on_gpu(random_host({2, 8}, GetParam()));
  const Tensor targets = on_gpu(Tensor::from_ints({1, 9}, {2}));
  Tensor partials = poisoned({2, 4}, DType::F32);
  gpu_->cross_entropy_partials(partials, logits, targets, 8, 9);
  EXPECT_THROW(gpu_->synchronize(), Error);
  gpu_->synchronize();  // the flag is cleared once reported
}

INSTANTIATE_TEST_SUITE_P(Dtypes, CudaVocabParallelLossTest, ::testing::Values(DType::F32, DType::BF16, DType::F16),
                         dtype_param_name);

}  // namespace
}  // namespace loom::testing_cuda
