// Pruning on the GPU (issue 14 acceptance; bench/pruning/device_session.sh runs it): how well a latency table
// predicts whole models, and how much faster a pruned model runs than the unpruned one, on one device.
//
//   loom_prune_bench --config PRUNE.yaml [key=value ...] --table TABLE.json [--shapes N] [--seed S]
//                    [--pruned CHECKPOINT_DIR] [--warmup W] [--repeats R] [--json OUT.json]
//
// The config is the pruning run's: model.init_from gives the unpruned shape, data.batch_size the batch, and
// the table must be the one made for it (same device, dtype, batch, tokens, mode). Every model is built with
// random weights (values do not change kernel times) and timed with trainer/pruning/step_timing.h, exactly as
// the table times its parts: training = zero gradients, forward+backward, AdamW; inference = forward only.
// 1. Predicted vs measured, in the table's mode: the unpruned model, N random pruned shapes (random_shape) and
//    the --pruned checkpoint's shape; printed with table.model_ms and measured / predicted.
// 2. Speed-up (with --pruned): the unpruned and the pruned model, training step and forward only.
#include <CLI/CLI.hpp>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "core/config.h"
#include "core/rng.h"
#include "trainer/pruning/prune_config.h"
#include "trainer/pruning/step_timing.h"
#include "trainer/run.h"

namespace {
using namespace loom;

// `width` · fraction rounded to a multiple of `group`, inside [lo, min(hi, width)] (the table's grid axis).
int64_t scaled_width(int64_t width, double fraction, int64_t group, const std::vector<int64_t>& axis) {
  const int64_t hi = std::min(axis.back(), width);
  const int64_t w = std::llround(static_cast<double>(width) * fraction / static_cast<double>(group)) * group;
  return std::clamp(w, axis.front(), hi);
}

// A pruned shape keeping about `fraction` of every block width: each block's heads, q/k and v dims and MLP
// neurons scaled by fraction · (0.75..1.25, drawn per block and axis), the embedding by (1 + fraction) / 2;
// rounded to the prune.*_group sizes and kept inside the table's grid.
ModelShape random_shape(const ModelShape& full, const LatencyGrid& grid, const GroupSizes& g, double fraction,
                        PhiloxStream& rng) {
  ModelShape s = full;
  s.d_model = scaled_width(full.d_model, (1 + fraction) / 2, g.embedding, grid.embedding);
  for (BlockWidths& b : s.blocks) {
    auto jitter = [&] { return fraction * (0.75 + 0.5 * rng.uniform()); };
    b.heads = scaled_width(b.heads, jitter(), g.heads, grid.heads);
    b.qk_dim = scaled_width(b.qk_dim, jitter(), g.qk_dim, grid.qk_dim);
    b.v_dim = scaled_width(b.v_dim, jitter(), g.v_dim, grid.v_dim);
    b.mlp_dim = scaled_width(b.mlp_dim, jitter(), g.mlp, grid.mlp);
  }
  return s;
}

std::string describe(const ModelShape& s) {
  int64_t heads = 0, mlp = 0;
  for (const BlockWidths& b : s.blocks) {
    heads += b.heads;
    mlp += b.mlp_dim;
  }
  char buf[128];
  std::snprintf(buf, sizeof buf, "E%lld H%lld MLP%lld", static_cast<long long>(s.d_model), static_cast<long long>(heads),
                static_cast<long long>(mlp));
  return buf;
}

ModelShape checkpoint_shape(const std::string& dir) {
  const std::string file = dir + "/model.json";
  std::ifstream in(file);
  if (!in) fail(file, ": cannot read (is ", dir, " a checkpoint written by a pruning run?)");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    fail(file, ": not valid JSON: ", e.what());
  }
  return model_shape_from_json(j, file);
}

struct Bench {
  const config::RunConfig& cfg;
  Backend& be;
  DType dtype;
  int64_t batch, tokens;
  int warmup, repeats;

