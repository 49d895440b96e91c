// 50 training steps through the real trainer (train_on_mesh, as `loom train` runs) on the CUDA backend track
// the same run on the CPU backend: same config, seed and data files, for a small GPT (a learnable token stream)
// and a small DeiT (images whose class is a brighter quadrant). Compared: the loss of every step (from
// metrics.jsonl) and the final validation loss; and the loss must fall well below its start, so agreement is
// not that of two runs that learn nothing.
//
// Tolerances. f32 on the GPU (cuBLAS without TF32) differs from the CPU in summation order and the last bits of
// exp/tanh/rsqrt, ~1e-7 of each result: perturbing every op's output on the CPU by a random 1.2e-7 relative moved these
// runs' losses by at most 2.6e-7 relative over the 50 steps, so 1e-3 is a wide margin. bf16 rounds every activation,
// gradient and compute weight to 8 significant bits (unit roundoff 2^-9 ≈ 2e-3); AdamW (which normalises each update)
// turns that into slightly different steps, and the runs drift apart. Emulating bf16 storage on the CPU backend (every
// op's output and every weight it reads rounded to bf16) for these very configs drifted at most 1.8e-3·loss (GPT) and
// 8.5e-3·loss (ViT; 7.1e-3 absolute) from the f32 run over the 50 steps. The bound, |Δ| ≤ 3e-2·|loss| + 1e-2, is three
// times the worst of those, leaving room for what the emulation lacks (flash attention's bf16 probabilities, other
// summation orders). A higher learning rate would make the runs chaotic (at lr 6e-3 the emulated ViT drifted 19 % at
// some steps), so the configs train gently; the loss still falls by more than 40 % (the CPU runs: GPT to 0.25 of its
// start, ViT to 0.46), and a GPU run that trains wrongly (a bad gradient, a dropped update) leaves the band within a
// few steps.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <ostream>
#include <sstream>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/idx.h"
#include "core/rng.h"
#include "core/token_shards.h"
#include "kernels/backend.h"
#include "tests/common/test_util.h"
#include "trainer/run.h"

