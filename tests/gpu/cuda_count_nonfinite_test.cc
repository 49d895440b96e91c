// CUDA count_nonfinite (kernels/cuda/cuda_finite.cu) against its CPU twin (kernels/cpu/cpu_finite.cc): NaN,
// +Inf and -Inf planted at random and ragged positions (ends included) of tensors of ragged sizes, in f32,
// bf16 and f16, alone and mixed in one call, and a list longer than one grid's y dimension.
#include <limits>
#include <set>

#include "tests/gpu/cuda_backend_test_util.h"

namespace loom::testing_cuda {
namespace {

class CudaCountNonfiniteTest : public CudaBackendTest, public ::testing::WithParamInterface<DType> {
 protected:
  // A random host tensor of `dtype` with NaN / ±Inf at `bad` random positions plus both ends, and the
  // format's largest finite value and smallest subnormal elsewhere (which must count as finite).
  Tensor with_bad_values(int64_t n, DType dtype, int64_t bad, int64_t* planted) {
    Tensor t = random_host({n}, dtype, -100.f, 100.f);
    if (n == 0) return t;
    std::set<int64_t> positions = {0, n - 1};
    std::uniform_int_distribution<int64_t> pick(0, n - 1);
    while (static_cast<int64_t>(positions.size()) < std::min(n, bad + 2)) positions.insert(pick(rng_));
    const double specials[3] = {std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity(),
                                -std::numeric_limits<double>::infinity()};
    int k = 0;
    for (const int64_t i : positions) t.slice_flat(i, {1}).fill_(specials[k++ % 3]);
    *planted += static_cast<int64_t>(positions.size());
    const double largest = dtype == DType::F16 ? 65504.0 : dtype == DType::BF16 ? 3.3895313892515355e38 : 3.4028234663852886e38;
    for (int64_t i = 1; i + 1 < n && i < 64; i += 7)
      if (!positions.count(i)) t.slice_flat(i, {1}).fill_(i % 2 ? largest : -largest);
    if (n > 3 && !positions.count(2)) t.slice_flat(2, {1}).fill_(dtype == DType::F16 ? 6e-8 : 1e-40);
    return t;
  }
};

TEST_P(CudaCountNonfiniteTest, MatchesTheCpuTwinOnRaggedTensors) {
  const DType dtype = GetParam();
  std::vector<Tensor> host, device;
  int64_t planted = 0;
  for (const int64_t n : {int64_t{0}, int64_t{1}, int64_t{31}, int64_t{257}, int64_t{65537}, int64_t{1000003}}) {
    host.push_back(with_bad_values(n, dtype, n / 1000 + 3, &planted));
    device.push_back(on_gpu(host.back()));
  }
  EXPECT_EQ(cpu_->count_nonfinite(host), planted);
  EXPECT_EQ(gpu_->count_nonfinite(device), planted);
  for (size_t i = 0; i < host.size(); ++i)
    EXPECT_EQ(gpu_->count_nonfinite({device[i]}), cpu_->count_nonfinite({host[i]})) << "tensor " << i;
  EXPECT_EQ(gpu_->count_nonfinite({}), 0);
  EXPECT_EQ(gpu_->count_nonfinite({on_gpu(random_host({4099}, dtype))}), 0);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, CudaCountNonfiniteTest, ::testing::Values(DType::F32, DType::BF16, DType::F16),
                         dtype_param_name);

TEST_F(CudaBackendTest, CountNonfiniteOverMixedDtypesAndManyTensors) {
  // Mixed dtypes in one call.
  Tensor a = random_host({1001}, DType::F32), b = random_host({513}, DType::BF16), c = random_host({77}, DType::F16);
  a.slice_flat(1000, {1}).fill_(std::numeric_limits<double>::quiet_NaN());
  b.slice_flat(0, {1}).fill_(std::numeric_limits<double>::infinity());
  c.slice_flat(38, {1}).fill_(-std::numeric_limits<double>::infinity());
  EXPECT_EQ(gpu_->count_nonfinite({on_gpu(a), on_gpu(b), on_gpu(c)}), 3);
  EXPECT_EQ(cpu_->count_nonfinite({a, b, c}), 3);

  // More tensors than gridDim.y (65535) allows in one launch: 70001 views of 3 elements of one buffer.
  const int64_t views = 70001;
  Tensor all = random_host({views * 3}, DType::F32);
  for (int64_t v = 0; v < views; v += 997) all.slice_flat(v * 3 + v % 3, {1}).fill_(std::numeric_limits<double>::quiet_NaN());
  const Tensor on_device = on_gpu(all);
  std::vector<Tensor> list;
  for (int64_t v = 0; v < views; ++v) list.push_back(on_device.slice_flat(v * 3, {3}));
  EXPECT_EQ(gpu_->count_nonfinite(list), cpu_->count_nonfinite({all}));
  EXPECT_EQ(gpu_->count_nonfinite(list), (views + 996) / 997);

  // A tensor on the wrong device, or of an integer dtype, is an error naming the op.
  EXPECT_THROW(gpu_->count_nonfinite({a}), Error);
  EXPECT_THROW(gpu_->count_nonfinite({on_gpu(Tensor::from_ints({1, 2}, {2}))}), Error);
}

}  // namespace
}  // namespace loom::testing_cuda
