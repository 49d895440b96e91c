// Checkpoints carry their model's shape (model.json): a GPT with uneven per-block widths (4, 2 and 3 heads,
// MLP 96/64/128, q/k != v dims) trains, resumes bit-exactly, samples, exports and reloads through
// model.init_from with no widths in the YAML; a config that disagrees names both values; HF GPT-2 export of
// uneven widths points to `loom export`; a ViT starts from its own checkpoint's model.safetensors and trains.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/checkpoint.h"
#include "core/config.h"
#include "core/idx.h"
#include "core/token_shards.h"
#include "tests/common/test_util.h"
#include "trainer/models/structure_map.h"
#include "trainer/run.h"

namespace loom {
namespace {

using testing::run_loom;

const char* kUnevenGpt =
    "model: {kind: gpt, n_layer: 3, d_model: 16, n_head: 4, vocab_size: 64, max_seq_len: 8,\n"
    "        blocks: [{heads: 4, qk_head_dim: 4, v_head_dim: 3, mlp_dim: 96},\n"
    "                 {heads: 2, qk_head_dim: 6, v_head_dim: 5, mlp_dim: 64},\n"
    "                 {heads: 3, qk_head_dim: 4, v_head_dim: 2, mlp_dim: 128}]}\n";

// data and train sections for a GPT run on `shard` writing into `out_dir`.
std::string gpt_run(const std::string& shard, const std::string& out_dir, int steps, const std::string& extra = "") {
  std::ostringstream y;
  y << "data: {train: \"" << shard << "\", batch_size: 2, seq_len: 8, tokenizer: \"" << LOOM_SOURCE_DIR
    << "/data/gpt2\"}\n"
    << "optim: {lr: 0.01, warmup_steps: 1}\n"
    << "train: {max_steps: " << steps << ", log_every: 1, out_dir: \"" << out_dir
    << "\", progress: false, device: cpu, checkpoint_every: 3, keep_checkpoints: 10, val_batches: 1" << extra << "}\n";
  return y.str();
}

std::string write_tokens(const testing::TempDir& dir) {
  std::vector<int32_t> tokens(3000);
  PhiloxStream rng(11, 0);
  for (auto& t : tokens) t = static_cast<int32_t>(rng.below(64));
  write_shard(dir / "train_000000.bin", tokens);
  return dir / "train_*.bin";
}

std::map<int64_t, double> train_losses(const std::string& metrics_path) {
  std::map<int64_t, double> out;
  std::ifstream in(metrics_path);
  std::string line;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line);
    if (j.contains("loss") && j.contains("step")) out[j["step"].get<int64_t>()] = j["loss"].get<double>();
  }
  return out;
}

void expect_same_tensors(const NamedTensors& a, const NamedTensors& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    ASSERT_EQ(a[i].first, b[i].first);
    ASSERT_EQ(a[i].second.shape(), b[i].second.shape()) << a[i].first;
    const Tensor x = a[i].second.cast(DType::F32), y = b[i].second.cast(DType::F32);
    ASSERT_EQ(0, std::memcmp(x.raw(), y.raw(), x.nbytes())) << a[i].first << " differs";
  }
}

