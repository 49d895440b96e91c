// Secrets stay where they belong: a job's processes see their own job token and no admin token; token files
// are the owner's only (mode 0600), also when a file with a wider mode was there before.
#include <gmock/gmock.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>

#include "core/config.h"
#include "tests/controller/controller_testing.h"

extern char** environ;

namespace loom::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

// Sets variables of this process for the scope (the launcher inherits them), and removes them after.
class ScopedEnvironment {
 public:
  explicit ScopedEnvironment(std::vector<std::pair<std::string, std::string>> vars) : vars_(std::move(vars)) {
    for (const auto& [name, value] : vars_) setenv(name.c_str(), value.c_str(), 1);
  }
  ~ScopedEnvironment() {
    for (const auto& [name, value] : vars_) unsetenv(name.c_str());
  }

 private:
  std::vector<std::pair<std::string, std::string>> vars_;
};

std::vector<std::string> environ_entries(const std::string& path) {
  const std::string text = file_text(path);
  std::vector<std::string> entries;
  for (size_t begin = 0, end; begin < text.size(); begin = end + 1) {
    end = text.find('\0', begin);
    if (end == std::string::npos) end = text.size();
    entries.push_back(text.substr(begin, end - begin));
  }
  return entries;
}

mode_t file_mode(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(lstat(path.c_str(), &st), 0) << path;
  return st.st_mode & 07777;
}

void write_with_mode(const std::string& path, const std::string& text, mode_t mode) {
  write_text_file(path, text);
  ASSERT_EQ(chmod(path.c_str(), mode), 0);
}

TEST(ControllerSecretsTest, RanksSeeTheirJobTokenAndNoAdminToken) {
  TempDir tmp;
  LocalController ctl(tmp / "jobs");
  // The real launcher and mpirun; each "rank" saves its environment as the kernel shows it.
  const std::string rank = tmp / "rank.sh";
  write_text_file(rank, "#!/bin/sh\ncp /proc/$$/environ \"" + tmp.path() + "/rank_$OMPI_COMM_WORLD_RANK.env\"\n");
  chmod(rank.c_str(), 0755);
  ctl.options.loom_binary = rank;
  ctl.start();
  write_token_data(tmp / "data", 4096, 64, 1);
  const std::string admin = ctl.admin_token;
  // What an operator's shell may hold when it starts the controller (and an outer job's own variables).
  const ScopedEnvironment env({{"LOOM_CONTROLLER_ADMIN_TOKEN", admin},
                               {"LOOM_CONTROLLER_TOKEN", admin},
                               {"SOME_COPY_OF_IT", "x" + admin + "y"},
                               {"LOOM_JOB_TOKEN", "an-outer-jobs-token-0123456789"},
                               {"LOOM_SECRETS_TEST_PLAIN", "kept"}});

  controller::SubmitJobRequest r;
  *r.mutable_config() = parse_run_config(tiny_job_yaml(tmp / "data", tmp / "out", 4, 2, 2), "env.yaml");
  r.set_world_size(2);
  r.set_max_restarts(0);
  controller::SubmitJobReply job;
  const grpc::Status submitted = ctl.stub->SubmitJob(ctl.context(admin).get(), r, &job);
  ASSERT_TRUE(submitted.ok()) << submitted.error_message();
  const auto s = ctl.wait_for(job.job_id(), std::chrono::seconds(60), [](const auto& s) {
    return s.state() == controller::FINISHED || s.state() == controller::FAILED;
  });
  ASSERT_EQ(s.state(), controller::FINISHED) << ctl.log.str() << file_text(s.log_path());
  for (int rank_index = 0; rank_index < 2; ++rank_index) {
    const auto entries = environ_entries(tmp / ("rank_" + std::to_string(rank_index) + ".env"));
    ASSERT_FALSE(entries.empty()) << "rank " << rank_index << " wrote no environment";
    for (const std::string& e : entries) EXPECT_THAT(e, Not(HasSubstr(admin))) << "rank " << rank_index;
    EXPECT_THAT(entries, ::testing::Contains("LOOM_JOB_TOKEN=" + job.token()));
    EXPECT_THAT(entries, ::testing::Contains("LOOM_JOB_ID=" + job.job_id()));
    EXPECT_THAT(entries, ::testing::Contains("LOOM_SECRETS_TEST_PLAIN=kept"));
    EXPECT_THAT(entries, Not(::testing::Contains(HasSubstr("an-outer-jobs-token"))));
  }
}

