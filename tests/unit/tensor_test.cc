#include <gtest/gtest.h>

#include <cmath>

#include "core/tensor.h"

namespace loom {
namespace {

TEST(Tensor, ViewsShareStorage) {
  Tensor t = Tensor::from_vector({1, 2, 3, 4, 5, 6}, {2, 3});
  Tensor row = t.narrow0(1, 2);
  EXPECT_EQ(row.shape(), (Shape{1, 3}));
  row.data<float>()[0] = 40;
  EXPECT_EQ(t.item(3), 40);
  Tensor flat = t.view({-1});
  EXPECT_EQ(flat.dim(0), 6);
  EXPECT_THROW(t.view({4, 2}), Error);
  EXPECT_THROW(t.slice_flat(4, {3}), Error);
}

// Empty tensors from empty vectors (what a mask without deletions holds); the sanitizer build checks that no
// null pointer reaches memcpy.
TEST(Tensor, EmptyVectorsMakeEmptyTensors) {
  const Tensor ints = Tensor::from_ints({}, {0}), floats = Tensor::from_vector({}, {0}, DType::BF16);
  EXPECT_EQ(ints.numel(), 0);
  EXPECT_EQ(ints.dtype(), DType::I32);
  EXPECT_EQ(floats.numel(), 0);
  EXPECT_EQ(floats.dtype(), DType::BF16);
  EXPECT_THROW(Tensor::from_ints({}, {1}), Error);
}

TEST(Tensor, WrongElementTypeThrows) {
  Tensor t = Tensor::zeros({3}, DType::F32);
  EXPECT_THROW(t.data<double>(), Error);
  EXPECT_THROW(Tensor().raw(), Error);
}

TEST(Tensor, HalfPrecisionRoundTrips) {
  const std::vector<float> values = {0.f, 1.f, -2.5f, 3.14159f, 65504.f, 1e-6f, -1e-3f};
  Tensor f = Tensor::from_vector(values, {7});
  for (DType t : {DType::BF16, DType::F16}) {
    Tensor back = f.cast(t).cast(DType::F32);
    for (size_t i = 0; i < values.size(); ++i) {
      const double tol = (t == DType::BF16 ? 1.0 / 128 : 1.0 / 1024) * std::fabs(values[i]) + 1e-7;
      EXPECT_NEAR(back.item(i), values[i], tol) << dtype_name(t) << " element " << i;
    }
  }
  EXPECT_TRUE(std::isinf(f16_to_float(float_to_f16(1e6f))));
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(NAN))));
}

}  // namespace
}  // namespace loom