namespace loom::testing {
namespace {

constexpr int kSteps = 50;
constexpr int kVocab = 96;
constexpr int kSeq = 32;

// A token stream with structure to learn: the next token is (5·t + 11) mod V with probability 0.85, uniform
// otherwise (the best possible loss is its entropy, ≈ 1.1 nats, against ln 96 ≈ 4.56 at the start).
std::vector<int32_t> token_stream(int64_t n, uint64_t seed) {
  PhiloxStream rng(seed, 0);
  std::vector<int32_t> tokens(static_cast<size_t>(n));
  int32_t t = 0;
  for (auto& x : tokens) {
    t = rng.uniform() < 0.85f ? (5 * t + 11) % kVocab : static_cast<int32_t>(rng.below(kVocab));
    x = t;
  }
  return tokens;
}

// 8x8 grey images of 4 classes: noise, with the quadrant numbered by the class brighter (one 4x4 patch: a
// pattern LayerNorm keeps, unlike a global brightness), so the task is easily learnable.
void write_images(const std::string& images_path, const std::string& labels_path, int64_t count, uint64_t seed) {
  PhiloxStream rng(seed, 1);
  IdxImages images{count, 8, 8, {}};
  std::vector<uint8_t> labels(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) {
    labels[i] = static_cast<uint8_t>(rng.below(4));
    for (int y = 0; y < 8; ++y)
      for (int x = 0; x < 8; ++x) {
        const bool bright = (y / 4) * 2 + x / 4 == labels[i];
        images.pixels.push_back(static_cast<uint8_t>(rng.below(128) + (bright ? 112 : 0)));
      }
  }
  write_idx_images(images_path, images);
  write_idx_labels(labels_path, labels);
}

// The data files and every run's out_dir, shared by all tests of this file (the CPU reference runs once).
const TempDir& work_dir() {
  static const TempDir dir("cuda_tracks_cpu");
  static const bool written = [] {
    write_shard(dir / "train_000.bin", token_stream(8192 + 1, 1));
    write_shard(dir / "val_000.bin", token_stream(1024 + 1, 2));
    write_images(dir / "train_images.idx", dir / "train_labels.idx", 256, 3);
    write_images(dir / "val_images.idx", dir / "val_labels.idx", 64, 4);
    return true;
  }();
  (void)written;
  return dir;
}

config::RunConfig make_config(const std::string& kind, const std::string& device, const std::string& dtype) {
  const TempDir& d = work_dir();
  std::ostringstream y;
  if (kind == "gpt") {
    // Unequal (pruned-like) blocks; every head dim a multiple of 8, so bf16 attention takes the flash kernels.
    y << "model: {kind: gpt, n_layer: 2, d_model: 64, n_head: 4, vocab_size: " << kVocab << ", max_seq_len: " << kSeq
      << ",\n        blocks: [{heads: 4, mlp_dim: 128}, {heads: 2, qk_head_dim: 16, v_head_dim: 24, mlp_dim: 96}],"
      << " init_std: 0.05}\n"
      << "data: {train: '" << d / "train_*.bin" << "', val: '" << d / "val_*.bin" << "', seq_len: " << kSeq
      << ", batch_size: 8}\n"
      << "optim: {lr: 0.01, warmup_steps: 5";
  } else {
    // DeiT with its distillation head; the second block's v head dim 12 takes the plain attention kernel.
    y << "model: {kind: vit, n_layer: 2, d_model: 32, n_head: 4, mlp_dim: 64, image_size: 8, patch_size: 4,"
      << " in_channels: 1, num_classes: 4, distilled: true,\n"
      << "        blocks: [{heads: 4}, {heads: 2, qk_head_dim: 16, v_head_dim: 12, mlp_dim: 48}]}\n"
      << "data: {train: '" << d / "train_images.idx" << "', train_labels: '" << d / "train_labels.idx"
      << "', val: '" << d / "val_images.idx" << "', val_labels: '" << d / "val_labels.idx"
      << "', crop_padding: 0, horizontal_flip: false, batch_size: 32}\n"
      << "optim: {lr: 0.003, warmup_steps: 5";
  }
  // eps 1e-6 rather than 1e-8: gradients that are zero in exact arithmetic (the key bias: softmax ignores a
  // per-query constant) are rounding noise that differs between backends, and a tiny eps would turn that noise
  // into full-size AdamW steps.
  y << ", weight_decay: 0.1, grad_clip: 1.0, eps: 1.0e-6}\n"
    << "train: {max_steps: " << kSteps << ", device: " << device << ", dtype: " << dtype
    << ", deterministic: true, seed: 17, progress: false, log_every: 10, val_batches: 4,"
    << " out_dir: '" << d / (kind + "_" + device + "_" + dtype) << "'}\n";
  return parse_run_config(y.str(), kind + "_" + device + "_" + dtype);
}

struct RunLosses {
  std::vector<double> train;  // train[i]: the loss of step i + 1
  double val = -1;            // the validation loss after the last step
  std::string log;
};

RunLosses train_and_read_losses(const config::RunConfig& cfg) {
  RunLosses out;
  std::filesystem::remove_all(cfg.train().out_dir());  // metrics.jsonl appends; start clean (--gtest_repeat)
  std::ostringstream log;
  const TrainResult r = train_on_mesh(cfg, log, {}, nullptr);
  out.log = log.str();
  EXPECT_EQ(r.steps_done, kSteps) << out.log;
  std::ifstream in(cfg.train().out_dir() + "/metrics.jsonl");
  EXPECT_TRUE(in.good()) << cfg.train().out_dir() << "/metrics.jsonl";
  for (std::string line; std::getline(in, line);) {
    const auto j = nlohmann::json::parse(line);
    EXPECT_EQ(j.at("step").get<int64_t>(), static_cast<int64_t>(out.train.size()) + 1) << line;
    out.train.push_back(j.at("loss").get<double>());
    if (j.contains("val_loss")) out.val = j.at("val_loss").get<double>();
  }
  return out;
}

// The f32 CPU run of `kind`, trained once per test program.
const RunLosses& cpu_reference(const std::string& kind) {
  static std::map<std::string, RunLosses> runs;
  auto it = runs.find(kind);
  if (it == runs.end()) it = runs.emplace(kind, train_and_read_losses(make_config(kind, "cpu", "f32"))).first;
  return it->second;
}

struct Case {
  std::string kind, dtype;
  double rel, abs;  // |gpu - cpu| <= rel·|cpu| + abs for every step's loss
};
void PrintTo(const Case& c, std::ostream* os) {
  *os << c.kind << " " << c.dtype << ", |gpu - cpu| <= " << c.rel << "·|cpu| + " << c.abs;
}

class CudaTrainingTracksCpu : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU visible";
  }
};

