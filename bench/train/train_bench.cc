// Training-step throughput of a model from a config, on synthetic data, for comparison with the PyTorch peers
// (../shared/baselines/gpt2.py and deit.py; bench/train/run.sh runs both in one device call).
//
// What is timed: a whole optimizer step (zero grads, forward+backward, grad norm, clipped AdamW) as the trainer
// runs it (one host read, at its end), synchronised, median of --steps after --warmup. Peak memory: the most bytes the device allocator handed out at once.
//
//   loom_train_bench --config configs/gpt2_124m.yaml --batch 16 --seq 1024 [--steps 20] [--json out.json]
//
// --profile-step runs the --warmup steps and then exactly one more inside cudaProfilerStart/Stop, and times
// nothing: under `ncu --profile-from-start off` only that step's kernels are profiled (bench/zoo_breakdown.py).
// Profiling is a separate invocation so the timed numbers never carry a profiler's cost.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <iostream>

#include "core/config.h"
#include "core/rng.h"
#include "trainer/models/gpt.h"
#include "trainer/mfu.h"
#include "trainer/optimizer.h"
#include "trainer/run.h"
#include "trainer/models/vit.h"

#if LOOM_HAVE_CUDA_BACKEND
#include <cuda_profiler_api.h>

#include "kernels/cuda/cuda_check.h"
#endif

