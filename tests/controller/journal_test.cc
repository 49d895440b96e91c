// The controller's journal and placement, in process with stand-in launchers: what job.json holds (no token),
// that a broken journal stops the controller rather than losing a job, the claim that settles an attempt whose
// start a crash interrupted, and elastic placement on the hosts that answer the probe.
// (A controller killed with SIGKILL and restarted, with real jobs: restart_test.cc.)
#include <gmock/gmock.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "core/config.h"
#include "launch/job_supervisor_journal.h"
#include "tests/controller/controller_testing.h"

namespace loom::testing {
namespace {

using ::testing::HasSubstr;

class ControllerJournalTest : public ::testing::Test {
 protected:
  ControllerJournalTest() : ctl(tmp / "jobs") {
    // The stand-in launcher writes its arguments (one a line) and waits.
    ctl.options.launcher = write_script(tmp / "launcher.sh", "printf '%s\\n' \"$@\" > \"$0.args.$LOOM_JOB_ATTEMPT\"\n"
                                                             "exec sleep 60");
    ctl.options.heartbeat_timeout_ms = 60000;
    write_token_data(tmp / "data", 4096, 64, 1);
  }

  // A tiny job with `data` ranks; `parallel_yaml` replaces its parallel section.
  controller::SubmitJobRequest request(int data, const std::string& parallel_yaml = "") {
    std::string yaml = tiny_job_yaml(tmp / "data", tmp / "out", 20, 10, data);
    if (!parallel_yaml.empty()) yaml = yaml.substr(0, yaml.rfind("parallel:")) + parallel_yaml;
    controller::SubmitJobRequest r;
    *r.mutable_config() = parse_run_config(yaml, "test.yaml");
    r.set_world_size(data);
    return r;
  }

  grpc::Status submit(const controller::SubmitJobRequest& r, controller::SubmitJobReply* reply) {
    return ctl.stub->SubmitJob(ctl.context(ctl.admin_token).get(), r, reply);
  }