TEST_P(CudaTrainingTracksCpu, LossOfEveryStepTracksTheCpuRun) {
  const Case& c = GetParam();
  const RunLosses& cpu = cpu_reference(c.kind);
  const RunLosses gpu = train_and_read_losses(make_config(c.kind, "cuda", c.dtype));
  // The run really was on the GPU in the requested dtype (train_on_mesh logs "on <backend> (<dtype>)").
  EXPECT_NE(gpu.log.find(" on cuda:"), std::string::npos) << gpu.log;
  EXPECT_NE(gpu.log.find("(" + c.dtype + ")"), std::string::npos) << gpu.log;
  ASSERT_EQ(cpu.train.size(), static_cast<size_t>(kSteps)) << cpu.log;
  ASSERT_EQ(gpu.train.size(), static_cast<size_t>(kSteps)) << gpu.log;

  // Both runs learn: the mean loss of the last 5 steps is under 0.6 of that of the first 5.
  const auto mean = [](const std::vector<double>& v, size_t from, size_t to) {
    double s = 0;
    for (size_t i = from; i < to; ++i) s += v[i];
    return s / static_cast<double>(to - from);
  };
  EXPECT_LT(mean(cpu.train, kSteps - 5, kSteps), 0.6 * mean(cpu.train, 0, 5)) << "the CPU reference did not learn";
  EXPECT_LT(mean(gpu.train, kSteps - 5, kSteps), 0.6 * mean(gpu.train, 0, 5)) << "the GPU run did not learn";

  int failures = 0;
  for (int i = 0; i < kSteps; ++i) {
    const double bound = c.rel * std::fabs(cpu.train[i]) + c.abs;
    if (!(std::fabs(gpu.train[i] - cpu.train[i]) <= bound) && failures++ < 5)
      ADD_FAILURE() << c.kind << " " << c.dtype << " step " << i + 1 << ": GPU loss " << gpu.train[i]
                    << ", CPU loss " << cpu.train[i] << " (bound " << bound << ")";
  }
  EXPECT_EQ(failures, 0) << failures << " of " << kSteps << " steps out of tolerance";
  ASSERT_GT(cpu.val, 0) << cpu.log;
  EXPECT_NEAR(gpu.val, cpu.val, c.rel * cpu.val + c.abs) << "final validation loss";
}

std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  return info.param.kind + "_" + info.param.dtype;
}

INSTANTIATE_TEST_SUITE_P(Runs, CudaTrainingTracksCpu,
                         ::testing::Values(Case{"gpt", "bf16", 3e-2, 1e-2}, Case{"gpt", "f32", 1e-3, 1e-5},
                                           Case{"vit", "bf16", 3e-2, 1e-2}, Case{"vit", "f32", 1e-3, 1e-5}),
                         case_name);

}  // namespace
}  // namespace loom::testing
