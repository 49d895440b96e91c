// Real jobs under the controller (launch/loom-mpirun, build/loom, the CPU backend): a rank killed with SIGKILL
// or stopped with SIGSTOP mid-run is detected, the gang is killed and restarted from the last complete
// checkpoint, and the final weights equal, bit for bit, those of an uninterrupted run with the same ranks.
#include <gmock/gmock.h>
#include <signal.h>

#include "core/config.h"
#include "tests/controller/controller_testing.h"

namespace loom::testing {
namespace {

using ::testing::HasSubstr;

constexpr int kMaxSteps = 60;
constexpr int kCheckpointEvery = 10;
constexpr int kPauseStep = 25;

class ControllerFaultTest : public ::testing::TestWithParam<int> {
 protected:
  ControllerFaultTest() : ctl(tmp / "jobs") { write_token_data(tmp / "data", 1 << 15, 64, 3); }

  int world_size() const { return GetParam(); }

  // The uninterrupted run: the same config and ranks, started by the launcher without any controller.
  std::string reference_run() {
    return run_without_controller(tmp.path(),
                                  tiny_job_yaml(tmp / "data", tmp / "reference", kMaxSteps, kCheckpointEvery,
                                                world_size()),
                                  world_size(), kMaxSteps, tmp / "reference");
  }

  controller::SubmitJobReply submit() {
    controller::SubmitJobRequest r;
    const std::string yaml = tiny_job_yaml(tmp / "data", tmp / "job", kMaxSteps, kCheckpointEvery, world_size());
    *r.mutable_config() = parse_run_config(yaml, "job.yaml");
    r.set_world_size(world_size());
    controller::SubmitJobReply reply;
    const grpc::Status s = ctl.stub->SubmitJob(ctl.context(ctl.admin_token).get(), r, &reply);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return reply;
  }

  void control(const std::string& job_id, controller::ControlRequest::Action action, int64_t step = 0) {
    control_job(*ctl.stub, ctl.admin_token, job_id, action, step);
  }

  // Pauses the job at kPauseStep (asked right after submit, so the workers get it when they register: the
  // fault surely lands mid-run, after two checkpoints), resumes it and at once sends `signal` to the last rank.
  // Returns the status once the controller has restarted the gang.
  controller::JobStatusReply fault_and_recover(const std::string& job_id, int signal) {
    control(job_id, controller::ControlRequest::PAUSE, kPauseStep);
    // Rank 0 decides for all ranks; its step's metrics reach the controller before its paused heartbeat.
    auto s = ctl.wait_for(job_id, std::chrono::seconds(120),
                          [&](const auto& s) { return s.ranks_size() > 0 && s.ranks(0).paused(); });
    EXPECT_EQ(s.step(), kPauseStep) << job_state_name(s.state()) << "\n" << file_text(s.log_path());
    const pid_t victim = static_cast<pid_t>(s.ranks(s.ranks_size() - 1).pid());
    control(job_id, controller::ControlRequest::RESUME);
    EXPECT_EQ(kill(victim, signal), 0);
    const auto faulted = std::chrono::steady_clock::now();
    s = ctl.wait_for(job_id, std::chrono::seconds(10), [](const auto& s) { return s.restarts() >= 1; });
    EXPECT_EQ(s.restarts(), 1) << "the fault was not detected within 10 s\n" << ctl.log.str();
    EXPECT_LT(std::chrono::steady_clock::now() - faulted, std::chrono::seconds(10));
    // mpirun puts every rank in a process group of its own: the controller's kill reached it all the same.
    EXPECT_FALSE(process_alive(victim)) << "rank pid " << victim << " outlived its gang";
    if (signal == SIGSTOP) kill(victim, SIGKILL);  // not to leave it behind if it did
    return s;
  }

  void run_fault_test(int signal, const std::string& expected_reason) {
    const std::string reference = reference_run();
    ctl.start();
    const auto job = submit();
    auto s = fault_and_recover(job.job_id(), signal);
    EXPECT_FALSE(s.control().paused());
    ASSERT_GE(s.events_size(), 3);
    bool found = false;
    for (const auto& e : s.events())
      if (e.state() == controller::RESTARTING) {
        EXPECT_THAT(e.message(), HasSubstr(expected_reason));
        found = true;
      }
    EXPECT_TRUE(found) << ctl.log.str();
    s = ctl.wait_for(job.job_id(), std::chrono::seconds(120), [](const auto& s) {
      return s.state() == controller::FINISHED || s.state() == controller::FAILED;
    });
    ASSERT_EQ(s.state(), controller::FINISHED) << ctl.log.str() << "\n" << file_text(s.log_path());
    EXPECT_EQ(s.attempt(), 2);
    EXPECT_EQ(s.step(), kMaxSteps);
    // The second attempt resumed from a checkpoint rather than from scratch.
    EXPECT_THAT(file_text(s.log_path()), HasSubstr("resumed")) << file_text(s.log_path());
    expect_same_weights(reference, checkpoint_dir(tmp / "job", kMaxSteps));
  }

  TempDir tmp;
  LocalController ctl;
};

TEST_P(ControllerFaultTest, KilledRankIsRestartedFromTheLastCheckpoint) {
  // mpirun sees the rank die and exits non-zero (the controller may also notice missing heartbeats first).
  run_fault_test(SIGKILL, "attempt 1: ");
}

TEST_P(ControllerFaultTest, HungRankIsDetectedByHeartbeat) {
  run_fault_test(SIGSTOP, "no heartbeat");
}

// Four data-parallel ranks (the acceptance test) and one (mpirun -np 1).
INSTANTIATE_TEST_SUITE_P(Ranks, ControllerFaultTest, ::testing::Values(4, 1));

}  // namespace
}  // namespace loom::testing
