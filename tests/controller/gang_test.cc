// The controller signals only the processes it started: the session it spawned the launcher in. Pids that
// come in Register requests are checked and shown, never signalled (launch/process_gang.h).
#include <gmock/gmock.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/config.h"
#include "launch/process_gang.h"
#include "tests/controller/controller_testing.h"

extern char** environ;

namespace loom::testing {
namespace {

using ::testing::HasSubstr;

std::string host_name() {
  char name[256] = {};
  gethostname(name, sizeof name - 1);
  return name;
}

// A `sleep 300` child of the test, in a process group of its own (like a process of another user's shell).
class Bystander {
 public:
  Bystander() {
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    posix_spawnattr_setpgroup(&attr, 0);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP);
    char sleep_path[] = "/bin/sleep", seconds[] = "300";
    char* argv[] = {sleep_path, seconds, nullptr};
    EXPECT_EQ(posix_spawn(&pid, argv[0], nullptr, &attr, argv, environ), 0);
    posix_spawnattr_destroy(&attr);
  }
  ~Bystander() {
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
  }
  // Still running: not signalled (waitpid would have collected its death).
  bool running() const { return waitpid(pid, nullptr, WNOHANG) == 0; }
  pid_t pid = -1;
};

class ControllerGangTest : public ::testing::Test {
 protected:
  ControllerGangTest() : ctl(tmp / "jobs") {
    ctl.options.heartbeat_timeout_ms = 60000;
    write_token_data(tmp / "data", 4096, 64, 1);
  }

  void set_launcher(const std::string& body) {
    const std::string path = tmp / "launcher.sh";
    write_text_file(path, "#!/bin/sh\n" + body + "\n");
    chmod(path.c_str(), 0755);
    ctl.options.launcher = path;
  }

  controller::SubmitJobReply submit(int world_size, int max_restarts = 0) {
    controller::SubmitJobRequest r;
    *r.mutable_config() = parse_run_config(tiny_job_yaml(tmp / "data", tmp / "out", 20, 10), "test.yaml");
    r.mutable_config()->mutable_parallel()->set_data(world_size);
    r.set_world_size(world_size);
    r.set_max_restarts(max_restarts);
    controller::SubmitJobReply reply;
    const grpc::Status s = ctl.stub->SubmitJob(ctl.context(ctl.admin_token).get(), r, &reply);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return reply;
  }

  grpc::Status register_pid(const controller::SubmitJobReply& job, int rank, int world_size, int64_t pid,
                            const std::string& host) {
    controller::RegisterRequest r;
    r.set_job_id(job.job_id());
    r.set_attempt(1);
    r.set_rank(rank);
    r.set_world_size(world_size);
    r.set_host(host);
    r.set_pid(pid);
    r.set_device("cpu");
    controller::RegisterReply reply;
    return ctl.stub->Register(ctl.context(job.token()).get(), r, &reply);
  }

