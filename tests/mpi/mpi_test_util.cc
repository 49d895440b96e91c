#include "tests/mpi/mpi_test_util.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "core/rng.h"

namespace loom::testing {

MpiCommunicator& test_world() {
  static std::unique_ptr<MpiCommunicator> world = MpiCommunicator::world();
  return *world;
}

uint64_t shared_seed(MpiCommunicator& comm) {
  uint64_t seed = 0;
  if (comm.rank() == 0) seed = (static_cast<uint64_t>(std::random_device{}()) << 32) | std::random_device{}();
  comm.broadcast_bytes(&seed, sizeof(seed), 0);
  return seed;
}

std::vector<double> rank_values(uint64_t seed, int rank, int64_t n) {
  // The stream id mixes rank and n so inputs of different sizes in one test are unrelated.
  PhiloxStream stream(seed, (static_cast<uint64_t>(rank) << 32) ^ static_cast<uint64_t>(n));
  std::vector<double> values(n);
  for (double& v : values) v = 2.0 * stream.uniform() - 1.0;
  return values;
}

Tensor tensor_of(const std::vector<double>& values, DType dtype) {
  Tensor t = Tensor::empty({static_cast<int64_t>(values.size())}, dtype);
  for (size_t i = 0; i < values.size(); ++i) {
    if (dtype == DType::F32)
      t.data<float>()[i] = static_cast<float>(values[i]);
    else
      t.data<double>()[i] = values[i];
  }
  return t;
}

Tensor poisoned(int64_t n, DType dtype) {
  Tensor t = Tensor::empty({n}, dtype);
  t.fill_(std::nan(""));
  return t;
}

double tolerance(DType dtype) { return dtype == DType::F32 ? 1e-5 : 1e-12; }

void expect_values(const Tensor& actual, const std::vector<double>& expected, const std::string& what) {
  ASSERT_EQ(actual.numel(), static_cast<int64_t>(expected.size())) << what;
  int64_t mismatches = 0;
  for (int64_t i = 0; i < actual.numel(); ++i) {
    const double a = actual.item(i);
    if (std::abs(a - expected[i]) <= tolerance(actual.dtype())) continue;  // NaN fails here too
    if (++mismatches <= 3)
      ADD_FAILURE() << what << ": element " << i << " of " << actual.numel() << " is " << a << ", expected "
                    << expected[i];
  }
  EXPECT_EQ(mismatches, 0) << what << ": " << mismatches << " wrong elements";
}

}  // namespace loom::testing