TEST(ModelCheckpoint, UnevenGptTrainsResumesSamplesAndReloadsWithoutWidthsInTheYaml) {
  testing::TempDir dir("uneven_gpt");
  const std::string shard = write_tokens(dir);
  std::ostringstream log;
  run_training(parse_run_config(std::string(kUnevenGpt) + gpt_run(shard, dir / "straight", 6), "straight.yaml"), log);
  const std::string ckpt3 = checkpoint_dir(dir / "straight", 3), ckpt6 = checkpoint_dir(dir / "straight", 6);
  ASSERT_TRUE(std::filesystem::is_regular_file(ckpt3 + "/model.json")) << log.str();
  const CheckpointContents saved = load_checkpoint(ckpt6);
  const ModelShape shape = model_shape_from_json(saved.model_shape, ckpt6 + "/model.json");
  EXPECT_EQ(shape, model_shape_from_config(
                       parse_run_config(std::string(kUnevenGpt) + gpt_run(shard, "x", 1), "uneven").model()));
  EXPECT_EQ(shape.blocks[1], (BlockWidths{2, 6, 5, 64, 1.0 / std::sqrt(6.0)}));

  // Resume from step 3 with a model section that names only the kind: bit-exact with the straight run.
  const std::string bare = "model: {kind: gpt}\n";
  run_training(parse_run_config(bare + gpt_run(shard, dir / "resumed", 6, ", resume: \"" + ckpt3 + "\""), "r.yaml"),
               log);
  const auto straight = train_losses(dir / "straight/metrics.jsonl");
  const auto resumed = train_losses(dir / "resumed/metrics.jsonl");
  ASSERT_EQ(resumed.size(), 3u) << log.str();
  for (const auto& [step, loss] : resumed) EXPECT_EQ(loss, straight.at(step)) << "step " << step;
  const CheckpointContents resumed6 = load_checkpoint(checkpoint_dir(dir / "resumed", 6));
  expect_same_tensors(resumed6.model, saved.model);
  expect_same_tensors(resumed6.optimizer, saved.optimizer);

  // A config that disagrees with the checkpoint is an error naming both values.
  EXPECT_EQ(testing::error_message([&] {
              resolve_model_shape(parse_run_config(
                  "model: {kind: gpt, n_head: 4}\n" + gpt_run(shard, dir / "bad", 6, ", resume: \"" + ckpt3 + "\""),
                  "bad.yaml"));
            }),
            "model.n_head (for blocks[1].heads) is 4 in the config but 2 in " + ckpt3 + "/model.json");

  // Sampling and export read the shape from the checkpoint.
  // (A prompt inside the 64-token vocabulary: "!" is GPT-2 token 0.)
  const testing::CommandOutcome sample = run_loom("sample --checkpoint " + ckpt6 + " --tokens 5 --prompt \"!\"");
  EXPECT_EQ(sample.status, 0) << sample.output;
  EXPECT_EQ(sample.output.rfind("!", 0), 0u) << sample.output;
  const testing::CommandOutcome hf = run_loom("export-hf --checkpoint " + ckpt6 + " --out " + dir / "hf.safetensors");
  EXPECT_EQ(hf.status, 1) << hf.output;
  EXPECT_NE(hf.output.find("Hugging Face GPT-2 cannot represent per-block widths"), std::string::npos) << hf.output;
  EXPECT_NE(hf.output.find("loom export"), std::string::npos) << hf.output;
  const testing::CommandOutcome own = run_loom("export --checkpoint " + ckpt6 + " --out " + dir / "exported");
  ASSERT_EQ(own.status, 0) << own.output;
  std::ifstream section_file(dir / "exported/model.yaml");
  std::stringstream section;
  section << section_file.rdbuf();
  const config::RunConfig from_yaml = parse_run_config(section.str() + gpt_run(shard, dir / "y", 1), "model.yaml");
  EXPECT_EQ(model_shape_from_config(from_yaml.model()), shape);

  // model.init_from: the file's shape builds the model, and its weights are loaded.
  const config::RunConfig init = parse_run_config(
      "model: {kind: gpt, init_from: \"" + ckpt6 + "/model.safetensors\"}\n" + gpt_run(shard, dir / "init", 2),
      "init.yaml");
  auto backend = make_backend(Device::cpu());
  auto model = build_model(init, *backend, DType::F32);
  EXPECT_EQ(model->shape(), shape);
  expect_same_tensors(model->params().named_master_weights(), saved.model);
  const TrainResult r = run_training(init, log);
  EXPECT_EQ(r.steps_done, 2);
  EXPECT_TRUE(std::isfinite(r.last_train_loss));
}

TEST(ModelCheckpoint, ShrunkCheckpointResumesWithItsSlicedMomentsAndShape) {
  testing::TempDir dir("shrunk_gpt");
  const std::string shard = write_tokens(dir);
  std::ostringstream log;
  run_training(parse_run_config(std::string(kUnevenGpt) + gpt_run(shard, dir / "full", 3), "full.yaml"), log);
  const CheckpointContents full = load_checkpoint(checkpoint_dir(dir / "full", 3));
  const ModelShape shape = model_shape_from_json(full.model_shape, "model.json");
  const AxisSelection sel = {{"blocks.0.heads", {0, 2, 3}},
                             {"blocks.2.mlp", {1, 2, 3, 4, 5, 6, 7, 8}},
                             {"blocks.1.qk_dims", {0, 1, 2, 5}},
                             {"embedding", {0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 12}}};
  const CheckpointContents small = shrink_checkpoint(full, shape, sel);
  save_checkpoint(dir / "small", 3, small);
  const ModelShape small_shape = model_shape_from_json(small.model_shape, "small");
  EXPECT_EQ(small_shape.d_model, 11);
  EXPECT_EQ(small_shape.blocks[0].heads, 3);
  EXPECT_EQ(small_shape.blocks[1].qk_dim, 4);
  EXPECT_EQ(small_shape.blocks[1].scale(), 1.0 / std::sqrt(6.0));
  EXPECT_EQ(small_shape.blocks[2].mlp_dim, 8);
  // The moments are the same slices as the weights: neuron 1 of block 2 is the first row left.
  for (const auto& [name, t] : small.optimizer)
    if (name == "optim.m.blocks.2.mlp.fc1.weight") {
      const Tensor& before = std::find_if(full.optimizer.begin(), full.optimizer.end(), [](const auto& p) {
                               return p.first == "optim.m.blocks.2.mlp.fc1.weight";
                             })->second;
      ASSERT_EQ(t.shape(), (Shape{8, 11}));
      EXPECT_EQ(t.item(0), before.item(16 + 0));
      EXPECT_EQ(t.item(10), before.item(16 + 12));  // channel 12 is the 11th kept
    }
  const TrainResult r = run_training(
      parse_run_config("model: {kind: gpt}\n" + gpt_run(shard, dir / "small", 6, ", resume: latest"), "small.yaml"),
      log);
  EXPECT_EQ(r.steps_done, 6) << log.str();
  EXPECT_TRUE(std::isfinite(r.last_train_loss));
  EXPECT_EQ(model_shape_from_json(load_checkpoint(checkpoint_dir(dir / "small", 6)).model_shape, "6"), small_shape);
}

