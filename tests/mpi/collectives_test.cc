// Collectives of MpiCommunicator on f32 and f64 with ragged sizes, each checked on every rank against a
// float64 reference computed locally from every rank's inputs (rank_values is a pure function of the seed).
#include <gtest/gtest.h>

#include <tuple>

#include "tests/mpi/mpi_test_util.h"

namespace loom::testing {
namespace {

// Element-wise sum over ranks of rank_values(seed, r, n), divided by `divisor`.
std::vector<double> reference_sum(uint64_t seed, int size, int64_t n, double divisor = 1) {
  std::vector<double> sum(n, 0.0);
  for (int r = 0; r < size; ++r) {
    const std::vector<double> v = rank_values(seed, r, n);
    for (int64_t i = 0; i < n; ++i) sum[i] += v[i];
  }
  for (double& s : sum) s /= divisor;
  return sum;
}

std::vector<double> chunk(const std::vector<double>& v, int64_t index, int64_t n) {
  return {v.begin() + index * n, v.begin() + (index + 1) * n};
}

class Collectives : public ::testing::TestWithParam<std::tuple<DType, int64_t>> {
 protected:
  MpiCommunicator& comm = test_world();
  const DType dtype = std::get<0>(GetParam());
  const int64_t n = std::get<1>(GetParam());
  const uint64_t seed = shared_seed(comm);
  const int rank = comm.rank(), size = comm.size();
};

TEST_P(Collectives, AllReduceSumInPlace) {
  Tensor x = tensor_of(rank_values(seed, rank, n), dtype);
  comm.all_reduce(x);
  expect_values(x, reference_sum(seed, size, n), "in-place sum");
}

TEST_P(Collectives, AllReduceAverageOutOfPlace) {
  const Tensor in = tensor_of(rank_values(seed, rank, n), dtype);
  Tensor out = poisoned(n, dtype);
  comm.all_reduce(out, in, ReduceOp::Average);
  expect_values(out, reference_sum(seed, size, n, size), "average");
  expect_values(in, rank_values(seed, rank, n), "input left unchanged");
}

TEST_P(Collectives, ReduceScatterGivesRankItsChunk) {
  const Tensor in = tensor_of(rank_values(seed, rank, size * n), dtype);
  Tensor sum = poisoned(n, dtype), average = poisoned(n, dtype);
  comm.reduce_scatter(sum, in);
  comm.reduce_scatter(average, in, ReduceOp::Average);
  expect_values(sum, chunk(reference_sum(seed, size, size * n), rank, n), "sum chunk");
  expect_values(average, chunk(reference_sum(seed, size, size * n, size), rank, n), "average chunk");
}

TEST_P(Collectives, AllGatherConcatenatesInRankOrder) {
  const Tensor in = tensor_of(rank_values(seed, rank, n), dtype);
  Tensor out = poisoned(size * n, dtype);
  comm.all_gather(out, in);
  for (int r = 0; r < size; ++r)
    expect_values(out.slice_flat(r * n, {n}), rank_values(seed, r, n), "chunk from rank " + std::to_string(r));
}

TEST_P(Collectives, AllGatherInPlaceFromOwnChunk) {
  Tensor out = poisoned(size * n, dtype);
  Tensor own = out.slice_flat(rank * n, {n});
  own.copy_from(tensor_of(rank_values(seed, rank, n), dtype));
  comm.all_gather(out, own);
  for (int r = 0; r < size; ++r)
    expect_values(out.slice_flat(r * n, {n}), rank_values(seed, r, n), "chunk from rank " + std::to_string(r));
}

TEST_P(Collectives, BroadcastFromEveryRoot) {
  // The last root is non-zero for any size > 1.
  for (int root = 0; root < size; ++root) {
    Tensor x = rank == root ? tensor_of(rank_values(seed, root, n), dtype) : poisoned(n, dtype);
    comm.broadcast(x, root);
    expect_values(x, rank_values(seed, root, n), "broadcast from root " + std::to_string(root));
  }
}

TEST_P(Collectives, SendRecvAroundTheRing) {
  // Rank 0 sends first and everyone else receives first, so blocking sends never wait on each other.
  const int next = (rank + 1) % size, previous = (rank + size - 1) % size;
  const Tensor mine = tensor_of(rank_values(seed, rank, n), dtype);
  Tensor received = poisoned(n, dtype);
  if (rank == 0) comm.send(mine, next);
  comm.recv(received, previous);
  if (rank != 0) comm.send(mine, next);
  expect_values(received, rank_values(seed, previous, n), "message from rank " + std::to_string(previous));
}

TEST_P(Collectives, StartedOpsCompleteInOrder) {
  // Three buckets in flight at once, as in a gradient all-reduce overlapped with the backward.
  std::vector<Tensor> buckets;
  std::vector<std::unique_ptr<CommRequest>> requests;
  for (int b = 0; b < 3; ++b) {
    buckets.push_back(tensor_of(rank_values(seed + b, rank, n), dtype));
    requests.push_back(comm.start_all_reduce(buckets.back(), b == 1 ? ReduceOp::Average : ReduceOp::Sum));
  }
  const Tensor scatter_in = tensor_of(rank_values(seed, rank, size * n), dtype);
  Tensor scattered = poisoned(n, dtype);
  auto scatter = comm.start_reduce_scatter(scattered, scatter_in, ReduceOp::Average);
  const Tensor gather_in = tensor_of(rank_values(seed, rank, n), dtype);
  Tensor gathered = poisoned(size * n, dtype);
  auto gather = comm.start_all_gather(gathered, gather_in);

  while (!requests[0]->test()) {
  }
  for (auto& r : requests) r->wait();
  scatter->wait();
  gather->wait();
  gather->wait();  // a second wait returns at once
  EXPECT_TRUE(gather->test());
  for (int b = 0; b < 3; ++b)
    expect_values(buckets[b], reference_sum(seed + b, size, n, b == 1 ? size : 1), "bucket " + std::to_string(b));
  expect_values(scattered, chunk(reference_sum(seed, size, size * n, size), rank, n), "started reduce_scatter");
  for (int r = 0; r < size; ++r)
    expect_values(gathered.slice_flat(r * n, {n}), rank_values(seed, r, n), "started all_gather chunk");
}

std::string param_name(const ::testing::TestParamInfo<std::tuple<DType, int64_t>>& info) {
  return std::string(dtype_name(std::get<0>(info.param))) + "_" + std::to_string(std::get<1>(info.param));
}

INSTANTIATE_TEST_SUITE_P(RaggedSizes, Collectives,
                         ::testing::Combine(::testing::Values(DType::F32, DType::F64), ::testing::Values(int64_t{1}, int64_t{7}, int64_t{1001})),
                         param_name);

}  // namespace
}  // namespace loom::testing
