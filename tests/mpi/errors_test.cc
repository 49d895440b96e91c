// Error handling: bad arguments throw loom::Error naming the op, rank and size before anything is sent; a
// mismatch between ranks that MPI detects (a message longer or shorter than the receive buffer) throws too,
// and the communicator stays usable afterwards.
#include <gtest/gtest.h>

#include "tests/mpi/mpi_test_util.h"

namespace loom::testing {
namespace {

// Runs `op`, which must throw loom::Error whose message contains every string in `parts`.
template <typename Op>
void expect_error(Op&& op, const std::vector<std::string>& parts) {
  try {
    op();
    ADD_FAILURE() << "no loom::Error thrown; expected one mentioning \"" << parts.front() << "\"";
  } catch (const Error& e) {
    for (const std::string& part : parts)
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << "\"" << part << "\" not in: " << e.what();
  }
}

TEST(CommunicatorErrors, MismatchedSizesThrowBeforeCommunicating) {
  MpiCommunicator& comm = test_world();
  const std::string where = "(rank " + std::to_string(comm.rank()) + " of " + std::to_string(comm.size()) + ")";
  Tensor seven = poisoned(7, DType::F32), eight = poisoned(8, DType::F32);
  Tensor big = poisoned(7 * comm.size() + 1, DType::F32);
  expect_error([&] { comm.all_reduce(seven, eight); }, {"mpi all_reduce", where, "7 elements", "8"});
  expect_error([&] { comm.reduce_scatter(seven, big); }, {"mpi reduce_scatter", where, "expected size * out.numel()"});
  expect_error([&] { comm.all_gather(big, seven); }, {"mpi all_gather", where, "expected size * in.numel()"});
  expect_error([&] { comm.start_reduce_scatter(seven, big); }, {"mpi start_reduce_scatter", where});
  expect_error([&] { comm.start_all_gather(big, seven); }, {"mpi start_all_gather", where});
}

TEST(CommunicatorErrors, BadTensorsRootsAndPeersThrow) {
  MpiCommunicator& comm = test_world();
  Tensor f32 = poisoned(4, DType::F32), f64 = poisoned(4, DType::F64);
  Tensor bf16 = Tensor::zeros({4}, DType::BF16), ints = Tensor::zeros({4}, DType::I32), undefined;
  expect_error([&] { comm.all_reduce(bf16); }, {"mpi all_reduce", "bf16", "f32 and f64 only"});
  expect_error([&] { comm.broadcast(ints, 0); }, {"mpi broadcast", "i32"});
  expect_error([&] { comm.all_reduce(f32, f64); }, {"dtypes must match"});
  expect_error([&] { comm.all_reduce(undefined); }, {"undefined tensor"});
  Tensor overlapping = poisoned(6, DType::F32);
  Tensor head = overlapping.slice_flat(0, {4}), tail = overlapping.slice_flat(2, {4});
  expect_error([&] { comm.all_reduce(head, tail); }, {"partly overlap"});
  expect_error([&] { comm.broadcast(f32, comm.size()); }, {"root " + std::to_string(comm.size()), "not a rank"});
  expect_error([&] { comm.broadcast(f32, -1); }, {"not a rank"});
  expect_error([&] { comm.send(f32, comm.rank()); }, {"mpi send", "this rank itself"});
  expect_error([&] { comm.recv(f32, comm.size()); }, {"mpi recv", "not a rank"});
  int fake_event = 0;
  expect_error([&] { comm.wait_event(&fake_event); }, {"no GPU stream"});
  expect_error([&] { comm.record_event(&fake_event); }, {"no GPU stream"});
  comm.wait_event(nullptr);  // accepted: code written for both backends passes null events on the CPU
  comm.record_event(nullptr);
}

TEST(CommunicatorErrors, MessageOfWrongLengthThrowsOnTheReceiver) {
  MpiCommunicator& comm = test_world();
  // Ranks 0 and 1 only; 8 elements fit MPI's eager protocol, so the sends complete whatever the receiver does.
  if (comm.rank() == 0) {
    comm.send(tensor_of(std::vector<double>(8, 1.0), DType::F32), 1);
    comm.send(tensor_of(std::vector<double>(2, 1.0), DType::F32), 1);
  } else if (comm.rank() == 1) {
    Tensor too_small = poisoned(4, DType::F32), too_large = poisoned(4, DType::F32);
    expect_error([&] { comm.recv(too_small, 0); }, {"mpi recv", "(rank 1 of", "MPI_Recv failed"});
    expect_error([&] { comm.recv(too_large, 0); }, {"mpi recv", "received 2 elements from rank 0 into x of 4"});
  }
  // Still usable afterwards.
  comm.barrier();
  Tensor x = tensor_of({1.0}, DType::F64);
  comm.all_reduce(x);
  EXPECT_EQ(x.item(0), comm.size());
}

TEST(CommunicatorErrors, InitMpiIsSafeToRepeat) {
  init_mpi();
  init_mpi();
  auto second_world = MpiCommunicator::world();
  EXPECT_EQ(second_world->size(), test_world().size());
  EXPECT_EQ(second_world->rank(), test_world().rank());
}

}  // namespace
}  // namespace loom::testing