  // The pid a stand-in launcher wrote to `name` (waits for the file).
  pid_t pid_from_file(const std::string& name) {
    const std::string path = tmp / name;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (!std::filesystem::exists(path) && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    EXPECT_TRUE(std::filesystem::exists(path)) << path;
    return static_cast<pid_t>(std::atol(file_text(path).c_str()));
  }

  controller::JobStatusReply wait_until_over(const std::string& job_id) {
    return ctl.wait_for(job_id, std::chrono::seconds(30), [](const auto& s) {
      return s.state() == controller::FAILED || s.state() == controller::FINISHED;
    });
  }

  TempDir tmp;
  LocalController ctl;
};

TEST_F(ControllerGangTest, RegisteredPidsOutsideTheGangAreRefusedAndNeverSignalled) {
  Bystander truncated, group, unrelated, elsewhere;
  ASSERT_TRUE(truncated.running() && group.running() && unrelated.running() && elsewhere.running());
  // The attempt fails (registered ranks send no heartbeat, or not every rank registers): the gang is killed.
  ctl.options.heartbeat_interval_ms = 50;
  ctl.options.heartbeat_timeout_ms = 500;
  ctl.options.register_timeout_ms = 1000;
  set_launcher("exec sleep 60");
  ctl.start();
  const auto job = submit(4);
  const std::string here = host_name();
  const int64_t two32 = int64_t{1} << 32;
  // pid_t is 32 bits: P + 2^32 would be P, 2^32 - G would be the process group G.
  const grpc::Status wide = register_pid(job, 0, 4, truncated.pid + two32, here);
  EXPECT_EQ(wide.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << wide.error_message();
  EXPECT_THAT(wide.error_message(), HasSubstr("pid"));
  EXPECT_EQ(register_pid(job, 1, 4, two32 - group.pid, here).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(register_pid(job, 2, 4, -1, here).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(register_pid(job, 2, 4, 0, here).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  // A real process of this host that the launcher did not start.
  const grpc::Status foreign = register_pid(job, 2, 4, unrelated.pid, here);
  EXPECT_EQ(foreign.error_code(), grpc::StatusCode::PERMISSION_DENIED) << foreign.error_message();
  // On another host the pid cannot be checked: it is kept, for the status only.
  ASSERT_TRUE(register_pid(job, 3, 4, elsewhere.pid, "some-other-host").ok());
  const auto s = wait_until_over(job.job_id());
  ASSERT_EQ(s.state(), controller::FAILED) << ctl.log.str();
  EXPECT_TRUE(truncated.running());
  EXPECT_TRUE(group.running());
  EXPECT_TRUE(unrelated.running());
  EXPECT_TRUE(elsewhere.running());
}

// The stand-in launchers start a child that moves to a process group of its own (as mpirun does with each
// rank), then writes its pid to $DIR/child.pid; the launcher goes on once the file is there.
constexpr char kEscapedChild[] =
    "perl -e 'setpgrp(0, 0); open(my $f, \">\", \"$ARGV[0].tmp\") or die; print $f $$; close $f; "
    "rename(\"$ARGV[0].tmp\", $ARGV[0]) or die; shift; exec @ARGV' \"$DIR/child.pid\" sleep 300 &\n"
    "while [ ! -e \"$DIR/child.pid\" ]; do sleep 0.05; done";

TEST_F(ControllerGangTest, GangKillReachesRanksInTheirOwnProcessGroups) {
  ctl.options.heartbeat_interval_ms = 50;
  ctl.options.heartbeat_timeout_ms = 500;
  set_launcher(std::string("DIR=") + tmp.path() + "\n" + kEscapedChild + "\nexec sleep 60");
  ctl.start();
  const auto job = submit(1);
  const pid_t child = pid_from_file("child.pid");
  ASSERT_TRUE(process_alive(child));
  const auto child_stat = read_process_stat(child);
  ASSERT_TRUE(child_stat);
  EXPECT_EQ(child_stat->group, child) << "the test's premise: the child left the launcher's process group";
  // The launcher's child is the job's: it may register, and its pid is shown.
  ASSERT_TRUE(register_pid(job, 0, 1, child, host_name()).ok());
  EXPECT_EQ(ctl.status(job.job_id()).ranks(0).pid(), child);
  // No heartbeat follows: the attempt fails and the whole gang is killed.
  const auto s = wait_until_over(job.job_id());
  ASSERT_EQ(s.state(), controller::FAILED) << ctl.log.str();
  EXPECT_FALSE(process_alive(child));
}

TEST_F(ControllerGangTest, ExitedLauncherLeavesNoOrphanBehind) {
  set_launcher(std::string("DIR=") + tmp.path() + "\n" + kEscapedChild + "\nexit 3");
  ctl.start();
  const auto job = submit(1);
  const auto s = wait_until_over(job.job_id());
  ASSERT_EQ(s.state(), controller::FAILED) << ctl.log.str();
  EXPECT_THAT(s.events().rbegin()->message(), HasSubstr("exited with status 3"));
  const pid_t child = pid_from_file("child.pid");
  EXPECT_FALSE(process_alive(child)) << "the launcher's child (own process group) outlived the attempt";
}

// The keeper (launch/process_gang.h) of a gang started directly: `body` runs as the launcher.
class GangKeeperTest : public ::testing::Test {
 protected:
  std::unique_ptr<Gang> start(const std::string& body) {
    std::vector<std::string> env;
    for (char** e = environ; *e; ++e) env.push_back(*e);
    return Gang::start(std::string(LOOM_BINARY_DIR) + "/loom-gang-keeper", tmp / "claim", tmp / "status",
                       {"/bin/sh", "-c", "DIR=" + tmp.path() + "\n" + body}, env, tmp / "log");
  }
  Claim claim() {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (read_claim(tmp / "claim").state == Claim::State::kNone && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    return read_claim(tmp / "claim");
  }
  pid_t child() {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (!std::filesystem::exists(tmp / "child.pid") && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    return static_cast<pid_t>(std::atol(file_text(tmp / "child.pid").c_str()));
  }
  TempDir tmp;
};

TEST_F(GangKeeperTest, AdoptionNeedsTheSameKeeperAndKillReachesTheWholeSession) {
  auto gang = start(std::string(kEscapedChild) + "\nexec sleep 300");
  const Claim c = claim();
  ASSERT_EQ(c.state, Claim::State::kKeeper) << file_text(tmp / "log");
  EXPECT_EQ(c.keeper.keeper, gang->identity().keeper);
  EXPECT_EQ(c.keeper.start_time, gang->identity().start_time);
  // A pid alone names nothing: the start time and the boot must agree too.
  GangIdentity other = c.keeper;
  other.start_time += 1;
  EXPECT_FALSE(Gang::adopt(other, tmp / "status"));
  other = c.keeper;
  other.boot_id = "another-boot";
  EXPECT_FALSE(Gang::adopt(other, tmp / "status"));
  other = c.keeper;
  other.keeper = child();  // alive, but it leads no session of its own
  EXPECT_FALSE(Gang::adopt(other, tmp / "status"));

  auto adopted = Gang::adopt(c.keeper, tmp / "status");
  ASSERT_TRUE(adopted);
  EXPECT_TRUE(adopted->adopted());
  EXPECT_FALSE(adopted->launcher_done());
  const pid_t escaped = child();
  ASSERT_TRUE(process_alive(escaped));
  EXPECT_TRUE(adopted->kill());
  EXPECT_FALSE(process_alive(escaped)) << "the launcher's child (own process group) outlived the gang";
  EXPECT_TRUE(adopted->launcher_done());
  EXPECT_TRUE(gang->kill());  // reaps the keeper, which the adopted gang killed last
  EXPECT_FALSE(process_alive(c.keeper.keeper));
}

TEST_F(GangKeeperTest, KeeperRecordsTheLaunchersStatusAndHoldsTheSessionWhileStragglersLive) {
  auto gang = start(std::string(kEscapedChild) + "\nexit 5");
  const pid_t straggler = child();
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (!gang->launcher_done() && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  ASSERT_TRUE(gang->launcher_done());
  const auto status = gang->launcher_status();
  ASSERT_TRUE(status);
  EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 5);
  // The launcher is gone, its child is not: the keeper still holds the session's number.
  EXPECT_TRUE(process_alive(straggler));
  EXPECT_TRUE(process_alive(gang->identity().keeper));
  EXPECT_TRUE(gang->kill());
  EXPECT_FALSE(process_alive(straggler));
}

TEST(ClaimTest, AnAttemptIsClaimedOnce) {
  TempDir tmp;
  const std::string path = tmp / "attempt_1.keeper";
  EXPECT_EQ(read_claim(path).state, Claim::State::kNone);
  EXPECT_TRUE(create_claim(path, kCancelledClaim));
  EXPECT_FALSE(create_claim(path, keeper_claim_text({123, 456, "boot"})));
  EXPECT_EQ(read_claim(path).state, Claim::State::kCancelled);
  write_text_file(path, "keeper 0 1 boot\n");
  EXPECT_THAT(error_message([&] { read_claim(path); }), HasSubstr(path + ": not a claim"));
}

}  // namespace
}  // namespace loom::testing
