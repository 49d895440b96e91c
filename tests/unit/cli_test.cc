// Bad input through the real command-line tool: each case must print a clear error naming the file or field,
// exit non-zero, and never crash.
#include <gtest/gtest.h>

#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <fstream>

#include "core/token_shards.h"
#include "tests/common/test_util.h"

namespace loom {
namespace {

using testing::run_loom;

void write_text(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

std::string config_text(const std::string& train_pattern, const std::string& extra_model = "") {
  return "model: {kind: gpt, n_layer: 1, d_model: 8, n_head: 2, vocab_size: 50, max_seq_len: 8" + extra_model +
         "}\ndata: {train: \"" + train_pattern + "\", batch_size: 2, seq_len: 4}\n"
         "train: {max_steps: 2, progress: false, device: cpu, out_dir: \"" +
         std::filesystem::path(train_pattern).parent_path().string() + "/run\"}\n";
}

TEST(Cli, UnknownConfigKeyIsRejected) {
  testing::TempDir dir;
  write_text(dir / "c.yaml", config_text(dir / "x.bin") + "optim: {learning_rate: 0.1}\n");
  const testing::CommandOutcome o = run_loom("train " + dir / "c.yaml");
  EXPECT_EQ(o.status, 1) << o.output;
  EXPECT_NE(o.output.find("c.yaml"), std::string::npos) << o.output;
  EXPECT_NE(o.output.find("optim.learning_rate"), std::string::npos) << o.output;
}

TEST(Cli, WrongTypeIsRejected) {
  testing::TempDir dir;
  write_text(dir / "c.yaml", config_text(dir / "x.bin") + "optim: {warmup_steps: ten}\n");
  const testing::CommandOutcome o = run_loom("train " + dir / "c.yaml");
  EXPECT_EQ(o.status, 1) << o.output;
  EXPECT_NE(o.output.find("optim.warmup_steps"), std::string::npos) << o.output;
}

TEST(Cli, MissingDataFileIsReported) {
  testing::TempDir dir;
  write_text(dir / "c.yaml", config_text(dir / "missing_*.bin"));
  const testing::CommandOutcome o = run_loom("train " + dir / "c.yaml");
  EXPECT_EQ(o.status, 1) << o.output;
  EXPECT_NE(o.output.find("data.train"), std::string::npos) << o.output;
  EXPECT_NE(o.output.find("missing_*.bin"), std::string::npos) << o.output;
}

TEST(Cli, CorruptShardIsReported) {
  testing::TempDir dir;
  std::vector<int32_t> tokens(100);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<int32_t>(i % 50);
  write_shard(dir / "train_000000.bin", tokens);
  {  // overwrite the magic number
    std::fstream f(dir / "train_000000.bin", std::ios::in | std::ios::out | std::ios::binary);
    const int32_t bad = 12345;
    f.write(reinterpret_cast<const char*>(&bad), 4);
  }
  write_text(dir / "c.yaml", config_text(dir / "train_*.bin"));
  const testing::CommandOutcome o = run_loom("train " + dir / "c.yaml");
  EXPECT_EQ(o.status, 1) << o.output;
  EXPECT_NE(o.output.find("train_000000.bin"), std::string::npos) << o.output;
}

TEST(Cli, TruncatedInitialWeightsAreReported) {
  testing::TempDir dir;
  std::vector<int32_t> tokens(100, 3);
  write_shard(dir / "train_000000.bin", tokens);
  write_text(dir / "w.safetensors", std::string("\x40\x00\x00\x00\x00\x00\x00\x00{\"a\":", 13));
  write_text(dir / "c.yaml", config_text(dir / "train_*.bin", ", init_from: \"" + dir / "w.safetensors" + "\""));
  const testing::CommandOutcome o = run_loom("train " + dir / "c.yaml");
  EXPECT_EQ(o.status, 1) << o.output;
  EXPECT_NE(o.output.find("w.safetensors"), std::string::npos) << o.output;
}

TEST(Cli, TrainsAndSamplesFromACheckpoint) {
  testing::TempDir dir;
  std::vector<int32_t> tokens(400);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<int32_t>((i * 7) % 50);
  write_shard(dir / "train_000000.bin", tokens);
  write_text(dir / "c.yaml", config_text(dir / "train_*.bin"));
  const testing::CommandOutcome o = run_loom("train " + dir / "c.yaml" + " train.max_steps=3");
  ASSERT_EQ(o.status, 0) << o.output;
  EXPECT_NE(o.output.find("done: 3 steps"), std::string::npos) << o.output;
  EXPECT_TRUE(std::filesystem::exists(dir / "run/ckpt_00000003/model.safetensors"));
}

}  // namespace
}  // namespace loom