TEST(ControllerSecretsTest, SecretFilesAreOwnerOnlyWhateverWasThereBefore) {
  TempDir tmp;
  const std::string path = tmp / "token";
  write_with_mode(path, "old\n", 0644);
  const mode_t old_mask = umask(0);  // the mode must not depend on the caller's umask
  write_secret_file(path, "new-secret\n");
  umask(old_mask);
  EXPECT_EQ(file_mode(path), 0600u);
  EXPECT_EQ(file_text(path), "new-secret\n");
  // A symbolic link in its place is replaced, not followed.
  const std::string target = tmp / "elsewhere";
  write_with_mode(target, "untouched\n", 0644);
  const std::string link = tmp / "link";
  ASSERT_EQ(symlink(target.c_str(), link.c_str()), 0);
  write_secret_file(link, "secret\n");
  EXPECT_EQ(file_text(target), "untouched\n");
  EXPECT_EQ(file_mode(link), 0600u);
  EXPECT_EQ(file_text(link), "secret\n");
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(tmp.path()), {}), 3) << "a temporary file is left";
}

// loom-controller itself: the generated admin token and `submit --token-out`, both over files with mode 0644.
TEST(ControllerSecretsTest, ControllerWritesTokenFilesOwnerOnly) {
  TempDir tmp;
  std::filesystem::create_directories(tmp / "jobs");
  write_with_mode(tmp / "jobs/admin_token", "stale\n", 0644);
  write_with_mode(tmp / "job_token", "stale\n", 0644);
  write_text_file(tmp / "launcher.sh", "#!/bin/sh\nexec sleep 60\n");
  chmod((tmp / "launcher.sh").c_str(), 0755);
  write_token_data(tmp / "data", 4096, 64, 1);
  write_text_file(tmp / "job.yaml", tiny_job_yaml(tmp / "data", tmp / "out", 4, 2));

  const std::string binary = std::string(LOOM_BINARY_DIR) + "/loom-controller";
  std::vector<std::string> args = {binary, "serve", "--address", "127.0.0.1:0", "--http-port", "0",
                                   "--jobs-dir", tmp / "jobs", "--launcher", tmp / "launcher.sh",
                                   "--vendor-dir", std::string(LOOM_SOURCE_DIR) + "/launch/dashboard",
                                   "--ready-file", tmp / "ready"};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  unsetenv("LOOM_CONTROLLER_ADMIN_TOKEN");
  posix_spawn_file_actions_t files;
  posix_spawn_file_actions_init(&files);
  posix_spawn_file_actions_addopen(&files, 2, (tmp / "serve.log").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  pid_t serve = -1;
  ASSERT_EQ(posix_spawn(&serve, argv[0], &files, nullptr, argv.data(), environ), 0);
  posix_spawn_file_actions_destroy(&files);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (!std::filesystem::exists(tmp / "ready") && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  ASSERT_TRUE(std::filesystem::exists(tmp / "ready")) << file_text(tmp / "serve.log");
  const int port = std::atoi(file_text(tmp / "ready").c_str());

  EXPECT_EQ(file_mode(tmp / "jobs/admin_token"), 0600u);
  const std::string admin = file_text(tmp / "jobs/admin_token");
  EXPECT_EQ(admin.size(), 65u) << admin;  // 64 hex digits and a newline
  const std::string submit = binary + " submit " + (tmp / "job.yaml") + " --np 1 --address 127.0.0.1:" +
                             std::to_string(port) + " --token-file " + (tmp / "jobs/admin_token") +
                             " --token-out " + (tmp / "job_token") + " > " + (tmp / "submit.log") + " 2>&1";
  EXPECT_EQ(std::system(submit.c_str()), 0) << file_text(tmp / "submit.log");
  EXPECT_EQ(file_mode(tmp / "job_token"), 0600u);
  EXPECT_EQ(file_text(tmp / "job_token").size(), 65u);

  kill(serve, SIGTERM);
  int status = 0;
  ASSERT_EQ(waitpid(serve, &status, 0), serve);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << file_text(tmp / "serve.log");
}

}  // namespace
}  // namespace loom::testing
