// loom_multinode_tool: the multinode tests' two helpers, in C++ because CI's Debian has no numpy to read
// safetensors with (tests/multinode/training_test.sh calls it).
//
//   loom_multinode_tool data DIR
//     writes the tiny synthetic data sets: DIR/tokens_000.bin (769 tokens of a 64-word vocabulary) and
//     DIR/images.idx + DIR/labels.idx (96 8x8 images of 4 classes, brightness depending on the class, so the
//     task is learnable). Deterministic: the same files every time.
//   loom_multinode_tool compare REFERENCE RUN --steps N [--loss-rtol R] [--weight-rtol W] [--exact]
//     compares two runs' out_dirs: the loss of every step 1..N in metrics.jsonl within R · |reference| and
//     every tensor of the step-N checkpoint within ‖w - reference‖ <= W · ‖reference‖ + 1e-7 (checkpoints
//     hold full, layout-independent tensors), as tests/mpi/parallel_training_harness.cc does in process;
//     with --exact, every loss and every tensor byte must be equal instead. Prints each step's and each
//     tensor's difference; exit 0 when all match, 1 otherwise, 2 on bad input.
//   loom_multinode_tool field PATH
//     prints one value of the JSON document on stdin (e.g. `loom-controller status --json`): PATH is keys and
//     array indices joined by '.' ("ranks.0.paused"), a final "#" gives an array's length; strings print
//     without quotes. Exit 1 when the path does not exist (the shell tests have no jq).
#include <CLI/CLI.hpp>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "core/checkpoint.h"
#include "core/error.h"
#include "core/idx.h"
#include "core/rng.h"
#include "core/token_shards.h"

namespace loom {
namespace {

void write_data(const std::string& dir) {
  PhiloxStream rng(2024, 1);
  std::vector<int32_t> tokens(96 * 8 + 1);
  for (auto& t : tokens) t = static_cast<int32_t>(rng.uniform() * 64) % 64;
  write_shard(dir + "/tokens_000.bin", tokens);
  IdxImages images{96, 8, 8, {}};
  std::vector<uint8_t> labels(96);
  for (int64_t i = 0; i < 96; ++i) {
    labels[i] = static_cast<uint8_t>(i % 4);
    for (int p = 0; p < 64; ++p)
      images.pixels.push_back(static_cast<uint8_t>(static_cast<int>(rng.uniform() * 128) % 128 + 32 * labels[i]));
  }
  write_idx_images(dir + "/images.idx", images);
  write_idx_labels(dir + "/labels.idx", labels);
}

std::map<int64_t, double> losses_by_step(const std::string& out_dir) {
  const std::string path = out_dir + "/metrics.jsonl";
  std::ifstream in(path);
  LOOM_CHECK(in.good(), path, ": cannot read");
  std::map<int64_t, double> out;
  for (std::string line; std::getline(in, line);) {
    const auto j = nlohmann::json::parse(line);
    if (j.contains("loss")) out[j.at("step").get<int64_t>()] = j.at("loss").get<double>();
  }
  return out;
}

// Returns the number of mismatches.
int compare(const std::string& ref, const std::string& run, int64_t steps, double loss_rtol, double weight_rtol,
            bool exact) {
  int bad = 0;
  const auto want = losses_by_step(ref), got = losses_by_step(run);
  for (int64_t step = 1; step <= steps; ++step) {
    if (!want.count(step) || !got.count(step)) {
      std::printf("step %lld: no loss in %s\n", static_cast<long long>(step), (want.count(step) ? run : ref).c_str());
      ++bad;
      continue;
    }
    const double diff = std::abs(got.at(step) - want.at(step)), limit = exact ? 0 : loss_rtol * std::abs(want.at(step));
    std::printf("step %lld: loss %.9g, reference %.9g, |diff| %.3g (limit %.3g)%s\n", static_cast<long long>(step),
                got.at(step), want.at(step), diff, limit, diff <= limit ? "" : "  MISMATCH");
    bad += diff > limit;
  }
  const auto ref_weights = load_checkpoint(checkpoint_dir(ref, steps)).model;
  const auto weights = load_checkpoint(checkpoint_dir(run, steps)).model;
  if (weights.size() != ref_weights.size()) {
    std::printf("%zu tensors in %s, %zu in the reference\n", weights.size(), run.c_str(), ref_weights.size());
    return bad + 1;
  }
  for (size_t i = 0; i < weights.size(); ++i) {
    const auto& [name, t] = weights[i];
    const auto& [ref_name, r] = ref_weights[i];
    if (name != ref_name || t.shape() != r.shape()) {
      std::printf("tensor %zu: %s, reference %s (names or shapes differ)\n", i, name.c_str(), ref_name.c_str());
      ++bad;
      continue;
    }
    double diff = 0, norm = 0;
    for (int64_t k = 0; k < t.numel(); ++k) {
      diff += (t.item(k) - r.item(k)) * (t.item(k) - r.item(k));
      norm += r.item(k) * r.item(k);
    }
    if (exact) {
      const bool same = t.nbytes() == r.nbytes() && std::memcmp(t.raw(), r.raw(), t.nbytes()) == 0;
      std::printf("%s: |w - reference| %.3g, %s\n", name.c_str(), std::sqrt(diff),
                  same ? "bit for bit equal" : "bytes differ  MISMATCH");
      bad += !same;
      continue;
    }
    const double limit = weight_rtol * std::sqrt(norm) + 1e-7;
    std::printf("%s: |w - reference| %.3g (limit %.3g)%s\n", name.c_str(), std::sqrt(diff), limit,
                std::sqrt(diff) <= limit ? "" : "  MISMATCH");
    bad += std::sqrt(diff) > limit;
  }
  return bad;
}

// The value at `path` in `doc` (see the header); false when there is none.
bool print_field(const nlohmann::json& doc, const std::string& path) {
  const nlohmann::json* at = &doc;
  std::stringstream parts(path);
  for (std::string key; std::getline(parts, key, '.');) {
    if (key == "#" && at->is_array()) {
      std::printf("%zu\n", at->size());
      return true;
    }
    if (at->is_array() && !key.empty() && key.find_first_not_of("0123456789") == std::string::npos &&
        std::stoul(key) < at->size()) {
      at = &(*at)[std::stoul(key)];
    } else if (at->is_object() && at->contains(key)) {
      at = &(*at)[key];
    } else {
      return false;
    }
  }
  std::printf("%s\n", at->is_string() ? at->get<std::string>().c_str() : at->dump().c_str());
  return true;
}

}  // namespace
}  // namespace loom

