// Sub-communicators: split() by color and key, and the data × tensor process mesh built on it.
#include <gtest/gtest.h>

#include "parallel/mesh.h"
#include "tests/mpi/mpi_test_util.h"

namespace loom::testing {
namespace {

// The world ranks of `group`'s members in group-rank order, gathered through the group itself.
std::vector<int> member_world_ranks(Communicator& group, int world_rank) {
  Tensor mine = Tensor::empty({1}, DType::F64);
  mine.data<double>()[0] = world_rank;
  Tensor all = poisoned(group.size(), DType::F64);
  group.all_gather(all, mine);
  std::vector<int> ranks;
  for (int64_t i = 0; i < all.numel(); ++i) ranks.push_back(static_cast<int>(all.item(i)));
  return ranks;
}

TEST(Split, ColorGroupsAndKeyOrders) {
  MpiCommunicator& world = test_world();
  const int rank = world.rank(), size = world.size();
  // Even and odd ranks, each group in descending world rank (key = -rank).
  std::unique_ptr<Communicator> group = world.split(rank % 2, -rank);
  std::vector<int> expected;
  for (int r = size - 1; r >= 0; --r)
    if (r % 2 == rank % 2) expected.push_back(r);
  EXPECT_EQ(group->size(), static_cast<int>(expected.size()));
  EXPECT_EQ(member_world_ranks(*group, rank), expected);
  EXPECT_EQ(group->backend_name(), "mpi");

  // A collective in the sub-group touches only its members: sum of world ranks of the same parity.
  Tensor x = Tensor::empty({1}, DType::F32);
  x.data<float>()[0] = static_cast<float>(rank);
  group->all_reduce(x);
  double expected_sum = 0;
  for (int r : expected) expected_sum += r;
  EXPECT_EQ(x.item(0), expected_sum);
}

TEST(Split, SubGroupOutlivesParentAndSplitsAgain) {
  std::unique_ptr<Communicator> copy = test_world().split(0, test_world().rank());
  std::unique_ptr<Communicator> singles = copy->split(copy->rank(), 0);
  copy.reset();
  EXPECT_EQ(singles->size(), 1);
  EXPECT_EQ(singles->rank(), 0);
  Tensor x = tensor_of({1.5, -2.0}, DType::F64);
  singles->all_reduce(x, ReduceOp::Average);  // a group of one leaves x as it is
  expect_values(x, {1.5, -2.0}, "all_reduce on a group of one");
}

TEST(Split, NegativeColorThrows) { EXPECT_THROW(test_world().split(-1, 0), Error); }

// data = size / 2, tensor = 2: 1 × 2 on two ranks, the 2 × 2 mesh on four.
TEST(ProcessMesh, DataByTensorGroups) {
  MpiCommunicator& world = test_world();
  const int rank = world.rank(), tensor = 2, data = world.size() / tensor;
  ProcessMesh mesh(world, data, tensor);
  EXPECT_EQ(mesh.data_size(), data);
  EXPECT_EQ(mesh.tensor_size(), tensor);
  EXPECT_EQ(mesh.data_index(), rank / tensor);
  EXPECT_EQ(mesh.tensor_index(), rank % tensor);
  EXPECT_EQ(&mesh.world(), &world);
  EXPECT_EQ(mesh.tensor_group().rank(), mesh.tensor_index());
  EXPECT_EQ(mesh.data_group().rank(), mesh.data_index());

  // Tensor group: consecutive ranks; data group: ranks `tensor` apart.
  std::vector<int> tensor_members, data_members;
  for (int t = 0; t < tensor; ++t) tensor_members.push_back(mesh.data_index() * tensor + t);
  for (int d = 0; d < data; ++d) data_members.push_back(d * tensor + mesh.tensor_index());
  EXPECT_EQ(member_world_ranks(mesh.tensor_group(), rank), tensor_members);
  EXPECT_EQ(member_world_ranks(mesh.data_group(), rank), data_members);
}

TEST(ProcessMesh, PureDataParallel) {
  MpiCommunicator& world = test_world();
  ProcessMesh mesh(world, world.size(), 1);
  EXPECT_EQ(mesh.data_group().size(), world.size());
  EXPECT_EQ(mesh.tensor_group().size(), 1);
  EXPECT_EQ(mesh.data_index(), world.rank());
  EXPECT_EQ(mesh.tensor_index(), 0);
}

TEST(ProcessMesh, SizesThatDoNotCoverTheWorldThrow) {
  MpiCommunicator& world = test_world();
  try {
    ProcessMesh mesh(world, world.size() + 1, 1);
    ADD_FAILURE() << "a mesh larger than the world was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("parallel.data × parallel.tensor"), std::string::npos) << e.what();
  }
  EXPECT_THROW(ProcessMesh(world, 0, world.size()), Error);
  EXPECT_THROW(ProcessMesh(world, world.size(), -1), Error);
}

}  // namespace
}  // namespace loom::testing
