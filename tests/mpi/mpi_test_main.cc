// main() for loom_mpi_tests, run under mpirun by ctest (2 and 4 ranks).
//
// Every rank runs every test in the same order (the tests are collective). Rank 0 prints GoogleTest's usual
// report; every rank prints its own failures, tagged with its rank, so a failure on rank 3 is not lost. The
// exit status is the job-wide result (any rank failed -> 1 everywhere), so mpirun and ctest fail if any rank
// fails.
#include <gtest/gtest.h>
#include <mpi.h>

#include <cstdio>
#include <string>

#include "parallel/mpi_communicator.h"

namespace {

class RankFailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  RankFailurePrinter(int rank, int size) : rank_(rank), size_(size) {}

  // The test's name is kept from OnTestStart: UnitTest::current_test_info() would deadlock here, since GoogleTest
  // holds its lock while it reports a result.
  void OnTestStart(const ::testing::TestInfo& test) override {
    test_name_ = std::string(test.test_suite_name()) + "." + test.name();
  }

  void OnTestPartResult(const ::testing::TestPartResult& result) override {
    if (!result.failed()) return;
    std::fprintf(stderr, "[rank %d of %d] FAILED %s at %s:%d\n%s\n", rank_, size_, test_name_.c_str(),
                 result.file_name() ? result.file_name() : "?", result.line_number(), result.message());
    std::fflush(stderr);
  }

 private:
  int rank_, size_;
  std::string test_name_;
};

}  // namespace

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  loom::init_mpi();
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);

  ::testing::TestEventListeners& listeners = ::testing::UnitTest::GetInstance()->listeners();
  if (rank != 0) delete listeners.Release(listeners.default_result_printer());
  listeners.Append(new RankFailurePrinter(rank, size));

  const int local_failed = RUN_ALL_TESTS() != 0 ? 1 : 0;
  int any_failed = 0;
  if (MPI_Allreduce(&local_failed, &any_failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD) != MPI_SUCCESS) any_failed = 1;
  if (rank == 0)
    std::printf("loom_mpi_tests: %s on %d ranks\n", any_failed ? "FAILED on at least one rank" : "passed", size);
  return any_failed;
}
