#include "tests/mpi/parallel_training_harness.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/checkpoint.h"
#include "core/config.h"
#include "core/idx.h"
#include "core/rng.h"
#include "core/token_shards.h"
#include "parallel/environment.h"
#include "parallel/mesh.h"
#if LOOM_HAVE_NCCL
#include "parallel/nccl_communicator.h"
#endif
#include "tests/mpi/mpi_test_util.h"
#include "trainer/run.h"

namespace loom::testing {
namespace {


constexpr int kGlobalBatch = 4;

// A directory shared by every rank: rank 0 creates it, the path is broadcast. Removed by rank 0 at exit.
const std::string& shared_dir() {
  static std::string dir = [] {
    MpiCommunicator& world = test_world();
    char path[256] = {0};
    if (world.rank() == 0) {
      std::string tmpl = (std::filesystem::temp_directory_path() / "loom_parallel_XXXXXX").string();
      LOOM_CHECK(mkdtemp(tmpl.data()) != nullptr, "mkdtemp failed");
      std::snprintf(path, sizeof path, "%s", tmpl.c_str());
    }
    world.broadcast_bytes(path, sizeof path, 0);
    if (world.rank() == 0) std::atexit([] { std::filesystem::remove_all(shared_dir()); });
    return std::string(path);
  }();
  return dir;
}

// The data files, written once by rank 0: 96 windows of 8 tokens (vocabulary 64) and 96 8x8 images of 4 classes.
void write_data_once() {
  static bool written = false;
  if (written) return;
  MpiCommunicator& world = test_world();
  if (world.rank() == 0) {
    PhiloxStream rng(2024, 1);
    std::vector<int32_t> tokens(96 * 8 + 1);
    for (auto& t : tokens) t = static_cast<int32_t>(rng.uniform() * 64) % 64;
    write_shard(shared_dir() + "/tokens_000.bin", tokens);
    IdxImages images{96, 8, 8, {}};
    std::vector<uint8_t> labels(96);
    for (int64_t i = 0; i < 96; ++i) {
      labels[i] = static_cast<uint8_t>(i % 4);
      for (int p = 0; p < 64; ++p)  // class-dependent brightness so the task is learnable
        images.pixels.push_back(static_cast<uint8_t>(static_cast<int>(rng.uniform() * 128) % 128 + 32 * labels[i]));
    }
    write_idx_images(shared_dir() + "/images.idx", images);
    write_idx_labels(shared_dir() + "/labels.idx", labels);
  }
  world.barrier();
  written = true;
}


config::RunConfig make_config(const std::string& kind, const Layout& layout, const std::string& out_dir,
                              const RunSettings& settings) {
  const std::string& dir = shared_dir();
  std::ostringstream y;
  if (kind == "gpt") {
    y << "model: {kind: gpt, n_layer: 2, d_model: 16, n_head: 4, mlp_dim: 32, vocab_size: 64, max_seq_len: 8}\n"
      << "data: {train: '" << dir << "/tokens_*.bin', seq_len: 8, batch_size: " << kGlobalBatch / layout.data
      << "}\n";
  } else {
    y << "model: {kind: vit, n_layer: 2, d_model: 16, n_head: 4, mlp_dim: 32, image_size: 8, patch_size: 4, "
         "in_channels: 1, num_classes: 4}\n"
      << "data: {train: '" << dir << "/images.idx', train_labels: '" << dir << "/labels.idx', crop_padding: 1, "
      << "batch_size: " << kGlobalBatch / layout.data << "}\n";
  }
  // eps 1e-6: the key bias's gradient is exactly zero in exact arithmetic (softmax ignores a per-query constant),
  // so in floating point it is rounding noise that depends on summation order; with a tiny eps AdamW turns that
  // noise into full-size steps, which no two layouts (or thread counts) can reproduce.
  y << "optim: {lr: " << settings.lr << ", warmup_steps: 3, weight_decay: 0.1, grad_clip: 1.0, eps: 1.0e-6}\n"
    << "train: {max_steps: " << kParallelSteps << ", grad_accum_steps: " << layout.accum
    << ", device: " << settings.device << ", dtype: " << settings.dtype << ", progress: false, log_every: 0, seed: 7, "
    << "keep_checkpoints: 5, out_dir: '" << out_dir << "'}\n"
    << "parallel: {data: " << layout.data << ", tensor: " << layout.tensor << ", sequence: "
    << (layout.sequence ? "true" : "false") << ", zero1: " << (layout.zero1 ? "true" : "false")
    << ", bucket_mb: 1, comm_tiles: " << layout.comm_tiles << "}\n";
  return parse_run_config(y.str(), kind + "_" + layout.name() + "_" + settings.tag());
}

// Stops the run after `stop_step` on world rank 0 only: the trainer must make every rank follow rank 0.
class StopOnRankZero final : public TrainingObserver {
 public:
  StopOnRankZero(int64_t stop_step, bool is_rank_zero) : stop_step_(stop_step), rank_zero_(is_rank_zero) {}
  void on_step(const nlohmann::json& record) override { step_ = record.at("step").get<int64_t>(); }
  Control poll() override { return {false, rank_zero_ && step_ == stop_step_}; }

