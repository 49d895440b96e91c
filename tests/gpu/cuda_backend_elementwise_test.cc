// CUDA backend against the CPU reference: setup (allocator, copies, name), elementwise ops, GELU, positions
// and embeddings, on ragged sizes with NaN-poisoned outputs, for f32, bf16 and f16.
#include <cstring>

#include "core/allocator.h"
#include "tests/gpu/cuda_backend_test_util.h"

namespace loom::testing_cuda {
namespace {

TEST_F(CudaBackendTest, NameDeviceAllocatorAndCopies) {
  EXPECT_EQ(gpu_->name().rfind("cuda:0 ", 0), 0u) << gpu_->name();
  EXPECT_GT(gpu_->name().size(), std::string("cuda:0 ").size());
  EXPECT_EQ(gpu_->device(), Device::cuda(0));

  Allocator& alloc = allocator_for(Device::cuda(0));
  const size_t before = alloc.bytes_in_use();
  {
    const Tensor host = random_host({7, 33}, DType::F32);
    const Tensor dev = on_gpu(host);
    EXPECT_EQ(alloc.bytes_in_use(), before + host.nbytes());
    Tensor dev2 = Tensor::empty({7, 33}, DType::F32, Device::cuda(0));
    dev2.copy_from(dev);  // device to device
    const Tensor back = dev2.to(Device::cpu());
    EXPECT_EQ(0, std::memcmp(back.raw(), host.raw(), host.nbytes()));
    // A view at an odd element offset copies the right elements.
    const Tensor tail = dev.slice_flat(5, {11}).to(Device::cpu());
    EXPECT_EQ(0, std::memcmp(tail.raw(), host.data<float>() + 5, 11 * sizeof(float)));
  }
  EXPECT_EQ(alloc.bytes_in_use(), before);
  EXPECT_GE(alloc.peak_bytes_in_use(), before + 2 * 7 * 33 * sizeof(float));
  // Zero-byte tensors get a valid block.
  Tensor empty = Tensor::empty({0}, DType::BF16, Device::cuda(0));
  EXPECT_TRUE(empty.defined());
}

class CudaElementwiseTest : public CudaBackendTest, public ::testing::WithParamInterface<DType> {};

TEST_P(CudaElementwiseTest, AddAccumulateScaleZero) {
  const DType dt = GetParam();
  const Shape shape{3, 7, 33};
  const Tensor a = random_host(shape, dt), b = random_host(shape, dt);
  const Tensor ga = on_gpu(a), gb = on_gpu(b);

  Tensor out = poisoned(shape, dt);
  gpu_->add(out, ga, gb);
  Tensor ref = Tensor::empty(shape, DType::F64);
  cpu_->add(ref, as_f64(a), as_f64(b));
  expect_close(out, ref, tolerance(dt), "add");

  Tensor acc = on_gpu(a);
  gpu_->accumulate(acc, gb);
  expect_close(acc, ref, tolerance(dt), "accumulate");

  Tensor aliased = on_gpu(a);
  gpu_->add(aliased, aliased, gb);
  expect_close(aliased, ref, tolerance(dt), "add with out aliasing a");

  Tensor scaled = on_gpu(a);
  gpu_->scale(scaled, -0.37);
  Tensor scaled_ref = as_f64(a);
  cpu_->scale(scaled_ref, -0.37);
  expect_close(scaled, scaled_ref, tolerance(dt), "scale");

  Tensor z = poisoned(shape, dt);
  gpu_->zero(z);
  expect_close(z, Tensor::zeros(shape, DType::F64), 0, "zero");
}

TEST_P(CudaElementwiseTest, ConvertBetweenAllFloatTypes) {
  const DType dt = GetParam();
  const Tensor src = random_host({5, 77}, dt, -300.f, 300.f);
  for (DType to : {DType::F32, DType::BF16, DType::F16}) {
    Tensor dst = poisoned({5, 77}, to);
    gpu_->convert(dst, on_gpu(src));
    // The reference: the host conversion (round to nearest even through f32).
    expect_close(dst, src.cast(to), 0, std::string("convert to ") + dtype_name(to));
  }
}

TEST_P(CudaElementwiseTest, GeluForwardBackwardBothForms) {
  const DType dt = GetParam();
  const Shape shape{7, 129};
  const Tensor x = random_host(shape, dt, -5.f, 5.f), dout = random_host(shape, dt);
  for (GeluKind kind : {GeluKind::Tanh, GeluKind::Erf}) {
    const std::string form = kind == GeluKind::Tanh ? "tanh" : "erf";
    Tensor out = poisoned(shape, dt);
    gpu_->gelu_forward(out, on_gpu(x), kind);
    Tensor ref = Tensor::empty(shape, DType::F64);
    cpu_->gelu_forward(ref, as_f64(x), kind);
    expect_close(out, ref, tolerance(dt), "gelu_forward " + form);

    Tensor dx = poisoned(shape, dt);
    gpu_->gelu_backward(dx, on_gpu(dout), on_gpu(x), kind);
    Tensor dref = Tensor::empty(shape, DType::F64);
    cpu_->gelu_backward(dref, as_f64(dout), as_f64(x), kind);
    expect_close(dx, dref, tolerance(dt), "gelu_backward " + form);

    Tensor inplace = on_gpu(dout);  // dx aliasing dout
    gpu_->gelu_backward(inplace, inplace, on_gpu(x), kind);
    expect_close(inplace, dref, tolerance(dt), "gelu_backward in place " + form);
  }
}

TEST_P(CudaElementwiseTest, PositionsForwardBackward) {
  const DType dt = GetParam();
  const int64_t B = 3, T = 5, P = 9, C = 33;
  const Tensor x = random_host({B, T, C}, dt), pos = random_host({P, C}, dt);
  Tensor gx = on_gpu(x);
  gpu_->add_position_forward(gx, on_gpu(pos));
  Tensor ref = as_f64(x);
  cpu_->add_position_forward(ref, as_f64(pos));
  expect_close(gx, ref, tolerance(dt), "add_position_forward");

  const Tensor dx = random_host({B, T, C}, dt), dpos0 = random_host({P, C}, dt);
  Tensor dpos = on_gpu(dpos0);
  gpu_->add_position_backward(dpos, on_gpu(dx));
  Tensor dref = as_f64(dpos0);
  cpu_->add_position_backward(dref, as_f64(dx));
  expect_close(dpos, dref, tolerance(dt), "add_position_backward (accumulates; rows >= T untouched)");

  // A large batch over few columns: the column sums are split into several parts.
  const Tensor dx_tall = random_host({64, 2, 5}, dt), dpos_small0 = random_host({2, 5}, dt);
  Tensor dpos_small = on_gpu(dpos_small0);
  gpu_->add_position_backward(dpos_small, on_gpu(dx_tall));
  Tensor dref_small = as_f64(dpos_small0);
  cpu_->add_position_backward(dref_small, as_f64(dx_tall));
  expect_close(dpos_small, dref_small, tolerance(dt), "add_position_backward, batch 64");
}

TEST_P(CudaElementwiseTest, CopyTokensWritesAndAccumulates) {
  const DType dt = GetParam();
  const int64_t B = 3, Td = 7, Ts = 5, C = 33;
  const Tensor src = random_host({B, Ts, C}, dt), dst0 = random_host({B, Td, C}, dt);
  for (bool accumulate : {false, true}) {
    Tensor gdst = on_gpu(dst0);
    gpu_->copy_tokens(gdst, 2, on_gpu(src), 1, 4, accumulate);
    Tensor ref = as_f64(dst0);
    cpu_->copy_tokens(ref, 2, as_f64(src), 1, 4, accumulate);
    expect_close(gdst, ref, tolerance(dt), accumulate ? "copy_tokens +=" : "copy_tokens =");
  }
  Tensor gdst = on_gpu(dst0);
  EXPECT_THROW(gpu_->copy_tokens(gdst, 4, on_gpu(src), 0, 4, false), Error);
}

TEST_P(CudaElementwiseTest, EmbeddingForwardBackwardDeterministic) {
  const DType dt = GetParam();
  const int64_t V = 77, C = 33, N = 300;  // many repeated ids
  const Tensor table = random_host({V, C}, dt), dout = random_host({N, C}, dt);
  const Tensor ids = Tensor::from_ints(ints(N, 0, static_cast<int32_t>(V - 1)), {3, 100});

  Tensor out = poisoned({3, 100, C}, dt);
  gpu_->embedding_forward(out, on_gpu(ids), on_gpu(table));
  Tensor ref = Tensor::empty({3, 100, C}, DType::F64);
  cpu_->embedding_forward(ref, ids, as_f64(table));
  expect_close(out, ref, 0, "embedding_forward");

  const Tensor dtable0 = random_host({V, C}, dt);
  Tensor dtable = on_gpu(dtable0), again = on_gpu(dtable0);
  gpu_->embedding_backward(dtable, on_gpu(dout), on_gpu(ids));
  gpu_->embedding_backward(again, on_gpu(dout), on_gpu(ids));
  Tensor dref = as_f64(dtable0);
  cpu_->embedding_backward(dref, as_f64(dout), ids);
  expect_close(dtable, dref, tolerance(dt), "embedding_backward");
  expect_bitwise_equal(dtable, again, "embedding_backward");
}

INSTANTIATE_TEST_SUITE_P(Dtypes, CudaElementwiseTest, ::testing::Values(DType::F32, DType::BF16, DType::F16),
                         dtype_param_name);

TEST_F(CudaBackendTest, BadIdsAreReportedBySynchronize) {
  const Tensor table = on_gpu(random_host({10, 4}, DType::F32));
  Tensor out = poisoned({3, 4}, DType::F32);
  gpu_->embedding_forward(out, on_gpu(Tensor::from_ints({1, 10, 2}, {3})), table);
  EXPECT_THROW(gpu_->synchronize(), Error);
  gpu_->synchronize();  // the flag is cleared once reported

  Tensor logits = on_gpu(random_host({2, 8}, DType::F32));
  Tensor losses = poisoned({2}, DType::F32), none;
  gpu_->cross_entropy(losses, none, logits, on_gpu(Tensor::from_ints({3, 5}, {2})), 5, 1.0, 0.0);
  EXPECT_THROW(gpu_->synchronize(), Error);
}

TEST_F(CudaBackendTest, ShapeAndDtypeMismatchesThrow) {
  Tensor a = on_gpu(random_host({4, 5}, DType::F32));
  Tensor b = on_gpu(random_host({5, 4}, DType::F32));
  Tensor c = on_gpu(random_host({4, 5}, DType::BF16));
  Tensor host = random_host({4, 5}, DType::F32);
  EXPECT_THROW(gpu_->add(a, a, b), Error);
  EXPECT_THROW(gpu_->add(c, c, a), Error);  // an f32 b beside a bf16 stream (the reverse is the f32 residual add)
  EXPECT_THROW(gpu_->accumulate(a, host), Error);
  Tensor w = on_gpu(random_host({3, 4}, DType::F32)), out = poisoned({4, 3}, DType::F32), none;
  EXPECT_THROW(gpu_->matmul_forward(out, a, w, none), Error);
}

}  // namespace
}  // namespace loom::testing_cuda