  // The launcher's arguments of an attempt, as it wrote them.
  std::vector<std::string> launcher_args(int attempt) {
    const std::string path = tmp / ("launcher.sh.args." + std::to_string(attempt));
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (!std::filesystem::exists(path) && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    std::vector<std::string> args;
    std::istringstream text(file_text(path));
    for (std::string line; std::getline(text, line);) args.push_back(line);
    return args;
  }

  TempDir tmp;
  LocalController ctl;
};

TEST(ControllerJournalFormat, Sha256IsTheStandardOne) {
  EXPECT_EQ(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST_F(ControllerJournalTest, JournalHoldsTheRunningJobAndOnlyItsTokensHash) {
  ctl.start();
  controller::SubmitJobReply job;
  ASSERT_TRUE(submit(request(1), &job).ok());
  const std::string path = job_record_path(tmp / "jobs", job.job_id());
  const auto s = ctl.wait_for(job.job_id(), std::chrono::seconds(10),
                              [](const auto& s) { return s.state() == controller::RUNNING; });
  ASSERT_EQ(s.state(), controller::RUNNING);
  const controller::JobRecord r = read_job_record(path);
  EXPECT_EQ(r.job_id(), job.job_id());
  EXPECT_EQ(r.state(), controller::RUNNING);
  EXPECT_EQ(r.attempt(), 1);
  ASSERT_EQ(r.token_sha256_size(), 1);
  EXPECT_EQ(r.token_sha256(0), sha256_hex(job.token()));
  EXPECT_THAT(r.gang().claim_file(), HasSubstr("attempt_1.keeper"));
  // The keeper claims the attempt (as it starts) with its own identity, which the journal repeats.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (read_claim(r.gang().claim_file()).state == Claim::State::kNone && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  const Claim claim = read_claim(r.gang().claim_file());
  ASSERT_EQ(claim.state, Claim::State::kKeeper);
  EXPECT_EQ(claim.keeper.keeper, r.gang().keeper_pid());
  EXPECT_EQ(claim.keeper.start_time, r.gang().start_time());
  EXPECT_TRUE(process_alive(claim.keeper.keeper));
  const std::string text = file_text(path);
  EXPECT_THAT(text, ::testing::Not(HasSubstr(job.token())));
  EXPECT_THAT(text, ::testing::Not(HasSubstr(ctl.admin_token)));
  // A stop between attempts is journalled too.
  controller::ControlRequest stop;
  stop.set_job_id(job.job_id());
  stop.set_action(controller::ControlRequest::PAUSE);
  controller::ControlReply reply;
  ASSERT_TRUE(ctl.stub->Control(ctl.context(job.token()).get(), stop, &reply).ok());
  EXPECT_TRUE(read_job_record(path).control().paused());
}

TEST_F(ControllerJournalTest, ABrokenJournalStopsTheControllerNamingTheFile) {
  std::filesystem::create_directories(tmp / "jobs/job-3");
  for (const std::string& text :
       {std::string("{ not json"),
        std::string("{\"jobId\": \"job-3\", \"state\": \"RUNNING\", \"tokenSha256\": [\"xyz\"]}"),
        std::string("{\"jobId\": \"job-7\"}")}) {
    write_text_file(tmp / "jobs/job-3/job.json", text);
    const std::string message = error_message([&] { JobSupervisor supervisor(ctl.options); });
    EXPECT_THAT(message, HasSubstr(tmp / "jobs/job-3/job.json")) << text;
  }
}

TEST_F(ControllerJournalTest, AnAttemptItsKeeperNeverClaimedIsCancelledAndPlacedAgain) {
  // A controller that died between journalling attempt 1 and its keeper's claim: the record names the claim
  // file, which does not exist.
  ctl.start();
  controller::SubmitJobReply job;
  ASSERT_TRUE(submit(request(1), &job).ok());
  ctl.wait_for(job.job_id(), std::chrono::seconds(10), [](const auto& s) { return s.state() == controller::RUNNING; });
  const std::string path = job_record_path(tmp / "jobs", job.job_id());
  controller::JobRecord r = read_job_record(path);
  ctl.server->Shutdown();
  ctl.server.reset();
  ctl.jobs.reset();  // kills attempt 1 and records the job failed; the record is put back as it was below
  const std::string claim_file = tmp / ("jobs/" + job.job_id() + "/attempt_1.keeper");
  std::filesystem::remove(claim_file);
  r.clear_gang();
  r.mutable_gang()->set_claim_file(claim_file);
  r.mutable_gang()->set_status_file(tmp / ("jobs/" + job.job_id() + "/attempt_1.status"));
  write_job_record(path, r);

  ctl.start();
  const auto s = ctl.wait_for(job.job_id(), std::chrono::seconds(10),
                              [](const auto& s) { return s.state() == controller::RUNNING && s.attempt() == 2; });
  ASSERT_EQ(s.attempt(), 2) << ctl.log.str();
  EXPECT_EQ(s.restarts(), 0);
  EXPECT_THAT(ctl.log.str(), HasSubstr("attempt 1 never started"));
  EXPECT_EQ(read_claim(claim_file).state, Claim::State::kCancelled);
  // A keeper of attempt 1 starting late finds the attempt cancelled and starts nothing.
  const std::string marker = tmp / "marker";
  const std::string keeper =
      ctl.options.keeper + " " + claim_file + " " + (tmp / "late.status") + " /usr/bin/touch " + marker;
  EXPECT_EQ(WEXITSTATUS(std::system(keeper.c_str())), 3);
  EXPECT_FALSE(std::filesystem::exists(marker));
  // Attempt 2 was started with a new token (the journal has none to hand out); the submitter's still works.
  const controller::JobRecord now = read_job_record(path);
  EXPECT_EQ(now.token_sha256_size(), 2);
  EXPECT_EQ(ctl.status(job.job_id()).job_id(), job.job_id());
  controller::JobStatusRequest status;
  status.set_job_id(job.job_id());
  controller::JobStatusReply reply;
  EXPECT_TRUE(ctl.stub->JobStatus(ctl.context(job.token()).get(), status, &reply).ok());
}

TEST_F(ControllerJournalTest, ElasticPlacementTakesTheHostsThatAnswer) {
  ctl.options.hosts = {controller::HostSlots(), controller::HostSlots()};
  ctl.options.hosts[0].set_name("node-a");
  ctl.options.hosts[0].set_slots(2);
  ctl.options.hosts[1].set_name("node-b");
  ctl.options.hosts[1].set_slots(2);
  ctl.options.host_probe = "[ \"$1\" = node-a ]";  // node-b is down
  ctl.start();
  controller::SubmitJobReply job;
  ASSERT_TRUE(submit(request(4, "parallel: {data: 4, elastic: {min_data: 2}}\n"), &job).ok());
  const auto s = ctl.wait_for(job.job_id(), std::chrono::seconds(15),
                              [](const auto& s) { return s.state() == controller::RUNNING; });
  ASSERT_EQ(s.state(), controller::RUNNING) << ctl.log.str();
  EXPECT_EQ(s.layout().data(), 2);
  EXPECT_EQ(s.layout().grad_accum_steps(), 2);
  ASSERT_EQ(s.layout().hosts_size(), 1);
  EXPECT_EQ(s.layout().hosts(0).name(), "node-a");
  EXPECT_EQ(s.world_size(), 2);
  const auto args = launcher_args(1);
  const std::string hostfile = tmp / ("jobs/" + job.job_id() + "/hosts_1.txt");
  EXPECT_THAT(args, ::testing::IsSupersetOf({hostfile, std::string("parallel.data=2"),
                                             std::string("train.grad_accum_steps=2"), std::string("2")}));
  EXPECT_EQ(file_text(hostfile), "node-a slots=2\n");
  EXPECT_THAT(s.events(1).message(), HasSubstr("2 data x 1 tensor ranks, grad_accum_steps 2 on node-a (2 slots)"));
}

TEST_F(ControllerJournalTest, NoFittingLayoutFailsTheJobAndSlowProbesCountAsDown) {
  ctl.options.hosts = {controller::HostSlots()};
  ctl.options.hosts[0].set_name("node-a");
  ctl.options.hosts[0].set_slots(8);
  ctl.options.host_probe = "exec sleep 30";
  ctl.options.probe_timeout_ms = 300;
  ctl.options.max_restarts = 1;
  ctl.start();
  controller::SubmitJobReply job;
  ASSERT_TRUE(submit(request(2, "parallel: {data: 2, elastic: {min_data: 1}}\n"), &job).ok());
  const auto s = ctl.wait_for(job.job_id(), std::chrono::seconds(15),
                              [](const auto& s) { return s.state() == controller::FAILED; });
  ASSERT_EQ(s.state(), controller::FAILED) << ctl.log.str();
  // Probed twice: the first time counts as a failed attempt (restart 1 of 1), the second ends the job.
  EXPECT_EQ(s.restarts(), 1);
  EXPECT_EQ(s.attempt(), 0);
  ASSERT_EQ(s.events_size(), 3);
  EXPECT_EQ(s.events(1).state(), controller::RESTARTING);
  EXPECT_THAT(s.events(1).message(), HasSubstr("probing again in 300 ms (restart 1 of 1)"));
  EXPECT_THAT(s.events(2).message(), HasSubstr("no layout fits the 0 slot(s)"));
  EXPECT_THAT(s.events(2).message(), HasSubstr("down: node-a"));
  EXPECT_THAT(s.events(2).message(), HasSubstr("giving up after 1 restart(s)"));
}

TEST_F(ControllerJournalTest, MinDataAboveDataIsRefusedAtSubmit) {
  ctl.start();
  controller::SubmitJobReply job;
  const grpc::Status s = submit(request(2, "parallel: {data: 2, elastic: {min_data: 3}}\n"), &job);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("parallel.elastic.min_data (3) exceeds parallel.data (2)"));
}

}  // namespace
}  // namespace loom::testing
