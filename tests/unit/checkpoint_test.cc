#include "core/checkpoint.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "core/atomic_file.h"
#include "core/error.h"

namespace loom {
namespace {

namespace fs = std::filesystem;

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::path(::testing::TempDir()) / "loom_ckpt_XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    set_write_fault_for_testing(nullptr);
    fs::remove_all(dir_);
  }

  // Random contents; `seed` makes checkpoints distinguishable.
  static CheckpointContents make_contents(unsigned seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> n;
    auto random = [&](const Shape& shape) {
      std::vector<float> v(static_cast<size_t>(shape_numel(shape)));
      for (float& x : v) x = n(rng);
      return Tensor::from_vector(v, shape);
    };
    CheckpointContents c;
    c.model = {
        {"wte.weight", random({5, 3})}, {"blocks.0.attn.qkv.weight", random({9, 3})}, {"norm.bias", random({3})}};
    c.optimizer = {{"m.wte.weight", random({5, 3})},
                   {"v.wte.weight", random({5, 3})},
                   {"step_count", Tensor::from_ints({static_cast<int32_t>(seed)}, {1})}};
    c.state = {
        {"rng", {seed, 12345u}}, {"data", {{"shard", 2}, {"position", 4096}}}, {"config", "model:\n  kind: gpt\n"}};
    return c;
  }

  static void expect_same_tensors(const NamedTensors& a, const NamedTensors& b) {
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i) {
      EXPECT_EQ(a[i].first, b[i].first);
      EXPECT_EQ(a[i].second.shape(), b[i].second.shape()) << a[i].first;
      EXPECT_EQ(a[i].second.dtype(), b[i].second.dtype()) << a[i].first;
      ASSERT_EQ(a[i].second.nbytes(), b[i].second.nbytes());
      EXPECT_EQ(std::memcmp(a[i].second.raw(), b[i].second.raw(), a[i].second.nbytes()), 0) << a[i].first;
    }
  }

  std::vector<std::string> entries() const {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(dir_)) names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
  }

  std::string dir_;
};

TEST_F(CheckpointTest, SaveLoadRoundTrip) {
  const CheckpointContents c = make_contents(1);
  save_checkpoint(dir_, 250, c);
  EXPECT_EQ(checkpoint_dir(dir_, 250), (fs::path(dir_) / "ckpt_00000250").string());
  ASSERT_TRUE(fs::is_directory(checkpoint_dir(dir_, 250)));
  const CheckpointContents back = load_checkpoint(checkpoint_dir(dir_, 250));
  expect_same_tensors(back.model, c.model);
  expect_same_tensors(back.optimizer, c.optimizer);
  EXPECT_EQ(back.state["step"], 250);
  EXPECT_EQ(back.state["rng"], c.state["rng"]);
  EXPECT_EQ(back.state["data"], c.state["data"]);
  EXPECT_EQ(back.state["config"], c.state["config"]);
  EXPECT_EQ(entries(), std::vector<std::string>{"ckpt_00000250"});  // no temporary directory left
}

TEST_F(CheckpointTest, InjectedWriteFailureKeepsPreviousCheckpoint) {
  const CheckpointContents first = make_contents(1);
  save_checkpoint(dir_, 100, first);
  for (const char* failing : {"model.safetensors", "optimizer.safetensors", "state.json"}) {
    set_write_fault_for_testing([&](const std::string& path) { return fs::path(path).filename() == failing; });
    const CheckpointContents second = make_contents(2);
    for (int64_t step : {200, 100}) {  // a new step, and replacing the existing one
      try {
        save_checkpoint(dir_, step, second);
        ADD_FAILURE() << "save did not fail with " << failing;
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(failing), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("injected fault"), std::string::npos) << e.what();
      }
      EXPECT_EQ(entries(), std::vector<std::string>{"ckpt_00000100"}) << failing;
      EXPECT_EQ(latest_checkpoint(dir_), checkpoint_dir(dir_, 100));
      const CheckpointContents back = load_checkpoint(checkpoint_dir(dir_, 100));
      expect_same_tensors(back.model, first.model);
      expect_same_tensors(back.optimizer, first.optimizer);
      EXPECT_EQ(back.state["rng"], first.state["rng"]);
    }
  }
  set_write_fault_for_testing(nullptr);
  // Replacing a step's checkpoint succeeds once writes work again.
  const CheckpointContents third = make_contents(3);
  save_checkpoint(dir_, 100, third);
  expect_same_tensors(load_checkpoint(checkpoint_dir(dir_, 100)).model, third.model);
  EXPECT_EQ(entries(), std::vector<std::string>{"ckpt_00000100"});
}

