// detect_process_environment: under mpirun (all ranks on this host) and with fake Slurm / broken environments.
#include <gtest/gtest.h>

#include <map>

#include "parallel/environment.h"
#include "tests/mpi/mpi_test_util.h"

namespace loom::testing {
namespace {

ProcessEnvironment detect_from(const std::map<std::string, std::string>& vars) {
  return detect_process_environment([&](const char* name) -> const char* {
    auto it = vars.find(name);
    return it == vars.end() ? nullptr : it->second.c_str();
  });
}

TEST(ProcessEnvironment, MatchesMpirunsWorld) {
  const ProcessEnvironment env = detect_process_environment();
  EXPECT_EQ(env.launcher, "openmpi");
  EXPECT_EQ(env.rank, test_world().rank());
  EXPECT_EQ(env.world_size, test_world().size());
  // ctest starts every rank on this host.
  EXPECT_EQ(env.local_rank, test_world().rank());
  EXPECT_EQ(env.local_size, test_world().size());
}

TEST(ProcessEnvironment, NoLauncherIsASingleProcess) {
  const ProcessEnvironment env = detect_from({{"PATH", "/usr/bin"}});
  EXPECT_EQ(env.launcher, "none");
  EXPECT_EQ(env.rank, 0);
  EXPECT_EQ(env.world_size, 1);
  EXPECT_EQ(env.local_rank, 0);
  EXPECT_EQ(env.local_size, 1);
}

TEST(ProcessEnvironment, SlurmWithCompressedTaskList) {
  // 7 tasks: 2 on each of nodes 0-2, 1 on node 3; task 6 is alone on node 3.
  const ProcessEnvironment env = detect_from({{"SLURM_PROCID", "6"}, {"SLURM_NTASKS", "7"}, {"SLURM_LOCALID", "0"},
                                              {"SLURM_NODEID", "3"}, {"SLURM_TASKS_PER_NODE", "2(x3),1"}});
  EXPECT_EQ(env.launcher, "slurm");
  EXPECT_EQ(env.rank, 6);
  EXPECT_EQ(env.world_size, 7);
  EXPECT_EQ(env.local_rank, 0);
  EXPECT_EQ(env.local_size, 1);
  const ProcessEnvironment second = detect_from({{"SLURM_PROCID", "3"}, {"SLURM_NTASKS", "7"},
                                                 {"SLURM_LOCALID", "1"}, {"SLURM_NODEID", "1"},
                                                 {"SLURM_TASKS_PER_NODE", "2(x3),1"}});
  EXPECT_EQ(second.local_size, 2);
  const ProcessEnvironment uniform = detect_from({{"SLURM_PROCID", "5"}, {"SLURM_NTASKS", "8"},
                                                  {"SLURM_LOCALID", "1"}, {"SLURM_NTASKS_PER_NODE", "4"}});
  EXPECT_EQ(uniform.local_size, 4);
}

TEST(ProcessEnvironment, OpenMpiTakesPrecedenceOverSlurm) {
  const ProcessEnvironment env =
      detect_from({{"OMPI_COMM_WORLD_RANK", "1"}, {"OMPI_COMM_WORLD_SIZE", "2"}, {"OMPI_COMM_WORLD_LOCAL_RANK", "1"},
                   {"OMPI_COMM_WORLD_LOCAL_SIZE", "2"}, {"SLURM_PROCID", "0"}});
  EXPECT_EQ(env.launcher, "openmpi");
  EXPECT_EQ(env.rank, 1);
}

TEST(ProcessEnvironment, BrokenVariablesThrowNamingThem) {
  auto message = [](const std::map<std::string, std::string>& vars) {
    try {
      detect_from(vars);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message({{"OMPI_COMM_WORLD_RANK", "1"}}).find("OMPI_COMM_WORLD_SIZE is unset"), std::string::npos);
  EXPECT_NE(message({{"OMPI_COMM_WORLD_RANK", "x1"}, {"OMPI_COMM_WORLD_SIZE", "2"}}).find(
                "OMPI_COMM_WORLD_RANK=\"x1\" is not an integer"),
            std::string::npos);
  EXPECT_NE(message({{"OMPI_COMM_WORLD_RANK", "2"}, {"OMPI_COMM_WORLD_SIZE", "2"},
                     {"OMPI_COMM_WORLD_LOCAL_RANK", "0"}, {"OMPI_COMM_WORLD_LOCAL_SIZE", "1"}})
                .find("OMPI_COMM_WORLD_RANK=2, OMPI_COMM_WORLD_SIZE=2"),
            std::string::npos);
  EXPECT_NE(message({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "3"}, {"SLURM_LOCALID", "0"}, {"SLURM_NODEID", "2"},
                     {"SLURM_TASKS_PER_NODE", "1(x2)"}})
                .find("lists no node 2"),
            std::string::npos);
  EXPECT_NE(message({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "2"}, {"SLURM_LOCALID", "0"}}).find(
                "SLURM_NTASKS_PER_NODE and SLURM_TASKS_PER_NODE are both unset"),
            std::string::npos);
}

}  // namespace
}  // namespace loom::testing