int main(int argc, char** argv) {
  CLI::App app{"the multinode tests' data writer and run comparison"};
  app.require_subcommand(1);
  std::string dir, ref, run;
  int64_t steps = 0;
  double loss_rtol = 1e-5, weight_rtol = 1e-4;
  CLI::App* data = app.add_subcommand("data", "write the synthetic data sets into DIR");
  data->add_option("dir", dir, "an existing folder")->required()->check(CLI::ExistingDirectory);
  CLI::App* cmp = app.add_subcommand("compare", "compare a run's losses and final weights with a reference run");
  cmp->add_option("reference", ref, "the reference run's train.out_dir")->required()->check(CLI::ExistingDirectory);
  cmp->add_option("run", run, "the run's train.out_dir")->required()->check(CLI::ExistingDirectory);
  cmp->add_option("--steps", steps, "steps run (the final checkpoint's step)")->required()->check(CLI::PositiveNumber);
  cmp->add_option("--loss-rtol", loss_rtol, "relative tolerance of each step's loss")->check(CLI::NonNegativeNumber);
  cmp->add_option("--weight-rtol", weight_rtol, "relative tolerance of each tensor")->check(CLI::NonNegativeNumber);
  bool exact = false;
  cmp->add_flag("--exact", exact, "losses and weights must be equal bit for bit");
  std::string path;
  CLI::App* field = app.add_subcommand("field", "print one value of the JSON document on stdin");
  field->add_option("path", path, "keys and indices joined by '.'; a final '#' gives an array's length")->required();
  CLI11_PARSE(app, argc, argv);
  try {
    if (data->parsed()) {
      loom::write_data(dir);
      return 0;
    }
    if (field->parsed()) {
      const auto doc = nlohmann::json::parse(std::cin, nullptr, /*allow_exceptions=*/false);
      if (doc.is_discarded()) {
        std::fprintf(stderr, "loom_multinode_tool: stdin is not JSON\n");
        return 2;
      }
      return loom::print_field(doc, path) ? 0 : 1;
    }
    const int bad = loom::compare(ref, run, steps, loss_rtol, weight_rtol, exact);
    std::printf("%s: %d mismatch(es) against %s\n", run.c_str(), bad, ref.c_str());
    return bad == 0 ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "loom_multinode_tool: %s\n", e.what());
    return 2;
  }
}