 private:
  int64_t stop_step_, step_ = 0;
  bool rank_zero_;
};

// Runs `cfg` on the first data × tensor ranks of the job (the others wait); returns whether this rank ran.
bool run_layout(const config::RunConfig& cfg, const RunSettings& settings, int64_t stop_step = -1) {
  MpiCommunicator& world = test_world();
  const int ranks = cfg.parallel().data() * cfg.parallel().tensor();
  const bool member = world.rank() < ranks;
  std::unique_ptr<MpiCommunicator> cpu_group = world.split_mpi(member ? 0 : 1, world.rank());
  std::unique_ptr<Communicator> gpu_group;
  if (member && settings.device == "cuda") {
#if LOOM_HAVE_NCCL
    gpu_group = NcclCommunicator::create(*cpu_group, detect_process_environment().local_rank);
#else
    ADD_FAILURE() << "a GPU layout needs a build with NCCL";
    return false;
#endif
  }
  Communicator* group = gpu_group ? gpu_group.get() : static_cast<Communicator*>(cpu_group.get());
  if (member) {
    ProcessMesh mesh(*group, cfg.parallel().data(), cfg.parallel().tensor());
    std::ostringstream log;
    StopOnRankZero stop(stop_step, group->rank() == 0);
    std::vector<TrainingObserver*> observers;
    if (stop_step > 0) observers.push_back(&stop);
    const TrainResult r = train_on_mesh(cfg, log, observers, &mesh);
    EXPECT_EQ(r.steps_done, stop_step > 0 ? stop_step : kParallelSteps) << cfg.train().out_dir();
    // The layout really is in use (a model built without its shards would reproduce the reference trivially).
    if (group->rank() == 0) {
      const std::string layout = std::to_string(cfg.parallel().data()) + " data x " +
                                 std::to_string(cfg.parallel().tensor()) + " tensor ranks";
      EXPECT_NE(log.str().find(layout), std::string::npos) << log.str();
      if (cfg.parallel().tensor() > 1) {
        EXPECT_NE(log.str().find("per tensor rank"), std::string::npos) << log.str();
      }
      if (cfg.parallel().sequence()) {
        EXPECT_NE(log.str().find("with sequence parallelism"), std::string::npos) << log.str();
      }
      if (cfg.parallel().zero1()) {
        EXPECT_NE(log.str().find("ZeRO-1"), std::string::npos) << log.str();
      }
    }
  }
  world.barrier();
  return member;
}

std::map<int64_t, double> losses_by_step(const std::string& out_dir) {
  std::ifstream in(out_dir + "/metrics.jsonl");
  EXPECT_TRUE(in.good()) << out_dir << "/metrics.jsonl";
  std::map<int64_t, double> out;
  for (std::string line; std::getline(in, line);) {
    const auto j = nlohmann::json::parse(line);
    if (!j.contains("event")) out[j.at("step").get<int64_t>()] = j.at("loss").get<double>();  // a resume: an event
  }
  return out;
}

// The single-process reference for `kind` with `accum` micro-steps, run once by world rank 0 (on its GPU for
// GPU settings) into a directory every rank reads.
const std::string& reference_dir(const std::string& kind, const RunSettings& settings, int accum = 1) {
  static std::map<std::string, std::string> dirs;
  const std::string key = kind + "_accum" + std::to_string(accum) + "_" + settings.tag();
  auto it = dirs.find(key);
  if (it != dirs.end()) return it->second;
  write_data_once();
  const std::string out = shared_dir() + "/ref_" + key;
  if (test_world().rank() == 0) {
    Layout single;
    single.accum = accum;
    std::ostringstream log;
    train_on_mesh(make_config(kind, single, out, settings), log, {}, nullptr);
  }
  test_world().barrier();
  return dirs.emplace(key, out).first->second;
}

// Compares a parallel run's losses (steps first_step..kParallelSteps) and final weights with the reference.
void expect_matches_reference(const std::string& kind, const std::string& out_dir, int64_t first_step,
                              const RunSettings& settings, int accum = 1) {
  const std::string& ref = reference_dir(kind, settings, accum);
  const auto want = losses_by_step(ref), got = losses_by_step(out_dir);
  for (int64_t step = first_step; step <= kParallelSteps; ++step) {
    ASSERT_TRUE(got.count(step) && want.count(step)) << out_dir << ": no loss for step " << step;
    EXPECT_NEAR(got.at(step), want.at(step), settings.loss_rtol * std::abs(want.at(step))) << out_dir << " step " << step;
  }
  const auto ref_weights = load_checkpoint(checkpoint_dir(ref, kParallelSteps)).model;
  const auto weights = load_checkpoint(checkpoint_dir(out_dir, kParallelSteps)).model;
  ASSERT_EQ(weights.size(), ref_weights.size()) << out_dir;
  for (size_t i = 0; i < weights.size(); ++i) {
    const auto& [name, t] = weights[i];
    const auto& [ref_name, r] = ref_weights[i];
    ASSERT_EQ(name, ref_name);
    ASSERT_EQ(t.shape(), r.shape()) << name << " (checkpoints hold full tensors)";
    if (settings.weight_not_compared.count(name.substr(name.rfind('.', name.rfind('.') - 1) + 1))) continue;
    double diff = 0, norm = 0;
    for (int64_t k = 0; k < t.numel(); ++k) {
      diff += (t.item(k) - r.item(k)) * (t.item(k) - r.item(k));
      norm += r.item(k) * r.item(k);
    }
    EXPECT_LE(std::sqrt(diff), settings.weight_rtol * std::sqrt(norm) + 1e-7) << out_dir << ": " << name;
  }
}

}  // namespace

std::string Layout::name() const {
  return "dp" + std::to_string(data) + "_tp" + std::to_string(tensor) + (sequence ? "_sp" : "") +
         (zero1 ? "_zero1" : "") + (accum > 1 ? "_accum" + std::to_string(accum) : "") +
         (comm_tiles != 4 ? "_tiles" + std::to_string(comm_tiles) : "");
}

config::RunConfig make_parallel_config(const std::string& kind, const Layout& layout, const std::string& out_dir,
                                       const RunSettings& settings) {
  return make_config(kind, layout, out_dir, settings);
}

const std::string& parallel_test_dir() {
  write_data_once();
  return shared_dir();
}

void check_layout(const std::string& kind, const Layout& layout, const RunSettings& settings) {
  if (test_world().size() % (layout.data * layout.tensor) != 0) GTEST_SKIP() << "needs a multiple of the ranks";
  reference_dir(kind, settings, layout.accum);
  const std::string out = shared_dir() + "/" + kind + "_" + layout.name() + "_" + settings.tag();
  if (run_layout(make_config(kind, layout, out, settings), settings))
    expect_matches_reference(kind, out, 1, settings, layout.accum);
}

void check_resume(const std::string& kind, const Layout& first, const Layout& second, const RunSettings& settings) {
  const int world = test_world().size();
  if (world % (first.data * first.tensor) != 0 || world % (second.data * second.tensor) != 0)
    GTEST_SKIP() << "needs a multiple of the ranks";
  reference_dir(kind, settings);
  const std::string a = shared_dir() + "/" + kind + "_resume_from_" + first.name() + "_" + settings.tag();
  const std::string b =
      shared_dir() + "/" + kind + "_resume_" + first.name() + "_to_" + second.name() + "_" + settings.tag();
  run_layout(make_config(kind, first, a, settings), settings, /*stop_step=*/10);
  config::RunConfig cfg = make_config(kind, second, b, settings);
  cfg.mutable_train()->set_resume(checkpoint_dir(a, 10));
  if (run_layout(cfg, settings)) expect_matches_reference(kind, b, 11, settings);
}

}  // namespace loom::testing
