// Acceptance of a CPU pruning run of a tiny GPT on the linux-doc corpus (issue 14): trained here, a latency
// table timed on this CPU, then pruned to ≤ 0.5 of the table's prediction and fine-tuned through the same
// run_training path as `loom train`. The validation-loss increase against the unpruned model is reported and
// bounded (see the bound for why it is wide), and the dense checkpoint's parameters are what its widths imply.
#include <gtest/gtest.h>

#include <filesystem>
#include <iostream>
#include <sstream>

#include "core/checkpoint.h"
#include "core/config.h"
#include "kernels/backend.h"
#include "tests/common/test_util.h"
#include "trainer/pruning/latency_table.h"
#include "trainer/run.h"

namespace loom {
namespace {

// Parameters of a GPT of `s` from its widths: the tied token embedding (padded vocabulary), positions,
// blocks with their LayerNorms, the final LayerNorm.
int64_t gpt_parameters_from_widths(const ModelShape& s) {
  const int64_t E = s.d_model;
  int64_t n = s.padded_vocab * E + s.max_seq * E + 2 * E;
  for (const BlockWidths& w : s.blocks) {
    const int64_t qkv = w.heads * (2 * w.qk_dim + w.v_dim);
    n += 4 * E + E * qkv + qkv + w.heads * w.v_dim * E + E + E * w.mlp_dim + w.mlp_dim + w.mlp_dim * E + E;
  }
  return n;
}

TEST(PruningGptCorpus, HalfTheLatencyWithABoundedValidationLossIncrease) {
  const std::string root = LOOM_SOURCE_DIR;
  ASSERT_TRUE(std::filesystem::exists(root + "/data/linux-doc/val_000000.bin")) << "the corpus is missing";
  testing::TempDir dir("prune-gpt");
  const std::string data = "data.train=" + root + "/data/linux-doc/train_*.bin";
  const std::string val = "data.val=" + root + "/data/linux-doc/val_*.bin";
  std::ostringstream log;
  const TrainResult unpruned = run_training(
      load_run_config(root + "/configs/gpt_tiny.yaml",
                      // Width 192, not gpt_tiny's 128: the softmax over the 50257-token vocabulary costs the
                      // same at every width and no structure prunes it, so at width 128 it alone is more than
                      // half of a CPU step and a 0.5 target cannot be reached (measured here once: the smallest
                      // model the structures allow was predicted at 0.57 of the unpruned one, 0.37 at 192).
                      {data, val, "model.d_model=192", "train.out_dir=" + dir / "unpruned", "train.device=cpu",
                       "train.progress=false",
                       "train.max_steps=300", "train.val_every=0", "train.sample_every=0", "train.checkpoint_every=0",
                       "train.val_batches=32"}),
      log);
  ASSERT_FALSE(unpruned.last_checkpoint.empty()) << log.str();

  const std::string prune =
      "{latency_table: " + dir / "table.json" +
      ", latency_grid: {points_per_axis: 2, warmup: 1, repeats: 3}, embedding_group: 32, qk_group: 8, v_group: 8,"
      " mlp_group: 64, saliency_batches: 4, eta: 0, target_ratio: 0.5, every: 4, begin_step: 4, groups_per_step: 4}";
  const config::RunConfig cfg = parse_run_config(
      "model: {kind: gpt, init_from: " + unpruned.last_checkpoint + "/model.safetensors}\n"
      "data: {train: " + root + "/data/linux-doc/train_*.bin, val: " + root + "/data/linux-doc/val_*.bin, batch_size: 8, seq_len: 128}\n"
      "optim: {lr: 5.0e-4, warmup_steps: 0, weight_decay: 0.1, grad_clip: 1.0}\n"
      "train: {max_steps: 300, val_every: 0, val_batches: 32, log_every: 10, checkpoint_every: 0, sample_every: 0, "
      "progress: false, device: cpu, out_dir: " + dir / "pruned" + "}\n"
      "prune: " + prune + "\n",
      "prune_gpt.yaml");
  auto cpu = make_backend(Device::cpu());
  build_latency_table(cfg, *cpu).save(dir / "table.json");
  const TrainResult pruned = run_training(cfg, log);
  std::cout << log.str();
  ASSERT_FALSE(pruned.pruned_checkpoint.empty()) << "the target was never reached";
  const double increase = pruned.last_val_loss - unpruned.last_val_loss;
  std::cout << "val loss: unpruned " << unpruned.last_val_loss << ", pruned + fine-tuned " << pruned.last_val_loss
            << " (increase " << increase << ")\n";
  // Where the run lands is decided by the CPU latency table's noise, not by the planner: at width 192 the
  // vocabulary's logits and softmax are most of a step, so 0.5 is reached only with every block at its
  // smallest widths, and that model at embedding 64 is predicted within a few percent of 0.5 (0.49-0.51 in the
  // CI runs of 2026-12-07). Below 0.5 the run stops there (+0.29 of 6.34, two runs); above it the only unit left
  // is an embedding group, so it goes on to embedding 32 (+1.05, one run). Both are the pruner doing its job,
  // so the bound covers the smaller landing, the smallest model these widths allow.
  EXPECT_LE(increase, 1.2);

  const CheckpointContents dense = load_checkpoint(pruned.pruned_checkpoint);
  const ModelShape small = model_shape_from_json(dense.model_shape, pruned.pruned_checkpoint + "/model.json");
  int64_t stored = 0;
  for (const auto& [name, t] : dense.model) stored += t.numel();
  EXPECT_EQ(stored, gpt_parameters_from_widths(small));
  const LatencyTable table = LatencyTable::load(dir / "table.json");
  const ModelShape full =
      model_shape_from_json(load_checkpoint(unpruned.last_checkpoint).model_shape, "unpruned model.json");
  EXPECT_LE(table.model_ms(small.d_model, small.blocks), 0.5 * table.model_ms(full.d_model, full.blocks));
}

}  // namespace
}  // namespace loom
