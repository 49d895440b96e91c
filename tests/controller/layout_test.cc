// Where the controller places an attempt (launch/job_supervisor_layout.h): the controller's hostfile, and the
// layout an elastic restart takes on the hosts that answered (the global batch kept).
#include <gmock/gmock.h>

#include "launch/job_supervisor_layout.h"
#include "tests/controller/controller_testing.h"

namespace loom::testing {
namespace {

using ::testing::HasSubstr;

controller::HostSlots host(const std::string& name, int slots) {
  controller::HostSlots h;
  h.set_name(name);
  h.set_slots(slots);
  return h;
}

controller::JobLayout layout(int data, int tensor, int accum) {
  controller::JobLayout l;
  l.set_data(data);
  l.set_tensor(tensor);
  l.set_grad_accum_steps(accum);
  return l;
}

std::vector<std::string> names(const controller::JobLayout& l) {
  std::vector<std::string> out;
  for (const auto& h : l.hosts()) out.push_back(h.name());
  return out;
}

TEST(ControllerLayoutTest, AllHostsUpKeepTheSubmittedLayoutOnTheHostsItNeeds) {
  const auto l = fit_layout(layout(4, 1, 1), 2, {host("a", 2), host("b", 2), host("c", 2)});
  ASSERT_TRUE(l);
  EXPECT_EQ(l->data(), 4);
  EXPECT_EQ(l->grad_accum_steps(), 1);
  EXPECT_THAT(names(*l), ::testing::ElementsAre("a", "b"));
  EXPECT_TRUE(layout_overrides(layout(4, 1, 1), *l).empty());
}

TEST(ControllerLayoutTest, ShrinkingRaisesAccumulationToKeepTheGlobalBatch) {
  const auto l = fit_layout(layout(4, 1, 1), 2, {host("b", 2)});
  ASSERT_TRUE(l);
  EXPECT_EQ(l->data(), 2);
  EXPECT_EQ(l->grad_accum_steps(), 2);
  EXPECT_THAT(names(*l), ::testing::ElementsAre("b"));
  EXPECT_THAT(layout_overrides(layout(4, 1, 1), *l),
              ::testing::ElementsAre("parallel.data=2", "train.grad_accum_steps=2"));
  EXPECT_EQ(describe_layout(*l), "2 data x 1 tensor ranks, grad_accum_steps 2 on b (2 slots)");
}

TEST(ControllerLayoutTest, OnlySizesThatDivideTheGlobalBatchAreTaken) {
  // 3 slots: 3 data ranks would split 4 micro-batches unevenly, so 2 it is.
  auto l = fit_layout(layout(4, 1, 1), 1, {host("a", 3)});
  ASSERT_TRUE(l);
  EXPECT_EQ(l->data(), 2);
  EXPECT_EQ(l->grad_accum_steps(), 2);
  // With accumulation already there: data 4 x accum 3 = 12 micro-batches; 3 data ranks take 4 each.
  l = fit_layout(layout(4, 1, 3), 1, {host("a", 3)});
  ASSERT_TRUE(l);
  EXPECT_EQ(l->data(), 3);
  EXPECT_EQ(l->grad_accum_steps(), 4);
  // Tensor parallelism stays: each data rank needs `tensor` slots.
  l = fit_layout(layout(2, 2, 1), 1, {host("a", 2), host("b", 1)});
  ASSERT_TRUE(l);
  EXPECT_EQ(l->data(), 1);
  EXPECT_EQ(l->tensor(), 2);
  EXPECT_EQ(l->grad_accum_steps(), 2);
  EXPECT_THAT(names(*l), ::testing::ElementsAre("a"));
}

TEST(ControllerLayoutTest, NothingFitsBelowMinData) {
  EXPECT_FALSE(fit_layout(layout(4, 1, 1), 2, {host("a", 1)}));
  EXPECT_FALSE(fit_layout(layout(4, 1, 1), 4, {host("a", 2), host("b", 1)}));
  EXPECT_FALSE(fit_layout(layout(4, 1, 1), 1, {}));
}

TEST(ControllerLayoutTest, HostfilesAreReadStrictly) {
  TempDir tmp;
  const std::string path = tmp / "hosts.txt";
  write_text_file(path, "# the cluster\nnode01 slots=4\n\nnode02 slots=2 max_slots=2  # small one\n");
  const auto hosts = read_hostfile(path);
  ASSERT_EQ(hosts.size(), 2u);
  EXPECT_EQ(hosts[0].name(), "node01");
  EXPECT_EQ(hosts[0].slots(), 4);
  EXPECT_EQ(hosts[1].name(), "node02");
  EXPECT_EQ(hosts[1].slots(), 2);
  write_hostfile(tmp / "copy.txt", hosts);
  EXPECT_EQ(file_text(tmp / "copy.txt"), "node01 slots=4\nnode02 slots=2\n");

  const std::vector<std::pair<std::string, std::string>> bad = {
      {"node01\n", ":1: host node01 has no slots=N"},
      {"node01 slots=0\n", ":1: slots=0 is outside [1, 65536]"},
      {"ok slots=1\nnode;rm slots=2\n", ":2: host name \"node;rm\" must be"},
      {"a slots=1\na slots=2\n", ":2: host a is listed twice"},
      {"a slots=1 cpus=4\n", ":1: \"cpus=4\" is not slots=N"},
      {"# nothing\n", ": the hostfile lists no hosts"},
  };
  for (const auto& [text, message] : bad) {
    write_text_file(path, text);
    try {
      read_hostfile(path);
      ADD_FAILURE() << "accepted: " << text;
    } catch (const Error& e) {
      EXPECT_THAT(e.what(), HasSubstr(path + message)) << text;
    }
  }
  EXPECT_THROW(read_hostfile(tmp / "missing.txt"), Error);
}

}  // namespace
}  // namespace loom::testing
