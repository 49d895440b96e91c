// Bad input through the real command-line tool: each case must print a clear error naming the file or field,
// exit non-zero, and never crash.
#include <gtest/gtest.h>

#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "core/idx.h"
#include "core/safetensors.h"
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

nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  return nlohmann::json::parse(in);
}

// export-hf writes a folder GPT2LMHeadModel.from_pretrained loads: the weights under GPT-2's names and a
// config.json with the model's widths (tests/gpu/check_exports.py loads it with transformers).
TEST(Cli, ExportHfWritesAFolderWithConfigJson) {
  testing::TempDir dir;
  std::vector<int32_t> tokens(400);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<int32_t>((i * 7) % 50);
  write_shard(dir / "train_000000.bin", tokens);
  write_text(dir / "c.yaml", config_text(dir / "train_*.bin"));
  ASSERT_EQ(run_loom("train " + dir / "c.yaml" + " train.max_steps=2").status, 0);
  const testing::CommandOutcome o = run_loom("export-hf --checkpoint " + dir / "run/ckpt_00000002" + " --out " + dir / "hf");
  ASSERT_EQ(o.status, 0) << o.output;
  const nlohmann::json config = read_json(dir / "hf/config.json");
  EXPECT_EQ(config["model_type"], "gpt2");
  EXPECT_EQ(config["architectures"], nlohmann::json::array({"GPT2LMHeadModel"}));
  EXPECT_EQ(config["vocab_size"], 50);
  EXPECT_EQ(config["n_positions"], 8);
  EXPECT_EQ(config["n_embd"], 8);
  EXPECT_EQ(config["n_layer"], 1);
  EXPECT_EQ(config["n_head"], 2);
  EXPECT_EQ(config["n_inner"], 32);
  EXPECT_EQ(config["activation_function"], "gelu_new");
  EXPECT_EQ(config["tie_word_embeddings"], true);
  const auto weights = safetensors::read(dir / "hf/model.safetensors");
  bool has_wte = false;
  for (const auto& [name, t] : weights.tensors)
    if (name == "wte.weight") has_wte = t.shape() == Shape{50, 8};
  EXPECT_TRUE(has_wte);
  const testing::CommandOutcome file = run_loom("export-hf --checkpoint " + dir / "run/ckpt_00000002" + " --out " + dir / "x.safetensors");
  EXPECT_EQ(file.status, 1);
  EXPECT_NE(file.output.find("names a folder"), std::string::npos) << file.output;
}

// export-timm: a ViT checkpoint in timm's names and shapes, with timm's Hub config.json.
TEST(Cli, ExportTimmWritesTimmNamesAndConfig) {
  testing::TempDir dir;
  IdxImages images{16, 8, 8, {}};
  std::vector<uint8_t> labels(16);
  for (int i = 0; i < 16 * 64; ++i) images.pixels.push_back(static_cast<uint8_t>(i * 37));
  for (int i = 0; i < 16; ++i) labels[i] = static_cast<uint8_t>(i % 3);
  write_idx_images(dir / "images.idx", images);
  write_idx_labels(dir / "labels.idx", labels);
  write_text(dir / "v.yaml",
             "model: {kind: vit, n_layer: 1, d_model: 8, n_head: 2, mlp_dim: 16, image_size: 8, patch_size: 4, "
             "num_classes: 3, distilled: true}\n"
             "data: {train: \"" + dir / "images.idx" + "\", train_labels: \"" + dir / "labels.idx" +
                 "\", batch_size: 4, mean: [0.5], std: [0.25]}\n"
             "train: {max_steps: 2, progress: false, device: cpu, out_dir: \"" + dir / "run" + "\"}\n");
  ASSERT_EQ(run_loom("train " + dir / "v.yaml").status, 0);
  const testing::CommandOutcome o = run_loom("export-timm --checkpoint " + dir / "run/ckpt_00000002" + " --out " + dir / "timm");
  ASSERT_EQ(o.status, 0) << o.output;
  const nlohmann::json config = read_json(dir / "timm/config.json");
  EXPECT_EQ(config["architecture"], "deit_base_distilled_patch16_224");
  const nlohmann::json& args = config["model_args"];
  EXPECT_EQ(args["img_size"], 8);
  EXPECT_EQ(args["patch_size"], 4);
  EXPECT_EQ(args["in_chans"], 1);
  EXPECT_EQ(args["num_classes"], 3);
  EXPECT_EQ(args["embed_dim"], 8);
  EXPECT_EQ(args["depth"], 1);
  EXPECT_EQ(args["num_heads"], 2);
  EXPECT_EQ(args["mlp_ratio"], 2.0);
  EXPECT_EQ(config["pretrained_cfg"]["mean"], nlohmann::json::array({0.5}));
  std::map<std::string, Shape> shapes;
  for (const auto& [name, t] : safetensors::read(dir / "timm/model.safetensors").tensors) shapes[name] = t.shape();
  EXPECT_EQ(shapes["pos_embed"], (Shape{1, 6, 8}));  // 4 patches, class and distillation tokens
  EXPECT_EQ(shapes["patch_embed.proj.weight"], (Shape{8, 1, 4, 4}));
  EXPECT_EQ(shapes["head_dist.weight"], (Shape{3, 8}));
  const testing::CommandOutcome missing = run_loom("export-timm --checkpoint " + dir / "nowhere" + " --out " + dir / "t2");
  EXPECT_EQ(missing.status, 1);
  EXPECT_NE(missing.output.find(dir / "nowhere"), std::string::npos) << missing.output;
}

}  // namespace
}  // namespace loom