namespace {
using namespace loom;

// Uniform random inputs of the model's kind: token ids for GPT, patch rows for ViT (drawn once on the host).
Batch synthetic_batch(const config::RunConfig& cfg, Model& model, int64_t batch, int64_t seq, Device device) {
  PhiloxStream rng(1234, 0);
  Batch b;
  if (model.shape().is_vit()) {
    const ModelShape& s = model.shape();
    std::vector<float> patches(static_cast<size_t>(batch * s.patches() * s.patch_dim()));
    for (auto& v : patches) v = rng.normal();
    std::vector<int32_t> labels(static_cast<size_t>(batch));
    for (auto& l : labels) l = static_cast<int32_t>(rng.below(static_cast<uint64_t>(s.num_classes)));
    Tensor host = Tensor::from_vector(patches, {batch, s.patches(), s.patch_dim()});
    b.inputs = Tensor::empty(host.shape(), select_compute_dtype(device, cfg.train()), device);
    Tensor staged = host.cast(b.inputs.dtype());
    b.inputs.copy_from(staged);
    b.targets = Tensor::from_ints(labels, {batch}).to(device);
  } else {
    std::vector<int32_t> ids(static_cast<size_t>(batch * seq)), targets(ids.size());
    for (auto& t : ids) t = static_cast<int32_t>(rng.below(static_cast<uint64_t>(cfg.model().vocab_size())));
    for (auto& t : targets) t = static_cast<int32_t>(rng.below(static_cast<uint64_t>(cfg.model().vocab_size())));
    b.inputs = Tensor::from_ints(ids, {batch, seq}).to(device);
    b.targets = Tensor::from_ints(targets, {batch, seq}).to(device);
  }
  return b;
}

// Opens (start) or closes (!start) the CUDA profiler's capture range around the profiled step.
void profiler_range(bool start) {
#if LOOM_HAVE_CUDA_BACKEND
  if (start) {
    CUDA_CHECK(cudaProfilerStart());
  } else {
    CUDA_CHECK(cudaProfilerStop());
  }
#else
  (void)start;
  fail("--profile-step needs a build with the CUDA backend (this one was built without CUDA)");
#endif
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"loom_train_bench: training-step throughput on synthetic data"};
  std::string config_path, json_path;
  int64_t batch = 16, seq = 1024, steps = 20, warmup = 3;
  bool profile_step = false;
  std::vector<std::string> overrides;
  app.add_option("--config", config_path, "model config (YAML)")->required();
  app.add_option("--batch", batch, "sequences or images per step");
  app.add_option("--seq", seq, "sequence length (GPT)");
  app.add_option("--steps", steps, "timed steps");
  app.add_option("--warmup", warmup, "untimed steps first");
  auto* json_option = app.add_option("--json", json_path, "write the numbers here");
  app.add_flag("--profile-step", profile_step,
               "after --warmup steps, run one step inside cudaProfilerStart/Stop (for ncu "
               "--profile-from-start off) and time nothing")
      ->excludes(json_option);
  app.add_option("overrides", overrides, "key.sub=value config overrides");
  CLI11_PARSE(app, argc, argv);
  try {
    overrides.push_back("data.batch_size=" + std::to_string(batch));
    overrides.push_back("data.seq_len=" + std::to_string(seq));
    const config::RunConfig cfg = load_run_config(config_path, overrides);
    const Device device = select_device(cfg.train());
    auto backend = make_run_backend(device, cfg);
    auto model = build_model(cfg, *backend, select_compute_dtype(device, cfg.train()));
    AdamW optimizer(model->params(), cfg.optim(), *backend);
    const Batch b = synthetic_batch(cfg, *model, batch, seq, device);
    // The trainer's step (trainer/trainer.cc): the loss and the squared norm stay on the device, AdamW clips
    // from them there, and the step ends with its one host read (one process: every parameter is replicated).
    Tensor stats = Tensor::empty({kStepStatsSize}, DType::F64, device);
    Tensor loss_total = stats.slice_flat(kStepLoss, {1}), squares = stats.slice_flat(kStepSquaresReplicated, {1});
    auto train_step = [&](int64_t step) {
      backend->zero(model->params().grads());
      backend->zero(stats);
      model->forward_backward_into(b, 1.0, loss_total, 1.0);
      backend->accumulate_sum_squares(squares, {model->params().grads()});
      optimizer.step(cfg.optim().lr(), step, stats);
      return backend->synchronize_and_read(stats)[kStepLoss];
    };
    if (profile_step) {
      if (device.is_cpu()) fail("--profile-step needs train.device=cuda (it brackets CUDA kernels for ncu)");
      for (int64_t i = 0; i < warmup; ++i) train_step(i + 1);
      backend->synchronize();
      profiler_range(true);
      const double loss = train_step(warmup + 1);
      backend->synchronize();
      profiler_range(false);
      std::cout << "profiled step " << warmup + 1 << " of " << config_path << " on " << backend->name()
                << " (after " << warmup << " warm-up steps): loss " << loss << std::endl;
      return 0;
    }
    std::vector<double> ms;
    double loss = 0;
    for (int64_t i = 0; i < warmup + steps; ++i) {
      backend->synchronize();
      const auto t0 = std::chrono::steady_clock::now();
      loss = train_step(i + 1);
      backend->synchronize();
      if (i >= warmup) ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(ms.begin(), ms.end());
    const double median_ms = ms[ms.size() / 2];
    const double samples_per_s = batch / (median_ms / 1e3);
    const SampleFlops flops = model->flops_per_sample();
    const double peak = device.is_cpu() ? cpu_peak_flops() : cuda_peak_flops(backend->name());
    const double mfu = peak > 0 ? samples_per_s * flops.model / peak : 0;
    const double peak_gib = static_cast<double>(allocator_for(device).peak_bytes_in_use()) / (1 << 30);
    const int64_t tokens = samples_per_s * model->tokens_per_sample();
    std::cout << cfg.model().kind() << " " << config_path << " on " << backend->name() << ": B=" << batch
              << (cfg.model().kind() == "gpt" ? " T=" + std::to_string(seq) : "") << " " << median_ms << " ms/step "
              << static_cast<int64_t>(samples_per_s) << " samples/s " << tokens << " tok/s MFU " << 100 * mfu
              << "% peak " << peak_gib << " GiB loss " << loss << std::endl;
    if (!json_path.empty()) {
      nlohmann::json j = {{"config", config_path}, {"device", backend->name()}, {"batch", batch}, {"seq", seq},
                          {"ms_per_step", median_ms}, {"samples_per_s", samples_per_s}, {"tok_per_s", tokens},
                          {"mfu", mfu}, {"peak_gib", peak_gib}, {"params", model->params().layout().total()}};
      std::ofstream(json_path) << j.dump(1);
    }
  } catch (const std::exception& e) {
    std::cerr << "loom_train_bench: error: " << e.what() << std::endl;
    return 1;
  }
  return 0;
}
