// CUDA backend against the float64 CPU reference: fused cross-entropy (padded vocabulary, ignored targets,
// label smoothing, in-place gradient), the squared gradient norm and the fused AdamW step.
#include <cmath>

#include "tests/gpu/cuda_backend_test_util.h"

namespace loom::testing_cuda {
namespace {

class CudaLossTest : public CudaBackendTest, public ::testing::WithParamInterface<DType> {};

TEST_P(CudaLossTest, CrossEntropyPaddedVocabIgnoredTargetsSmoothing) {
  const DType dt = GetParam();
  const double tol = tolerance(dt);
  const int64_t N = 7, V = 77, Vp = 128;
  const Tensor logits = random_host({N, Vp}, dt, -4.f, 4.f);
  std::vector<int32_t> t = ints(N, 0, static_cast<int32_t>(V - 1));
  t[2] = -1;  // ignored row
  t[5] = static_cast<int32_t>(V - 1);
  const Tensor targets = Tensor::from_ints(t, {N});
  for (double smoothing : {0.0, 0.1}) {
    const std::string tag = " (smoothing " + std::to_string(smoothing) + ")";
    const double dloss = 1.0 / 6;
    Tensor losses = poisoned({N}, DType::F32), dlogits = poisoned({N, Vp}, dt);
    gpu_->cross_entropy(losses, dlogits, on_gpu(logits), on_gpu(targets), V, dloss, smoothing);
    Tensor losses_ref = Tensor::empty({N}, DType::F64), dlogits_ref = Tensor::empty({N, Vp}, DType::F64);
    cpu_->cross_entropy(losses_ref, dlogits_ref, as_f64(logits), targets, V, dloss, smoothing);
    expect_close(losses, losses_ref, dt == DType::F32 ? 1e-5 : 1e-4, "cross_entropy losses" + tag);
    expect_close(dlogits, dlogits_ref, tol, "cross_entropy dlogits" + tag);

    // dlogits aliasing logits (how the trainer calls it) gives the same gradient.
    Tensor inplace = on_gpu(logits), losses2 = poisoned({N}, DType::F32);
    gpu_->cross_entropy(losses2, inplace, inplace, on_gpu(targets), V, dloss, smoothing);
    expect_close(inplace, dlogits_ref, tol, "cross_entropy in place" + tag);
    expect_close(losses2, losses_ref, dt == DType::F32 ? 1e-5 : 1e-4, "cross_entropy in place losses" + tag);

    // Losses only.
    Tensor none, losses3 = poisoned({N}, DType::F32);
    gpu_->cross_entropy(losses3, none, on_gpu(logits), on_gpu(targets), V, dloss, smoothing);
    expect_close(losses3, losses_ref, dt == DType::F32 ? 1e-5 : 1e-4, "cross_entropy losses only" + tag);
  }
}

TEST_P(CudaLossTest, CrossEntropyLargeVocabulary) {
  const DType dt = GetParam();
  const int64_t N = 5, V = 50257, Vp = 50304;
  const Tensor logits = random_host({N, Vp}, dt, -6.f, 6.f);
  const Tensor targets = Tensor::from_ints(ints(N, 0, static_cast<int32_t>(V - 1)), {N});
  Tensor losses = poisoned({N}, DType::F32), dlogits = on_gpu(logits);
  gpu_->cross_entropy(losses, dlogits, dlogits, on_gpu(targets), V, 0.2, 0.0);
  Tensor losses_ref = Tensor::empty({N}, DType::F64), dlogits_ref = Tensor::empty({N, Vp}, DType::F64);
  cpu_->cross_entropy(losses_ref, dlogits_ref, as_f64(logits), targets, V, 0.2, 0.0);
  expect_close(losses, losses_ref, dt == DType::F32 ? 1e-5 : 1e-4, "cross_entropy losses, GPT-2 vocab");
  // Gradients of ~1e-5 are f16 subnormals there, spaced 6e-8 apart.
  expect_close(dlogits, dlogits_ref, tolerance(dt), "cross_entropy dlogits, GPT-2 vocab",
               dt == DType::F16 ? 6e-8 : 0);
}

TEST_P(CudaLossTest, CrossEntropyVectorisedAndScalarRows) {
  // Rows the 16-byte kernel takes (Vp a multiple of 8; many rows, the class columns ending inside a 16-byte
  // pack, smoothing, an ignored row) and rows that take the element-wise one (Vp = 101; and a row start off
  // 16 bytes: the logits at an odd offset of an arena), each against the CPU reference, in place too.
  const DType dt = GetParam();
  struct Shape {
    int64_t rows, vocab, padded, offset;
  };
  for (const Shape c : {Shape{301, 5003, 5008, 0}, Shape{9, 90, 101, 0}, Shape{7, 61, 64, 1}}) {
    const std::string tag = " N=" + std::to_string(c.rows) + " V=" + std::to_string(c.vocab) +
                            " Vp=" + std::to_string(c.padded) + " offset " + std::to_string(c.offset);
    const Tensor arena = random_host({c.rows * c.padded + c.offset}, dt, -6.f, 6.f);
    const Tensor logits = arena.slice_flat(c.offset, {c.rows, c.padded});
    std::vector<int32_t> t = ints(c.rows, 0, static_cast<int32_t>(c.vocab - 1));
    t[1] = -1;
    t[2] = static_cast<int32_t>(c.vocab - 1);
    const Tensor targets = Tensor::from_ints(t, {c.rows});
    const double dloss = 1.0 / double(c.rows), smoothing = 0.1;
    Tensor losses_ref = Tensor::empty({c.rows}, DType::F64),
           dlogits_ref = Tensor::empty({c.rows, c.padded}, DType::F64);
    cpu_->cross_entropy(losses_ref, dlogits_ref, as_f64(logits), targets, c.vocab, dloss, smoothing);

    const Tensor arena_gpu = on_gpu(arena);
    Tensor losses = poisoned({c.rows}, DType::F32), dlogits = poisoned({c.rows, c.padded}, dt);
    gpu_->cross_entropy(losses, dlogits, arena_gpu.slice_flat(c.offset, {c.rows, c.padded}), on_gpu(targets),
                        c.vocab, dloss, smoothing);
    const double loss_tol = dt == DType::F32 ? 1e-5 : 1e-4;
    expect_close(losses, losses_ref, loss_tol, "cross_entropy losses" + tag);
    expect_close(dlogits, dlogits_ref, tolerance(dt), "cross_entropy dlogits" + tag, dt == DType::F16 ? 6e-8 : 0);

    Tensor inplace_arena = on_gpu(arena), losses2 = poisoned({c.rows}, DType::F32);
    Tensor inplace = inplace_arena.slice_flat(c.offset, {c.rows, c.padded});
    gpu_->cross_entropy(losses2, inplace, inplace, on_gpu(targets), c.vocab, dloss, smoothing);
    expect_bitwise_equal(inplace, dlogits, "cross_entropy in place" + tag);
    expect_bitwise_equal(losses2, losses, "cross_entropy in place losses" + tag);
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, CudaLossTest, ::testing::Values(DType::F32, DType::BF16, DType::F16),
                         dtype_param_name);

TEST_F(CudaBackendTest, SumSquaresOverMixedTensors) {
  const Tensor a = random_host({1000003}, DType::BF16), b = random_host({7, 33}, DType::F32),
               c = random_host({129}, DType::F16);
  double expected = 0;
  for (const Tensor* t : {&a, &b, &c}) {
    const Tensor f = t->cast(DType::F64);
    for (int64_t i = 0; i < f.numel(); ++i) expected += f.data<double>()[i] * f.data<double>()[i];
  }
  const double got = gpu_->sum_squares({on_gpu(a), on_gpu(b), on_gpu(c)});
  EXPECT_NEAR(got, expected, 1e-5 * expected);
  EXPECT_EQ(got, gpu_->sum_squares({on_gpu(a), on_gpu(b), on_gpu(c)})) << "sum_squares is not deterministic";
  EXPECT_EQ(gpu_->sum_squares({}), 0.0);
}

TEST_F(CudaBackendTest, AdamWMatchesReferenceAndWritesComputeCopy) {
  const int64_t n = 10007;
  AdamWHyper hp;
  hp.lr = 3e-3;
  hp.beta1 = 0.9;
  hp.beta2 = 0.95;
  hp.eps = 1e-8;
  hp.step = 3;
  hp.grad_scale = 0.5;
  const double wd = 0.1;
  const Tensor p0 = random_host({n}, DType::F32), m0 = random_host({n}, DType::F32, -0.1f, 0.1f),
               v0 = random_host({n}, DType::F32, 0.f, 0.01f);
  for (DType grad_dtype : {DType::F32, DType::BF16}) {
    for (DType copy_dtype : {DType::BF16, DType::F16}) {
      const std::string tag = std::string(" (grad ") + dtype_name(grad_dtype) + ", copy " + dtype_name(copy_dtype) + ")";
      const Tensor g = random_host({n}, grad_dtype);
      Tensor p = on_gpu(p0), m = on_gpu(m0), v = on_gpu(v0), copy = poisoned({n}, copy_dtype);
      gpu_->adamw_update(p, m, v, on_gpu(g), copy, hp, wd);
      Tensor pr = as_f64(p0), mr = as_f64(m0), vr = as_f64(v0), none;
      cpu_->adamw_update(pr, mr, vr, g.cast(DType::F64), none, hp, wd);
      expect_close(p, pr, 1e-5, "adamw param" + tag);
      expect_close(m, mr, 1e-5, "adamw m" + tag);
      expect_close(v, vr, 1e-5, "adamw v" + tag);
      expect_close(copy, p.to(Device::cpu()).cast(copy_dtype), 0, "adamw compute copy" + tag);
    }
  }
  Tensor p = on_gpu(p0), m = on_gpu(m0), v = on_gpu(v0), none;
  gpu_->adamw_update(p, m, v, on_gpu(random_host({n}, DType::F32)), none, hp, wd);  // no compute copy
  gpu_->synchronize();
}

}  // namespace
}  // namespace loom::testing_cuda
