// NcclCommunicator on real GPUs. Runs in the gpu suite as a world of one process (skipped without a GPU), and
// under mpirun with one rank per GPU for the multi-GPU check, e.g.
//   mpirun -np 2 build/loom_gpu_tests --gtest_filter='NcclCommunicator*'
// Inputs are small integers, exact in bf16 and f16, so every dtype is compared exactly against a reference
// computed locally from every rank's inputs.
#if LOOM_HAVE_NCCL
#include <gtest/gtest.h>

#include <cuda_runtime.h>

#include <cmath>

#include "kernels/backend.h"
#include "parallel/comm_timeline.h"
#include "parallel/environment.h"
#include "parallel/host_collectives.h"
#include "parallel/nccl_communicator.h"
#include "tests/common/test_util.h"

namespace loom {
namespace {

// Rank r's element i: an integer in [-8, 8], different per rank, dtype-exact.
double input_value(int rank, int64_t i) { return static_cast<double>((i * 5 + rank * 3) % 17) - 8; }

Tensor device_tensor(const std::vector<double>& values, DType dtype, Device device) {
  std::vector<float> f(values.begin(), values.end());
  return Tensor::from_vector(f, {static_cast<int64_t>(f.size())}, dtype).to(device);
}

Tensor device_poisoned(int64_t n, DType dtype, Device device) {
  return device_tensor(std::vector<double>(n, std::nan("")), dtype, device);
}

std::vector<double> host_values(const Tensor& t) {
  const Tensor host = t.to(Device::cpu());
  std::vector<double> v(host.numel());
  for (int64_t i = 0; i < host.numel(); ++i) v[i] = host.item(i);
  return v;
}

class NcclCommunicatorTest : public ::testing::TestWithParam<DType> {
 protected:
  void SetUp() override {
    if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU visible";
    const ProcessEnvironment env = detect_process_environment();
    int gpus = 0;
    ASSERT_EQ(cudaGetDeviceCount(&gpus), cudaSuccess);
    if (gpus < env.local_size) GTEST_SKIP() << env.local_size << " ranks on this host but only " << gpus << " GPUs";
    backend_ = make_backend(Device::cuda(env.local_rank));  // registers the CUDA allocator and copies
    world_ = MpiCommunicator::world();
    comm_ = NcclCommunicator::create(*world_, env.local_rank);
  }

  std::unique_ptr<Backend> backend_;
  std::unique_ptr<MpiCommunicator> world_;
  std::unique_ptr<NcclCommunicator> comm_;
};

TEST_P(NcclCommunicatorTest, CollectivesMatchLocalReference) {
  const DType dtype = GetParam();
  const int rank = comm_->rank(), size = comm_->size();
  const Device gpu = comm_->device();
  const int64_t n = 1001;
  // mine: this rank's n inputs; everyone: all ranks' inputs in rank order (the all-gather's result);
  // sum: their element-wise sum. The reduce-scatter input is this rank's size * n values.
  std::vector<double> mine(n), sum(n, 0.0), everyone(size * n), scatter_mine(size * n);
  for (int64_t i = 0; i < n; ++i) mine[i] = input_value(rank, i);
  for (int64_t j = 0; j < size * n; ++j) scatter_mine[j] = input_value(rank, j);
  for (int r = 0; r < size; ++r)
    for (int64_t i = 0; i < n; ++i) {
      sum[i] += input_value(r, i);
      everyone[r * n + i] = input_value(r, i);
    }

  // Every tensor stays alive until synchronize(), and the communicator's stream waits for the copies that
  // filled them (legacy default stream) — the contract of communicator.h.
  Tensor reduced = device_tensor(mine, dtype, gpu);
  Tensor gathered = device_poisoned(size * n, dtype, gpu);
  Tensor gather_in = device_tensor(mine, dtype, gpu);
  Tensor scattered = device_poisoned(n, dtype, gpu);
  Tensor scatter_in = device_tensor(scatter_mine, dtype, gpu);
  Tensor broadcast = rank == size - 1 ? device_tensor(mine, dtype, gpu) : device_poisoned(n, dtype, gpu);
  comm_->wait_for_stream(nullptr);
  comm_->all_reduce(reduced);
  comm_->all_gather(gathered, gather_in);
  comm_->reduce_scatter(scattered, scatter_in);
  comm_->broadcast(broadcast, size - 1);
  comm_->synchronize();

  EXPECT_EQ(host_values(reduced), sum);
  EXPECT_EQ(host_values(gathered), everyone);
  std::vector<double> scatter_expected(n);
  for (int64_t i = 0; i < n; ++i) {
    double s = 0;
    for (int r = 0; r < size; ++r) s += input_value(r, rank * n + i);
    scatter_expected[i] = s;
  }
  EXPECT_EQ(host_values(scattered), scatter_expected);
  std::vector<double> from_last(n);
  for (int64_t i = 0; i < n; ++i) from_last[i] = input_value(size - 1, i);
  EXPECT_EQ(host_values(broadcast), from_last);
}

TEST_P(NcclCommunicatorTest, StartedAllReduceAfterEventAndSplit) {
  const DType dtype = GetParam();
  const int size = comm_->size();
  cudaEvent_t ready = nullptr, reduced_event = nullptr;
  ASSERT_EQ(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming), cudaSuccess);
  ASSERT_EQ(cudaEventCreateWithFlags(&reduced_event, cudaEventDisableTiming), cudaSuccess);
  Tensor x = device_tensor(std::vector<double>(7, 2.0), dtype, comm_->device());
  ASSERT_EQ(cudaEventRecord(ready, nullptr), cudaSuccess);  // "gradients ready" on the default stream
  comm_->wait_event(ready);
  auto request = comm_->start_all_reduce(x, ReduceOp::Average);
  comm_->record_event(reduced_event);
  request->wait();
  EXPECT_EQ(cudaEventQuery(reduced_event), cudaSuccess);
  EXPECT_EQ(host_values(x), std::vector<double>(7, 2.0));  // the average of equal values

