// Where a job may write: train.out_dir lies inside the controller's runs root (here the test's folder, which
// holds the jobs folder), never in another job's folder or a live job's out_dir; the admin may lift the first
// rule for one job (SubmitJobRequest.allow_out_dir_outside_root; SubmitJob takes the admin token only).
#include <gmock/gmock.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/config.h"
#include "tests/controller/controller_testing.h"

namespace loom::testing {
namespace {

using ::testing::HasSubstr;

class ControllerOutDirTest : public ::testing::Test {
 protected:
  ControllerOutDirTest() : ctl(tmp / "jobs") {
    write_text_file(tmp / "launcher.sh", "#!/bin/sh\nexec sleep 60\n");
    chmod((tmp / "launcher.sh").c_str(), 0755);
    ctl.options.launcher = tmp / "launcher.sh";
    write_token_data(tmp / "data", 4096, 64, 1);
    ctl.start();
  }

  grpc::Status submit(const std::string& out_dir, controller::SubmitJobReply* reply,
                      const std::vector<std::string>& args = {}, bool allow_outside_root = false) {
    controller::SubmitJobRequest r;
    *r.mutable_config() = parse_run_config(tiny_job_yaml(tmp / "data", out_dir, 20, 10), "test.yaml");
    r.set_world_size(1);
    for (const auto& a : args) r.add_args(a);
    if (allow_outside_root) r.set_allow_out_dir_outside_root(true);
    return ctl.stub->SubmitJob(ctl.context(ctl.admin_token).get(), r, reply);
  }

  // Submits with `out_dir` and expects INVALID_ARGUMENT naming train.out_dir and `why`.
  void expect_refused(const std::string& out_dir, const std::string& why, const std::vector<std::string>& args = {},
                      bool allow_outside_root = false) {
    controller::SubmitJobReply reply;
    const grpc::Status s = submit(out_dir, &reply, args, allow_outside_root);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << out_dir << ": accepted as " << reply.job_id();
    EXPECT_THAT(s.error_message(), HasSubstr("train.out_dir")) << out_dir;
    EXPECT_THAT(s.error_message(), HasSubstr(why)) << out_dir;
  }

  TempDir tmp;
  TempDir outside;  // a folder outside the runs root
  LocalController ctl;
};

TEST_F(ControllerOutDirTest, OutDirOutsideTheRunsRootIsRefused) {
  expect_refused(tmp / "runs/../../escape", "\"..\"");
  expect_refused(outside / "out", "outside the runs root");
  expect_refused(tmp.path(), "outside the runs root");  // the root itself holds the jobs folder
  // A link inside the root that points out of it.
  ASSERT_EQ(symlink(outside.path().c_str(), (tmp / "link").c_str()), 0);
  expect_refused(tmp / "link/out", "outside the runs root");
  // Through an override as well: the effective config is checked.
  expect_refused(tmp / "out", "outside the runs root", {"train.out_dir=" + outside / "out"});
  EXPECT_EQ(ctl.jobs->list().jobs_size(), 0);
  EXPECT_FALSE(std::filesystem::exists(outside / "out"));
}

TEST_F(ControllerOutDirTest, AnotherJobsFolderIsNeverUsed) {
  controller::SubmitJobReply first;
  ASSERT_TRUE(submit(tmp / "runs/first", &first).ok());
  const std::string first_dir = tmp / ("jobs/" + first.job_id());
  const std::string first_config = file_text(first_dir + "/config.yaml");
  ASSERT_FALSE(first_config.empty());
  // The trainer writes config.yaml into its out_dir: job-1's own folder must not be one.
  for (bool allow : {false, true}) {
    expect_refused(first_dir, "jobs folder", {}, allow);
    expect_refused(first_dir + "/sub", "jobs folder", {}, allow);
    expect_refused(tmp / "jobs", "jobs folder", {}, allow);
    // A live job's out_dir, or a folder inside it, mixes two runs' checkpoints.
    expect_refused(tmp / "runs/first", "live job " + first.job_id(), {}, allow);
    expect_refused(tmp / "runs/first/inner", "live job " + first.job_id(), {}, allow);
  }
  EXPECT_EQ(file_text(first_dir + "/config.yaml"), first_config);
  EXPECT_EQ(ctl.jobs->list().jobs_size(), 1);
  // A sibling folder is fine.
  controller::SubmitJobReply second;
  const grpc::Status s = submit(tmp / "runs/second", &second);
  EXPECT_TRUE(s.ok()) << s.error_message();
}

TEST_F(ControllerOutDirTest, TheAdminMayAllowAFolderOutsideTheRoot) {
  controller::SubmitJobReply reply;
  const grpc::Status s = submit(outside / "out", &reply, {}, /*allow_outside_root=*/true);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(ctl.status(reply.job_id()).out_dir(), outside / "out");
}

}  // namespace
}  // namespace loom::testing