TEST_F(CheckpointTest, AtomicFileFaultLeavesTargetUntouched) {
  const std::string path = (fs::path(dir_) / "f.txt").string();
  write_file_atomically(path, "old contents");
  set_write_fault_for_testing([&](const std::string& p) { return p == path; });
  EXPECT_THROW(write_file_atomically(path, "new contents that never land"), Error);
  std::ifstream in(path);
  EXPECT_EQ(std::string(std::istreambuf_iterator<char>(in), {}), "old contents");
  EXPECT_EQ(entries(), std::vector<std::string>{"f.txt"});
}

TEST_F(CheckpointTest, LatestIgnoresTemporaryAndIncompleteDirs) {
  EXPECT_EQ(latest_checkpoint(dir_), "");
  EXPECT_EQ(latest_checkpoint((fs::path(dir_) / "absent").string()), "");
  save_checkpoint(dir_, 5, make_contents(5));
  save_checkpoint(dir_, 40, make_contents(40));
  save_checkpoint(dir_, 12, make_contents(12));
  fs::create_directory(fs::path(dir_) / ".ckpt_00000090.tmp.1.0");  // a save in progress or crashed
  fs::create_directory(fs::path(dir_) / "ckpt_00000080");           // incomplete: no files
  fs::create_directory(fs::path(dir_) / "ckpt_99");                 // not our naming
  fs::copy(checkpoint_dir(dir_, 40), fs::path(dir_) / "ckpt_00000070", fs::copy_options::recursive);
  fs::remove(fs::path(dir_) / "ckpt_00000070" / "state.json");  // incomplete: missing state
  EXPECT_EQ(latest_checkpoint(dir_), checkpoint_dir(dir_, 40));
  const auto all = list_checkpoints(dir_);
  ASSERT_EQ(all.size(), 3u);
  EXPECT_EQ(all[0].first, 5);
  EXPECT_EQ(all[1].first, 12);
  EXPECT_EQ(all[2].first, 40);
  EXPECT_EQ(load_checkpoint(latest_checkpoint(dir_)).state["step"], 40);
}

TEST_F(CheckpointTest, PruneKeepsTheRunsNewestAndNeverAnotherRunsCheckpoints) {
  const std::string run = new_run_id(), other = new_run_id();
  ASSERT_NE(run, other);
  EXPECT_EQ(run.size(), 16u);
  const auto save = [&](int64_t step, const std::string& id) {
    CheckpointContents c = make_contents(static_cast<unsigned>(step));
    if (!id.empty()) c.state["run_id"] = id;
    save_checkpoint(dir_, step, c);
  };
  for (int64_t step : {10, 20, 30, 40}) save(step, run);
  save(5, other);   // another run's, older
  save(50, other);  // another run's, newer
  save(7, "");      // written before run ids: nobody's
  EXPECT_EQ(checkpoint_run_id(checkpoint_dir(dir_, 40)), run);
  EXPECT_EQ(checkpoint_run_id(checkpoint_dir(dir_, 7)), "");
  fs::create_directory(fs::path(dir_) / ".ckpt_00000060.tmp.1.0");
  prune_checkpoints(dir_, 0, run);  // keeps all
  EXPECT_EQ(list_checkpoints(dir_).size(), 7u);
  prune_checkpoints(dir_, 2, run);
  EXPECT_EQ(entries(), (std::vector<std::string>{".ckpt_00000060.tmp.1.0", "ckpt_00000005", "ckpt_00000007",
                                                 "ckpt_00000030", "ckpt_00000040", "ckpt_00000050"}));
  prune_checkpoints(dir_, 1, run, /*keep_also=*/checkpoint_dir(dir_, 30));
  EXPECT_EQ(list_checkpoints(dir_).size(), 5u);
  prune_checkpoints(dir_, 1, other);
  EXPECT_EQ(entries(), (std::vector<std::string>{".ckpt_00000060.tmp.1.0", "ckpt_00000007", "ckpt_00000030",
                                                 "ckpt_00000040", "ckpt_00000050"}));
  EXPECT_THROW(prune_checkpoints(dir_, -1, run), Error);
  EXPECT_THROW(prune_checkpoints(dir_, 1, ""), Error);
}

TEST_F(CheckpointTest, BadInputsThrow) {
  CheckpointContents c = make_contents(1);
  EXPECT_THROW(save_checkpoint(dir_, -1, c), Error);
  EXPECT_THROW(save_checkpoint(dir_, 100000000, c), Error);
  c.state["step"] = 3;
  EXPECT_THROW(save_checkpoint(dir_, 4, c), Error);
  c.state = nlohmann::json::array({1, 2});
  EXPECT_THROW(save_checkpoint(dir_, 4, c), Error);
  EXPECT_TRUE(entries().empty());
  const std::string missing = (fs::path(dir_) / "ckpt_00000001").string();
  try {
    load_checkpoint(missing);
    ADD_FAILURE() << "loaded a missing checkpoint";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(missing), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace loom