  std::unique_ptr<Communicator> halves = comm_->split(comm_->rank() % 2, comm_->rank());
  EXPECT_EQ(halves->backend_name(), "nccl");
  EXPECT_EQ(halves->size(), (size + 1 - comm_->rank() % 2) / 2);
  Tensor ones = device_tensor(std::vector<double>(3, 1.0), dtype, comm_->device());
  halves->wait_for_stream(nullptr);  // after the copy that filled `ones`
  halves->all_reduce(ones);
  halves->synchronize();
  EXPECT_EQ(host_values(ones), std::vector<double>(3, halves->size()));
  cudaEventDestroy(ready);
  cudaEventDestroy(reduced_event);
}

TEST_P(NcclCommunicatorTest, BadArgumentsThrow) {
  const DType dtype = GetParam();
  Tensor seven = device_poisoned(7, dtype, comm_->device());
  Tensor wrong = device_poisoned(7 * comm_->size() + 1, dtype, comm_->device());
  EXPECT_THROW(comm_->reduce_scatter(seven, wrong), Error);
  EXPECT_THROW(comm_->all_gather(wrong, seven), Error);
  Tensor host = Tensor::zeros({7}, dtype);
  EXPECT_THROW(comm_->all_reduce(host), Error);  // a host tensor on a GPU communicator
  EXPECT_THROW(comm_->wait_event(nullptr), Error);
  EXPECT_THROW(comm_->broadcast(seven, comm_->size()), Error);
  EXPECT_NE(std::getenv("NCCL_NVLS_ENABLE"), nullptr);
}

// The orderings the trainer relies on instead of host synchronisation: work queued on the backend's stream is
// seen by the communicator after wait_for_stream(), and its result by the backend after make_stream_wait().
// Also the host collectives staged through the GPU and the timeline's account of an operation.
TEST_P(NcclCommunicatorTest, StreamOrderingHostCollectivesAndTimeline) {
  const DType dtype = GetParam();
  const int size = comm_->size(), rank = comm_->rank();
  const int64_t n = 1 << 20;
  Tensor x = device_tensor(std::vector<double>(n, 1.0), dtype, comm_->device());
  backend_->synchronize();
  backend_->scale(x, rank + 2);  // queued, not waited for on the host
  CommTimeline timeline(*backend_);
  comm_->wait_for_stream(backend_->native_stream());
  timeline.begin(*comm_);
  comm_->all_reduce(x, ReduceOp::Sum);
  timeline.end(*comm_, /*exposed=*/true);
  comm_->make_stream_wait(backend_->native_stream());
  backend_->scale(x, 0.5);  // after the reduction, on the backend's stream
  double expected = 0;
  for (int r = 0; r < size; ++r) expected += r + 2;
  const std::vector<double> got = host_values(x);
  EXPECT_EQ(got.front(), 0.5 * expected);
  EXPECT_EQ(got.back(), 0.5 * expected);
  const CommTimeline::Totals t = timeline.collect();
  EXPECT_EQ(t.operations, 1);
  EXPECT_GT(t.communication_ms, 0.0);
  EXPECT_EQ(t.exposed_ms, t.communication_ms);

  Tensor values = Tensor::from_vector({1.0f * rank, 2.0f}, {2}, DType::F64);
  all_reduce_host(*comm_, values, ReduceOp::Sum);
  EXPECT_EQ(values.item(0), size * (size - 1) / 2.0);
  EXPECT_EQ(values.item(1), 2.0 * size);
  Tensor flag = Tensor::from_vector({rank == 0 ? 7.f : 0.f}, {1}, DType::F64);
  broadcast_host(*comm_, flag, 0);
  EXPECT_EQ(flag.item(0), 7.0);
  Tensor mine = Tensor::from_vector({1.f * rank}, {1}, DType::F32);
  Tensor all = Tensor::zeros({size}, DType::F32);
  all_gather_host(*comm_, all, mine);
  for (int r = 0; r < size; ++r) EXPECT_EQ(all.item(r), r);
}

TEST(NcclCommunicatorCreate, MissingGpuNamesTheCall) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU visible";
  int gpus = 0;
  ASSERT_EQ(cudaGetDeviceCount(&gpus), cudaSuccess);
  auto world = MpiCommunicator::world();
  const std::string message = testing::error_message([&] { NcclCommunicator::create(*world, gpus); });
  EXPECT_NE(message.find("cudaSetDevice"), std::string::npos) << message;
  EXPECT_NE(message.find("nccl create"), std::string::npos) << message;
  ASSERT_EQ(cudaSetDevice(detect_process_environment().local_rank), cudaSuccess);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, NcclCommunicatorTest, ::testing::Values(DType::F32, DType::BF16, DType::F16),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

}  // namespace
}  // namespace loom
#endif  // LOOM_HAVE_NCCL