  double step_ms(const ModelShape& shape, LatencyMode mode) {
    auto model = build_model_of_shape(shape, cfg, be, DType::F32, dtype);
    const Batch data = random_batch(shape, batch, tokens, be.device(), 1234);
    return model_step_ms(*model, cfg.optim(), data, mode, warmup, repeats);
  }
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"loom_prune_bench: latency-table predictions and pruned speed-up on this device"};
  std::string config_path, table_path, pruned, json_path;
  std::vector<std::string> overrides;
  int shapes = 6, warmup = 3, repeats = 10;
  uint64_t seed = 1;
  app.add_option("--config", config_path, "the pruning run's config (YAML)")->required();
  app.add_option("overrides", overrides, "key.sub=value config overrides");
  app.add_option("--table", table_path, "the latency table made for the config")->required();
  app.add_option("--shapes", shapes, "random pruned shapes to predict and measure");
  app.add_option("--seed", seed, "seed of the random shapes");
  app.add_option("--pruned", pruned, "a pruned checkpoint (its model.json): predicted, measured, speed-up");
  app.add_option("--warmup", warmup, "untimed runs before each measurement");
  app.add_option("--repeats", repeats, "timed runs per measurement (the median is reported)");
  app.add_option("--json", json_path, "write the numbers here");
  CLI11_PARSE(app, argc, argv);
  try {
    const config::RunConfig cfg = load_run_config(config_path, overrides);
    const Device device = select_device(cfg.train());
    auto backend = make_backend(device);
    const LatencyTable table = LatencyTable::load(table_path);
    const LatencyTableKey key = latency_key_for(cfg, *backend);
    table.check_matches(key, table_path);
    Bench bench{cfg, *backend, select_compute_dtype(device, cfg.train()), key.batch, key.tokens, warmup, repeats};
    const ModelShape full = resolve_model_shape(cfg);
    const GroupSizes groups = planner_options(cfg.prune()).groups;

    std::vector<std::pair<std::string, ModelShape>> list = {{"unpruned", full}};
    PhiloxStream rng(seed, 7);
    for (int k = 0; k < shapes; ++k) {
      const double fraction = 0.35 + 0.6 * (shapes > 1 ? static_cast<double>(k) / (shapes - 1) : 0.5);
      list.emplace_back("random " + std::to_string(k + 1), random_shape(full, table.grid(), groups, fraction, rng));
    }
    if (!pruned.empty()) list.emplace_back("pruned", checkpoint_shape(pruned));

    nlohmann::json out = {{"device", key.device}, {"dtype", key.dtype}, {"batch", key.batch}, {"tokens", key.tokens},
                          {"mode", latency_mode_name(key.mode)}, {"table", table_path}, {"table_date", table.date()}};
    const double unpruned_ms = table.model_ms(full.d_model, full.blocks);
    std::printf("%s, %s, batch %lld, %s step (table %s)\n%-10s %-22s %10s %10s %10s %9s\n", key.device.c_str(),
                key.dtype.c_str(), static_cast<long long>(key.batch), latency_mode_name(key.mode), table_path.c_str(),
                "shape", "widths", "pred. ratio", "predicted", "measured", "meas/pred");
    std::map<std::string, double> measured_of;
    for (const auto& [name, shape] : list) {
      const double predicted = table.model_ms(shape.d_model, shape.blocks);
      const double measured = bench.step_ms(shape, key.mode);
      measured_of[name] = measured;
      std::printf("%-10s %-22s %10.3f %8.2f ms %8.2f ms %9.3f\n", name.c_str(), describe(shape).c_str(),
                  predicted / unpruned_ms, predicted, measured, measured / predicted);
      out["shapes"].push_back({{"name", name}, {"shape", model_shape_to_json(shape)}, {"predicted_ms", predicted},
                               {"measured_ms", measured}, {"measured_over_predicted", measured / predicted},
                               {"predicted_ratio", predicted / unpruned_ms}});
    }
    std::fflush(stdout);
    if (!pruned.empty()) {
      const ModelShape small = checkpoint_shape(pruned);
      nlohmann::json speed;
      for (const LatencyMode mode : {LatencyMode::Training, LatencyMode::Inference}) {
        const bool timed = mode == key.mode;
        const double big = timed ? measured_of["unpruned"] : bench.step_ms(full, mode);
        const double little = timed ? measured_of["pruned"] : bench.step_ms(small, mode);
        const std::string what = mode == LatencyMode::Training ? "training step" : "forward only";
        std::printf("speed-up, %s: unpruned %.2f ms, pruned %.2f ms: %.3fx\n", what.c_str(), big, little, big / little);
        speed[latency_mode_name(mode)] = {{"unpruned_ms", big}, {"pruned_ms", little}, {"speedup", big / little}};
      }
      out["speedup"] = speed;
    }
    if (!json_path.empty()) {
      std::ofstream f(json_path);
      f << out.dump(2) << "\n";
      if (!f) fail(json_path, ": cannot write");
    }
  } catch (const std::exception& e) {
    std::cerr << "loom_prune_bench: error: " << e.what() << std::endl;
    return 1;
  }
  return 0;
}