TEST(ModelCheckpoint, VitStartsFromItsOwnCheckpointWeightsAndTrains) {
  testing::TempDir dir("vit_own");
  IdxImages images;
  images.count = 16;
  images.rows = images.cols = 8;
  PhiloxStream rng(4, 0);
  for (int64_t i = 0; i < 16 * 64; ++i) images.pixels.push_back(static_cast<uint8_t>(rng.below(256)));
  std::vector<uint8_t> labels;
  for (int i = 0; i < 16; ++i) labels.push_back(static_cast<uint8_t>(i % 3));
  write_idx_images(dir / "images.idx", images);
  write_idx_labels(dir / "labels.idx", labels);
  auto run = [&](const std::string& model, const std::string& out) {
    return "model: " + model + "\ndata: {train: \"" + dir / "images.idx" + "\", train_labels: \"" + dir / "labels.idx" +
           "\", batch_size: 4, crop_padding: 0, horizontal_flip: false}\n"
           "train: {max_steps: 2, log_every: 1, progress: false, device: cpu, val_batches: 1, out_dir: \"" +
           out + "\"}\n";
  };
  std::ostringstream log;
  run_training(parse_run_config(run("{kind: vit, n_layer: 2, d_model: 12, n_head: 3, image_size: 8, patch_size: 4, "
                                    "num_classes: 3, distilled: true, blocks: [{heads: 3, mlp_dim: 20}, "
                                    "{heads: 2, qk_head_dim: 2, v_head_dim: 6, mlp_dim: 8}]}",
                                    dir / "first"),
                                "first.yaml"),
               log);
  const std::string weights = checkpoint_dir(dir / "first", 2) + "/model.safetensors";
  const config::RunConfig again =
      parse_run_config(run("{kind: vit, init_from: \"" + weights + "\"}", dir / "second"), "again.yaml");
  auto backend = make_backend(Device::cpu());
  auto model = build_model(again, *backend, DType::F32);
  EXPECT_TRUE(model->shape().distilled);
  EXPECT_EQ(model->shape().blocks[1].v_dim, 6);
  expect_same_tensors(model->params().named_master_weights(), load_checkpoint(checkpoint_dir(dir / "first", 2)).model);
  const TrainResult r = run_training(again, log);
  EXPECT_EQ(r.steps_done, 2) << log.str();
  EXPECT_TRUE(std::isfinite(r.last_train_loss));
}

TEST(ModelCheckpoint, ShapeJsonIsValidated) {
  ModelShape s;
  s.kind = "gpt";
  s.vocab = 10;
  s.padded_vocab = pad_vocab(10);
  s.max_seq = 4;
  s.d_model = 8;
  s.blocks = {BlockWidths{2, 4, 3, 16, 0.5}};
  const nlohmann::json j = model_shape_to_json(s);
  EXPECT_EQ(model_shape_from_json(j, "m.json"), s);
  nlohmann::json bad = j;
  bad["blocks"][0]["heads"] = -1;
  EXPECT_EQ(testing::error_message([&] { model_shape_from_json(bad, "m.json"); }),
            "m.json: blocks[0]: \"heads\" must be a positive integer, got -1");
  bad = j;
  bad.erase("d_model");
  EXPECT_EQ(testing::error_message([&] { model_shape_from_json(bad, "m.json"); }), "m.json: missing \"d_model\"");
  EXPECT_EQ(model_shape_from_config(model_config_of_shape(s)), s);
}

}  // namespace
}  // namespace loom
