// Acceptance of a CPU pruning run (issue 14) on the real Fashion-MNIST files (Debian's dataset-fashion-mnist):
// a tiny ViT trained here, a latency table timed on this CPU, then `loom train` with a prune: section (the
// same run_training path) prunes it to ≤ 0.5 of the table's prediction and fine-tunes. Checked: the test
// accuracy (all 10,000 images) drops by at most 1.5 points against the unpruned model; the result is a dense
// checkpoint whose parameter count is what its widths imply; it trains on and resumes bit-exact.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include "core/checkpoint.h"
#include "core/config.h"
#include "core/safetensors.h"
#include "kernels/backend.h"
#include "tests/common/test_util.h"
#include "trainer/pruning/latency_table.h"
#include "trainer/run.h"

namespace loom {
namespace {

const char* kImages = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz";

// Parameters of a ViT of `s` counted from its widths (patch embedding, class token, positions, blocks with
// their LayerNorms, the final LayerNorm and the head), independently of the model code.
int64_t vit_parameters_from_widths(const ModelShape& s) {
  const int64_t E = s.d_model;
  int64_t n = s.patch_dim() * E + E + s.prefix_tokens() * E + s.tokens() * E + 2 * E + E * s.num_classes +
              s.num_classes;
  for (const BlockWidths& w : s.blocks) {
    const int64_t qkv = w.heads * (2 * w.qk_dim + w.v_dim);
    n += 4 * E + E * qkv + qkv + w.heads * w.v_dim * E + E + E * w.mlp_dim + w.mlp_dim + w.mlp_dim * E + E;
  }
  return n;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

TEST(PruningVitFashionMnist, HalfTheLatencyWithinOneAndAHalfPointsThenDenseTrainsAndResumes) {
  ASSERT_TRUE(std::filesystem::exists(kImages))
      << "Fashion-MNIST is missing: run scripts/setup.sh (Debian package dataset-fashion-mnist)";
  testing::TempDir dir("prune-vit");
  // 1. The unpruned model (configs/vit_tiny_fmnist.yaml, a shorter run), evaluated on the whole test set.
  const std::string base = std::string(LOOM_SOURCE_DIR) + "/configs/vit_tiny_fmnist.yaml";
  std::ostringstream log;
  const TrainResult unpruned = run_training(
      load_run_config(base, {"train.out_dir=" + dir / "unpruned", "train.device=cpu", "train.progress=false",
                             "train.max_steps=400", "train.val_every=0", "train.log_every=100", "data.batch_size=64",
                             "train.checkpoint_every=0", "optim.warmup_steps=50"}),
      log);
  ASSERT_FALSE(unpruned.last_checkpoint.empty()) << log.str();
  const std::string init = unpruned.last_checkpoint + "/model.safetensors";

  // 2. The latency table on this CPU and 3. the pruning run: configs/prune_vit_fmnist.yaml, with the
  // checkpoint and table of this test, a faster schedule and a shorter fine-tuning.
  const std::string prune_config = std::string(LOOM_SOURCE_DIR) + "/configs/prune_vit_fmnist.yaml";
  const std::vector<std::string> overrides = {"model.init_from=" + init,
                                              "prune.latency_table=" + dir / "table.json",
                                              "prune.latency_grid.points_per_axis=2",
                                              "prune.latency_grid.repeats=3",
                                              "train.out_dir=" + dir / "pruned",
                                              "train.device=cpu",
                                              "train.progress=false",
                                              "train.max_steps=300",
                                              "data.batch_size=64",
                                              "train.val_every=0",
                                              "prune.begin_step=5",
                                              "prune.every=5",
                                              "prune.saliency_batches=5"};
  const config::RunConfig cfg = load_run_config(prune_config, overrides);
  auto cpu = make_backend(Device::cpu());
  build_latency_table(cfg, *cpu).save(dir / "table.json");
  const TrainResult pruned = run_training(cfg, log);
  std::cout << log.str();
  ASSERT_FALSE(pruned.pruned_checkpoint.empty()) << "the target was never reached";
  EXPECT_EQ(pruned.steps_done, 300);
  const double drop = 100 * (unpruned.last_val_accuracy - pruned.last_val_accuracy);
  std::cout << "test accuracy: unpruned " << unpruned.last_val_accuracy << ", pruned + fine-tuned "
            << pruned.last_val_accuracy << " (drop " << drop << " points)\n";
  EXPECT_LE(drop, 1.5);

  // The dense checkpoint: smaller widths, predicted ≤ 0.5, and exactly the parameters its widths imply.
  const CheckpointContents dense = load_checkpoint(pruned.pruned_checkpoint);
  const ModelShape small = model_shape_from_json(dense.model_shape, pruned.pruned_checkpoint + "/model.json");
  const CheckpointContents original = load_checkpoint(unpruned.last_checkpoint);
  const ModelShape full = model_shape_from_json(original.model_shape, "unpruned model.json");
  const LatencyTable table = LatencyTable::load(dir / "table.json");
  EXPECT_LE(table.model_ms(small.d_model, small.blocks), 0.5 * table.model_ms(full.d_model, full.blocks));
  int64_t stored = 0;
  for (const auto& [name, t] : dense.model) stored += t.numel();
  EXPECT_EQ(stored, vit_parameters_from_widths(small));
  EXPECT_LT(stored, vit_parameters_from_widths(full));
  EXPECT_EQ(dense.optimizer.size(), 2 * dense.model.size());

  // 4. It trains and resumes bit-exact: 4 steps from the dense checkpoint in one go, and 2 + 2 with a resume,
  // give the same bytes (no prune: section: the checkpoint alone describes the model).
  const int64_t s = pruned.pruned_checkpoint.empty() ? 0 : dense.state["step"].get<int64_t>();
  // A checkpoint after every step, all kept: the target may be reached at an odd step.
  auto continue_from = [&](const std::string& resume, const std::string& out, int64_t steps) {
    config::RunConfig c = load_run_config(base, {"train.out_dir=" + out, "train.device=cpu", "train.progress=false",
                                                 "train.resume=" + resume, "train.val_every=0", "data.batch_size=64",
                                                 "train.max_steps=" + std::to_string(steps),
                                                 "train.checkpoint_every=1", "train.keep_checkpoints=0"});
    c.mutable_model()->clear_n_layer();
    c.mutable_model()->clear_d_model();
    c.mutable_model()->clear_n_head();
    c.mutable_model()->clear_mlp_dim();
    return run_training(c, log);
  };
  const TrainResult straight = continue_from(pruned.pruned_checkpoint, dir / "straight", s + 4);
  const std::string half = checkpoint_dir(dir / "straight", s + 2);
  const TrainResult resumed = continue_from(half, dir / "resumed", s + 4);
  ASSERT_EQ(straight.steps_done, s + 4);
  ASSERT_EQ(resumed.steps_done, s + 4);
  EXPECT_EQ(read_file(straight.last_checkpoint + "/model.safetensors"),
            read_file(resumed.last_checkpoint + "/model.safetensors"));
  EXPECT_EQ(read_file(straight.last_checkpoint + "/optimizer.safetensors"),
            read_file(resumed.last_checkpoint + "/optimizer.safetensors"));
}

}  // namespace
}  // namespace loom
