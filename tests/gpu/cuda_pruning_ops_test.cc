// CUDA backend's structural-pruning ops against the float64 CPU reference: dot products along every axis of
// ragged 2-D and 3-D tensors (both kernel paths: long contiguous runs and short ones), masks (bit for bit
// against the CPU twin), and the distillation loss with padding columns, in place and losses only.
#include "tests/gpu/cuda_backend_test_util.h"

namespace loom::testing_cuda {
namespace {

class CudaPruningTest : public CudaBackendTest, public ::testing::WithParamInterface<DType> {};

TEST_P(CudaPruningTest, DotAlongEveryAxisMatchesReference) {
  const DType dt = GetParam();
  // Ragged shapes; [1000, 37] axis 0 takes the row path, axis 1 the column path with many row slices.
  for (const Shape& shape : std::vector<Shape>{{1000, 37}, {5, 77, 3}, {3, 9, 129}, {4099}, {1, 1}}) {
    const Tensor a = random_host(shape, dt), b = random_host(shape, dt);
    for (int axis = 0; axis < static_cast<int>(shape.size()); ++axis) {
      const std::string what = "dot_along_axis " + shape_str(shape) + " axis " + std::to_string(axis);
      const int64_t D = shape[axis];
      Tensor out = poisoned({D}, DType::F32), ref = Tensor::empty({D}, DType::F64);
      gpu_->dot_along_axis(out, on_gpu(a), on_gpu(b), axis);
      cpu_->dot_along_axis(ref, as_f64(a), as_f64(b), axis);
      // f32 sums of products of inputs already rounded to dt: only f32 summation error remains.
      expect_close(out, ref, 1e-4, what);
      Tensor again = poisoned({D}, DType::F32);
      gpu_->dot_along_axis(again, on_gpu(a), on_gpu(b), axis);
      expect_bitwise_equal(again, out, what);
    }
  }
}

TEST_P(CudaPruningTest, ZeroMaskedMatchesTheCpuTwinBitForBit) {
  const DType dt = GetParam();
  // Ragged sizes, one above a grid's worth of 256-thread blocks (the grid-stride loop's second lap).
  for (int64_t n : {int64_t{1}, int64_t{4099}, int64_t{65536} * 256 + 77}) {
    const Tensor x = random_host({n}, dt);
    Tensor keep = random_host({n}, DType::F32);
    float* k = keep.data<float>();
    for (int64_t i = 0; i < n; ++i) k[i] = k[i] < -0.3f ? 0.f : 1.f;
    Tensor on_device = on_gpu(x), expected = x.cast(dt);
    gpu_->zero_masked(on_device, on_gpu(keep));
    cpu_->zero_masked(expected, keep);
    expect_bitwise_equal(on_device, expected, "zero_masked " + std::to_string(n) + " " + dtype_name(dt));
  }
  // An f32 arena under an f32 mask as AdamW's moments are (f32 whatever the compute dtype).
  const Tensor moments = random_host({1000}, DType::F32), keep = Tensor::zeros({1000}, DType::F32);
  Tensor m = on_gpu(moments);
  gpu_->zero_masked(m, on_gpu(keep));
  expect_bitwise_equal(m, Tensor::zeros({1000}, DType::F32), "zero_masked, every element masked");
}

TEST_P(CudaPruningTest, DistillationLossMatchesReference) {
  const DType dt = GetParam();
  const int64_t N = 9, classes = 1000, Vp = 1024;
  const Tensor student = random_host({N, Vp}, dt, -5.f, 5.f), teacher = random_host({N, Vp}, dt, -5.f, 5.f);
  for (double tau : {1.0, 3.0}) {
    const std::string tag = " (temperature " + std::to_string(tau) + ")";
    const double dloss = 0.25;
    Tensor losses = poisoned({N}, DType::F32), grad = poisoned({N, Vp}, dt);
    gpu_->distillation_loss(losses, grad, on_gpu(student), on_gpu(teacher), classes, tau, dloss);
    Tensor losses_ref = Tensor::empty({N}, DType::F64), grad_ref = Tensor::empty({N, Vp}, DType::F64);
    cpu_->distillation_loss(losses_ref, grad_ref, as_f64(student), as_f64(teacher), classes, tau, dloss);
    expect_close(losses, losses_ref, 1e-4, "distillation losses" + tag);
    expect_close(grad, grad_ref, tolerance(dt), "distillation dstudent" + tag);

    // The gradient written over the teacher's buffer (how a trainer saves a [N, Vp] buffer) is the same.
    Tensor in_place = on_gpu(teacher), losses2 = poisoned({N}, DType::F32);
    gpu_->distillation_loss(losses2, in_place, on_gpu(student), in_place, classes, tau, dloss);
    expect_close(in_place, grad_ref, tolerance(dt), "distillation over the teacher" + tag);
    expect_close(losses2, losses_ref, 1e-4, "distillation losses, in place" + tag);

    Tensor none, losses3 = poisoned({N}, DType::F32);
    gpu_->distillation_loss(losses3, none, on_gpu(student), on_gpu(teacher), classes, tau, dloss);
    expect_close(losses3, losses_ref, 1e-4, "distillation losses only" + tag);
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, CudaPruningTest, ::testing::Values(DType::F32, DType::BF16, DType::F16),
                         dtype_param_name);

TEST_F(CudaBackendTest, PruningOpsRejectBadArguments) {
  Tensor a = on_gpu(random_host({4, 8}, DType::F32)), b = on_gpu(random_host({4, 9}, DType::F32));
  Tensor out = Tensor::empty({8}, DType::F32, Device::cuda(0));
  EXPECT_THROW(gpu_->dot_along_axis(out, a, b, 1), Error);
  EXPECT_THROW(gpu_->dot_along_axis(out, a, a, 0), Error);  // out has 8 elements, axis 0 has 4
  EXPECT_THROW(gpu_->dot_along_axis(out, a, a, 2), Error);
  Tensor losses = Tensor::empty({4}, DType::F32, Device::cuda(0)), none;
  EXPECT_THROW(gpu_->distillation_loss(losses, none, a, a, 9, 1.0, 1.0), Error);
  EXPECT_THROW(gpu_->distillation_loss(losses, none, a, a, 8, 0.0, 1.0), Error);
  Tensor host_keep = Tensor::zeros({32}, DType::F32);
  EXPECT_THROW(gpu_->zero_masked(a, host_keep), Error);  // the mask must be on the device
  EXPECT_THROW(gpu_->zero_masked(a, on_gpu(Tensor::zeros({31}, DType::F32))), Error);
}

}  // namespace
}  // namespace loom::testing_cuda
