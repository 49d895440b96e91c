// Run folders (train.out_dir): the exclusive lock (core/run_dir_lock.h), the removal of temporary folders an
// interrupted checkpoint write left behind, and the field-by-field checks of a checkpoint's state.json.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <set>
#include <sstream>

#include "core/checkpoint.h"
#include "core/config.h"
#include "core/error.h"
#include "core/run_dir_lock.h"
#include "tests/common/test_util.h"
#include "trainer/run.h"

namespace loom {
namespace {

namespace fs = std::filesystem;

// Runs `body` in a forked child and returns its exit status (128 + signal when it was killed).
int in_child(const std::function<int()>& body) {
  const pid_t pid = ::fork();
  if (pid == 0) ::_exit(body());
  int status = 0;
  EXPECT_EQ(::waitpid(pid, &status, 0), pid);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

std::string read_all(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

TEST(RunDirectoryLock, SecondProcessFailsNamingTheFolderAndTheHolder) {
  testing::TempDir dir;
  const std::string out = dir / "run";
  RunDirectoryLock lock(out);
  const std::string message_file = dir / "message";
  const int status = in_child([&] {
    try {
      RunDirectoryLock second(out);
      return 1;  // it must not get the lock
    } catch (const Error& e) {
      std::ofstream(message_file) << e.what();
      return 0;
    }
  });
  EXPECT_EQ(status, 0);
  EXPECT_EQ(read_all(message_file), out + ": another run (pid " + std::to_string(::getpid()) +
                                        ") is using this folder (lock file " + out + "/.lock)");
}

TEST(RunDirectoryLock, ReleasedOnDestructionAndWhenTheHolderIsKilled) {
  testing::TempDir dir;
  const std::string out = dir / "run";
  { RunDirectoryLock first(out); }
  { RunDirectoryLock again(out); }  // released by the destructor

  // A child takes the lock and is SIGKILLed while holding it: the kernel releases it with the process.
  int ready[2];
  ASSERT_EQ(::pipe(ready), 0);
  const pid_t child = ::fork();
  if (child == 0) {
    RunDirectoryLock held(out);
    const char byte = 1;
    if (::write(ready[1], &byte, 1) != 1) ::_exit(2);
    for (;;) ::pause();
  }
  char byte = 0;
  ASSERT_EQ(::read(ready[0], &byte, 1), 1);
  EXPECT_NE(testing::error_message([&] { RunDirectoryLock blocked(out); })
                .find("another run (pid " + std::to_string(child) + ")"),
            std::string::npos);
  ASSERT_EQ(::kill(child, SIGKILL), 0);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ::close(ready[0]);
  ::close(ready[1]);
  EXPECT_NO_THROW(RunDirectoryLock after_kill(out));
}

// A second training run into a locked folder fails before it writes anything there.
TEST(RunDirectoryLock, TrainingIntoALockedFolderFailsAtOnce) {
  testing::TempDir dir;
  const std::string out = dir / "run";
  const config::RunConfig cfg = parse_run_config(
      "model: {kind: gpt, n_layer: 1, d_model: 8, n_head: 2, vocab_size: 16, max_seq_len: 4}\n"
      "data: {train: nowhere_*.bin, batch_size: 1, seq_len: 4}\n"
      "train: {max_steps: 1, device: cpu, progress: false, out_dir: \"" + out + "\"}\n",
      "locked.yaml");
  RunDirectoryLock holder(out);
  std::ostringstream log;
  EXPECT_EQ(testing::error_message([&] { train_on_mesh(cfg, log, {}, nullptr); }),
            out + ": another run (pid " + std::to_string(::getpid()) + ") is using this folder (lock file " + out +
                "/.lock)");
  EXPECT_FALSE(fs::exists(out + "/config.yaml"));
  EXPECT_FALSE(fs::exists(out + "/metrics.jsonl"));
}

TEST(StaleTemporaries, OnlyTheCheckpointWritersOwnTemporaryFoldersAreRemoved) {
  testing::TempDir dir;
  const std::string out = dir / "run";
  testing::TempDir outside;
  RunDirectoryLock lock(out);
  // What a killed save / prune leaves (with a file inside, as a half-written checkpoint has).
  for (const char* stale : {".ckpt_00000005.tmp.123.0", ".ckpt_00000010.tmp.4567.12", ".ckpt_00000002.deleting.99"}) {
    fs::create_directories(out + "/" + stale);
    std::ofstream(out + "/" + stale + "/model.safetensors") << "half";
  }
  // Everything else stays: other names, a file with a matching name, a symlink to a folder elsewhere.
  const std::vector<std::string> kept = {"ckpt_00000005", ".ckpt_00000005.tmp.x", ".ckpt_5.tmp.1.2", ".my.tmp.1.2",
                                         "notes.tmp.1.2"};
  for (const std::string& name : kept) fs::create_directories(out + "/" + name);
  std::ofstream(out + "/.ckpt_00000006.tmp.1.2") << "a file";
  std::ofstream(outside / "precious") << "keep";
  fs::create_directory_symlink(outside.path(), out + "/.ckpt_00000007.tmp.1.2");

  EXPECT_EQ(remove_stale_checkpoint_temporaries(lock), 3);
  std::set<std::string> left;
  for (const auto& e : fs::directory_iterator(out)) left.insert(e.path().filename().string());
  std::set<std::string> expected(kept.begin(), kept.end());
  expected.insert({".lock", ".ckpt_00000006.tmp.1.2", ".ckpt_00000007.tmp.1.2"});
  EXPECT_EQ(left, expected);
  EXPECT_TRUE(fs::exists(outside / "precious"));
  EXPECT_EQ(remove_stale_checkpoint_temporaries(lock), 0);
}

class StateJsonTest : public ::testing::Test {
 protected:
  void SetUp() override {
    CheckpointContents c;
    c.model = {{"w", Tensor::from_vector({1, 2}, {2})}};
    c.optimizer = {{"optim.m.w", Tensor::from_vector({0, 0}, {2})}};
    c.state = {{"data", {{"position", 3}}}};
    save_checkpoint(dir_.path(), 7, c);
    ckpt_ = checkpoint_dir(dir_.path(), 7);
  }
  std::string load_with_state(const std::string& json) {
    std::ofstream(ckpt_ + "/state.json") << json;
    return testing::error_message([&] { load_checkpoint(ckpt_); });
  }
  testing::TempDir dir_;
  std::string ckpt_;
};

TEST_F(StateJsonTest, StepMustBeAnIntegerInRange) {
  const std::string file = ckpt_ + "/state.json";
  EXPECT_EQ(load_with_state(R"({"format": "loom-checkpoint-1", "step": 9223372036854775807, "data": {}})"),
            file + ": \"step\": 9223372036854775807 is out of range [0, 99999999]");
  EXPECT_EQ(load_with_state(R"({"format": "loom-checkpoint-1", "step": 18446744073709551615, "data": {}})"),
            file + ": \"step\": 18446744073709551615 is out of range [0, 99999999]");
  EXPECT_EQ(load_with_state(R"({"format": "loom-checkpoint-1", "step": -1, "data": {}})"),
            file + ": \"step\": -1 is out of range [0, 99999999]");
  EXPECT_EQ(load_with_state(R"({"format": "loom-checkpoint-1", "step": 7.5, "data": {}})"),
            file + ": \"step\": expected an integer, got 7.5");
  EXPECT_EQ(load_with_state(R"({"format": "loom-checkpoint-1", "step": "7", "data": {}})"),
            file + ": \"step\": expected an integer, got \"7\"");
  EXPECT_EQ(load_with_state(R"({"format": "loom-checkpoint-1", "data": {}})"), file + ": missing integer \"step\"");
  EXPECT_EQ(load_with_state(R"({"format": "loom-checkpoint-1", "step": 7, "data": {}})"), "(no loom::Error thrown)");
}

TEST_F(StateJsonTest, DuplicateKeysAreRejectedAtAnyDepth) {
  const std::string file = ckpt_ + "/state.json";
  EXPECT_EQ(load_with_state(R"({"format": "loom-checkpoint-1", "step": 7, "step": 99999999, "data": {}})"),
            file + ": duplicate key \"step\"");
  EXPECT_EQ(load_with_state(
                R"({"format": "loom-checkpoint-1", "step": 7, "data": {"train": {"index": 1, "index": 2}}})"),
            file + ": duplicate key \"data.train.index\"");
  // The same key in sibling objects (and in objects inside lists) is fine.
  EXPECT_EQ(load_with_state(
                R"({"format": "loom-checkpoint-1", "step": 7, "data": {"a": {"i": 1}, "b": {"i": 2}, "l": [{"i": 1}, {"i": 2}]}})"),
            "(no loom::Error thrown)");
}

TEST(StateInteger, RejectsFractionsAndOutOfRangeValuesInsteadOfNarrowing) {
  const nlohmann::json s = nlohmann::json::parse(
      R"({"dp": 2, "big": 1099511627776, "frac": 1.5, "neg": -3, "huge": 18446744073709551615, "text": "2"})");
  EXPECT_EQ(state_integer(s, "dp", 1, 1 << 20, "f.json"), 2);
  EXPECT_EQ(testing::error_message([&] { state_integer(s, "big", 1, 1 << 20, "f.json"); }),
            "f.json: \"big\": 1099511627776 is out of range [1, 1048576]");
  EXPECT_EQ(testing::error_message([&] { state_integer(s, "frac", 1, 1 << 20, "f.json"); }),
            "f.json: \"frac\": expected an integer, got 1.5");
  EXPECT_EQ(testing::error_message([&] { state_integer(s, "neg", 0, 10, "f.json"); }),
            "f.json: \"neg\": -3 is out of range [0, 10]");
  EXPECT_EQ(testing::error_message([&] { state_integer(s, "huge", 0, INT64_MAX, "f.json"); }),
            "f.json: \"huge\": 18446744073709551615 is out of range [0, 9223372036854775807]");
  EXPECT_EQ(testing::error_message([&] { state_integer(s, "text", 0, 10, "f.json"); }),
            "f.json: \"text\": expected an integer, got \"2\"");
  EXPECT_EQ(testing::error_message([&] { state_integer(s, "absent", 0, 10, "f.json"); }),
            "f.json: missing integer \"absent\"");
}

}  // namespace
}  // namespace loom
