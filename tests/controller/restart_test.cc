// The durable controller with real jobs: `loom-controller serve` killed with SIGKILL (or stopped with
// --leave-jobs-running) and started again on the same jobs folder takes its jobs up from the journal. A job
// whose attempt still runs is supervised again (its ranks register anew) and finishes in that attempt; one whose attempt failed while no controller ran is
// restarted from its last complete checkpoint. Either way the final weights equal an uninterrupted run's, bit
// for bit, and no attempt runs twice.
#include <gmock/gmock.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include "core/config.h"
#include "tests/controller/controller_testing.h"

extern char** environ;

namespace loom::testing {
namespace {

using ::testing::HasSubstr;

constexpr int kMaxSteps = 40;
constexpr int kCheckpointEvery = 10;
constexpr int kPauseStep = 25;
constexpr int kRanks = 2;

// `loom-controller serve` as a child process on 127.0.0.1 (the port of its first start is kept for the next).
class ControllerProcess {
 public:
  explicit ControllerProcess(std::string jobs_dir) : jobs_dir_(std::move(jobs_dir)) {}
  std::vector<std::string> extra_args;  // more serve options
  ~ControllerProcess() { stop(SIGTERM); }

  void start() {
    const std::string ready = jobs_dir_ + ".ready";
    std::filesystem::remove(ready);
    std::vector<std::string> args = {std::string(LOOM_BINARY_DIR) + "/loom-controller", "serve", "--address",
                                     "127.0.0.1:" + std::to_string(port_), "--jobs-dir", jobs_dir_, "--http-port", "0",
                                     "--ready-file", ready, "--vendor-dir", jobs_dir_ + ".vendor",
                                     "--heartbeat-interval-ms", "200",
                                     "--heartbeat-timeout-ms", "3000", "--register-timeout-ms", "30000"};
    args.insert(args.end(), extra_args.begin(), extra_args.end());
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    std::filesystem::create_directories(jobs_dir_);
    posix_spawn_file_actions_t files;
    posix_spawn_file_actions_init(&files);
    posix_spawn_file_actions_addopen(&files, 2, (jobs_dir_ + ".log").c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    ASSERT_EQ(posix_spawn(&pid_, argv[0], &files, nullptr, argv.data(), environ), 0);
    posix_spawn_file_actions_destroy(&files);
    // No dashboard in these tests: an empty folder stands in for the chart library's.
    std::filesystem::create_directories(jobs_dir_ + ".vendor");
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (!std::filesystem::exists(ready) && std::chrono::steady_clock::now() < deadline) {
      if (waitpid(pid_, nullptr, WNOHANG) == pid_) {  // it exited (and is reaped: never signal that pid)
        pid_ = -1;
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    ASSERT_TRUE(std::filesystem::exists(ready)) << log();
    port_ = std::atoi(file_text(ready).c_str());
    token_ = file_text(jobs_dir_ + "/admin_token");
    token_.erase(token_.find_last_not_of("\n") + 1);
    stub_ = controller::Controller::NewStub(controller_channel("127.0.0.1:" + std::to_string(port_), ""));
  }
  // SIGKILL (a crash: the jobs live on) or SIGTERM (a shutdown: the jobs are killed); reaps the controller.
  void stop(int signal) {
    if (pid_ <= 0) return;
    kill(pid_, signal);
    waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }

  controller::Controller::Stub& stub() { return *stub_; }
  const std::string& token() const { return token_; }
  std::string log() const { return file_text(jobs_dir_ + ".log"); }

  controller::JobStatusReply status(const std::string& job_id) { return job_status(*stub_, token_, job_id); }
  controller::JobStatusReply wait_for(const std::string& job_id, std::chrono::seconds timeout,
                                      const std::function<bool(const controller::JobStatusReply&)>& done) {
    return wait_for_job(*stub_, token_, job_id, timeout, done);
  }
  void control(const std::string& job_id, controller::ControlRequest::Action action, int64_t step = 0) {
    control_job(*stub_, token_, job_id, action, step);
  }

 private:
  std::string jobs_dir_;
  pid_t pid_ = -1;
  int port_ = 0;
  std::string token_;
  std::unique_ptr<controller::Controller::Stub> stub_;
};

class ControllerRestartTest : public ::testing::Test {
 protected:
  ControllerRestartTest() : ctl(tmp / "runs/controller") {
    write_token_data(tmp / "data", 1 << 15, 64, 3);
  }

  // The uninterrupted run: the same config and ranks, started by the launcher without a controller.
  std::string reference_run() {
    const std::string out = tmp / "runs/reference";
    return run_without_controller(tmp.path(), tiny_job_yaml(tmp / "data", out, kMaxSteps, kCheckpointEvery, kRanks),
                                  kRanks, kMaxSteps, out);
  }

  // Submits the job, paused after kPauseStep (asked at once, so the ranks learn it when they register), and
  // waits until rank 0 is paused there: two checkpoints are written, the next is not.
  std::string submit_and_pause() {
    controller::SubmitJobRequest r;
    *r.mutable_config() = parse_run_config(
        tiny_job_yaml(tmp / "data", tmp / "runs/job", kMaxSteps, kCheckpointEvery, kRanks), "job.yaml");
    r.set_world_size(kRanks);
    controller::SubmitJobReply job;
    const grpc::Status s = ctl.stub().SubmitJob(call_context(ctl.token()).get(), r, &job);
    EXPECT_TRUE(s.ok()) << s.error_message();
    ctl.control(job.job_id(), controller::ControlRequest::PAUSE, kPauseStep);
    const auto paused = ctl.wait_for(job.job_id(), std::chrono::seconds(120), [](const auto& s) {
      return s.ranks_size() == kRanks && s.ranks(0).paused();
    });
    EXPECT_EQ(paused.step(), kPauseStep) << ctl.log() << file_text(paused.log_path());
    return job.job_id();
  }

  controller::JobStatusReply finish(const std::string& job_id) {
    ctl.control(job_id, controller::ControlRequest::RESUME);
    return ctl.wait_for(job_id, std::chrono::seconds(120), [](const auto& s) {
      return s.state() == controller::FINISHED || s.state() == controller::FAILED;
    });
  }

  TempDir tmp;
  ControllerProcess ctl;
};

// SIGKILL: a crash. SIGTERM with --leave-jobs-running: a controller stopped on purpose (an upgrade) that
// leaves its jobs to the next one.
class ControllerTakeoverTest : public ControllerRestartTest, public ::testing::WithParamInterface<int> {};

TEST_P(ControllerTakeoverTest, RestartedControllerTakesUpItsRunningJob) {
  const std::string reference = reference_run();
  if (GetParam() == SIGTERM) ctl.extra_args = {"--leave-jobs-running"};
  ASSERT_NO_FATAL_FAILURE(ctl.start());
  const std::string job = submit_and_pause();
  const auto before = ctl.status(job);
  ASSERT_EQ(before.ranks_size(), kRanks) << ctl.log();
  std::vector<pid_t> ranks;
  for (const auto& r : before.ranks()) ranks.push_back(static_cast<pid_t>(r.pid()));

  ctl.stop(GetParam());
  ctl.extra_args.clear();  // the next controller ends the job at the test's end, whatever happens
  for (pid_t p : ranks) EXPECT_TRUE(process_alive(p)) << "rank pid " << p << " died with the controller";
  const std::string admin_token = ctl.token();
  ASSERT_NO_FATAL_FAILURE(ctl.start());
  EXPECT_EQ(ctl.token(), admin_token) << "the generated admin token was not kept";
  auto s = ctl.status(job);
  EXPECT_EQ(s.state(), controller::RUNNING);
  EXPECT_EQ(s.attempt(), 1);
  EXPECT_EQ(s.step(), kPauseStep) << "the metrics history was not read back";
  EXPECT_EQ(s.events_size(), before.events_size() + 1);
  // The ranks learn of the new controller from their next heartbeat and register again, the pause intact.
  s = ctl.wait_for(job, std::chrono::seconds(30), [](const auto& s) { return s.ranks_size() == kRanks; });
  ASSERT_EQ(s.ranks_size(), kRanks) << ctl.log();
  for (int i = 0; i < kRanks; ++i) EXPECT_EQ(s.ranks(i).pid(), ranks[i]);

  s = finish(job);
  ASSERT_EQ(s.state(), controller::FINISHED) << ctl.log() << file_text(s.log_path());
  EXPECT_EQ(s.attempt(), 1);
  EXPECT_EQ(s.restarts(), 0);
  EXPECT_EQ(s.step(), kMaxSteps);
  EXPECT_THAT(s.events(before.events_size()).message(), HasSubstr("controller restarted: took up attempt 1 again"));
  expect_same_weights(reference, checkpoint_dir(tmp / "runs/job", kMaxSteps));
}

INSTANTIATE_TEST_SUITE_P(Stops, ControllerTakeoverTest, ::testing::Values(SIGKILL, SIGTERM),
                         [](const auto& info) { return info.param == SIGKILL ? "Killed" : "LeftJobsRunning"; });

TEST_F(ControllerRestartTest, AttemptThatFailedWhileNoControllerRanRestartsFromItsCheckpoint) {
  const std::string reference = reference_run();
  ASSERT_NO_FATAL_FAILURE(ctl.start());
  const std::string job = submit_and_pause();
  const auto before = ctl.status(job);
  ASSERT_EQ(before.ranks_size(), kRanks) << ctl.log();
  ctl.stop(SIGKILL);
  // With no controller watching, a rank dies: mpirun ends the attempt, its keeper records the exit status.
  ASSERT_EQ(kill(static_cast<pid_t>(before.ranks(kRanks - 1).pid()), SIGKILL), 0);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (!std::filesystem::exists(tmp / ("runs/controller/" + job + "/attempt_1.status")) &&
         std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  ASSERT_TRUE(std::filesystem::exists(tmp / ("runs/controller/" + job + "/attempt_1.status")));

  ASSERT_NO_FATAL_FAILURE(ctl.start());
  auto s = ctl.wait_for(job, std::chrono::seconds(30), [](const auto& s) {
    return s.attempt() == 2 && s.state() == controller::RUNNING;
  });
  ASSERT_EQ(s.attempt(), 2) << ctl.log();
  EXPECT_EQ(s.restarts(), 1);
  EXPECT_EQ(s.last_checkpoint(), checkpoint_dir(tmp / "runs/job", 20));
  bool found = false;
  for (const auto& e : s.events())
    found |= e.state() == controller::RESTARTING &&
             e.message().find("while no controller was running") != std::string::npos;
  EXPECT_TRUE(found) << ctl.log();
  s = finish(job);
  ASSERT_EQ(s.state(), controller::FINISHED) << ctl.log() << file_text(s.log_path());
  EXPECT_EQ(s.attempt(), 2);
  EXPECT_THAT(file_text(s.log_path()), HasSubstr("resumed from " + checkpoint_dir(tmp / "runs/job", 20)));
  expect_same_weights(reference, checkpoint_dir(tmp / "runs/job", kMaxSteps));
}

TEST_F(ControllerRestartTest, ASecondControllerOnTheSameJobsFolderIsRefused) {
  ASSERT_NO_FATAL_FAILURE(ctl.start());
  const std::string cmd = "timeout 20 " + std::string(LOOM_BINARY_DIR) +
                          "/loom-controller serve --address 127.0.0.1:0 --jobs-dir " +
                          (tmp / "runs/controller") + " --http-port 0 > " + (tmp / "second.log") + " 2>&1";
  EXPECT_NE(std::system(cmd.c_str()), 0);
  EXPECT_THAT(file_text(tmp / "second.log"), HasSubstr("another controller serves this folder?"));
}

}  // namespace
}  // namespace loom::testing
