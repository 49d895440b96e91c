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

TEST_P(CudaPruningTest, ZeroDeletedMatchesTheCpuTwinBitForBit) {
  const DType dt = GetParam();
  std::mt19937 rng(17);
  // 150 ragged parameters with one or two masked dimensions each (more entries than one launch takes, entries
  // covering the same elements), then one of 700,003 elements (more than the grid: the stride loop's second
  // lap), gaps between them.
  std::vector<DimensionMask> dims;
  std::vector<int32_t> flags;
  int64_t arena = 0;
  auto add = [&](const Shape& shape, int masked) {
    int64_t numel = 1;
    for (int64_t s : shape) numel *= s;
    for (int k = 0; k < masked; ++k) {
      const int d = static_cast<int>(rng() % shape.size());
      int64_t inner = 1;
      for (size_t j = d + 1; j < shape.size(); ++j) inner *= shape[j];
      dims.push_back({arena, numel, shape[d], inner, static_cast<int64_t>(flags.size())});
      for (int64_t i = 0; i < shape[d]; ++i) flags.push_back(rng() % 3 == 0 ? 0 : 1);
    }
    arena += numel + static_cast<int64_t>(rng() % 9);
  };
  for (int p = 0; p < 150; ++p) {
    Shape shape;
    for (int d = 0, rank = 1 + static_cast<int>(rng() % 3); d < rank; ++d) shape.push_back(1 + static_cast<int64_t>(rng() % 70));
    add(shape, 1 + static_cast<int>(rng() % 2));
  }
  add({700003}, 1);
  add({7, 1000, 3}, 2);
  const Tensor keep = Tensor::from_ints(flags, {static_cast<int64_t>(flags.size())});
  const Tensor x = random_host({arena}, dt);
  Tensor on_device = on_gpu(x), expected = x.cast(dt);
  gpu_->zero_deleted(on_device, dims, on_gpu(keep));
  cpu_->zero_deleted(expected, dims, keep);
  expect_bitwise_equal(on_device, expected, std::string("zero_deleted ") + dtype_name(dt));
  // An f32 arena as AdamW's moments are (f32 whatever the compute dtype), every flag zero: all covered
  // elements cleared, the uncovered tail untouched.
  const Tensor moments = random_host({1000}, DType::F32);
  Tensor m = on_gpu(moments);
  gpu_->zero_deleted(m, {{0, 960, 96, 10, 0}}, on_gpu(Tensor::from_ints(std::vector<int32_t>(96, 0), {96})));
  const Tensor back = m.to(Device::cpu());
  for (int64_t i = 0; i < 1000; ++i)
    ASSERT_EQ(back.item(i), i < 960 ? 0.0 : moments.item(i)) << "zero_deleted, every flag zero, element " << i;
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
  const std::vector<DimensionMask> dims{{0, 32, 8, 1, 0}};
  const Tensor host_keep = Tensor::from_ints(std::vector<int32_t>(8, 1), {8});
  EXPECT_THROW(gpu_->zero_deleted(a, dims, host_keep), Error);  // the flags must be on the device
  EXPECT_THROW(gpu_->zero_deleted(a, dims, on_gpu(Tensor::from_ints(std::vector<int32_t>(7, 1), {7}))), Error);
  EXPECT_THROW(gpu_->zero_deleted(a, {{1, 32, 8, 1, 0}}, on_gpu(host_keep)), Error);  // past the end of a
}

}  // namespace
}  // namespace loom::testing_cuda
