// Ranges of numeric config fields and the allowed values of enum-like strings (core/config.proto's (min),
// (max) and (choices) options), as the YAML loader checks them: every error names the file, the key path, the
// value and the range. Also: every numeric field of the schema has a range, and every shipped config loads.
#include <google/protobuf/descriptor.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <functional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/error.h"
#include "tests/common/test_util.h"
#include "trainer/run.h"

namespace loom {
namespace {

namespace pb = google::protobuf;

const std::string kSource = "runs/x.yaml";
const std::string kMinimal = R"(model: {kind: gpt, n_layer: 2, d_model: 32, n_head: 4}
data: {train: "t.bin", batch_size: 2}
train: {max_steps: 10}
)";

std::string load_error(const std::string& yaml, const std::vector<std::string>& overrides = {}) {
  return testing::error_message([&] { parse_run_config(yaml, kSource, overrides); });
}

// The probe's cases (issue 12, finding 5) and the other ends of the ranges they touch.
TEST(ConfigRanges, OutOfRangeValuesNameFileKeyValueAndRange) {
  struct Case {
    std::string extra, before, message;  // the error points just after the last occurrence of `before`
  };
  const std::vector<Case> cases = {
      {"optim: {beta1: 1}", "beta1: ", "optim.beta1: 1 is out of range [0, 0.999999]"},
      {"optim: {beta1: 1.5}", "beta1: ", "optim.beta1: 1.5 is out of range [0, 0.999999]"},
      {"optim: {beta1: -0.1}", "beta1: ", "optim.beta1: -0.1 is out of range [0, 0.999999]"},
      {"optim: {beta2: -0.5}", "beta2: ", "optim.beta2: -0.5 is out of range [0, 0.999999]"},
      {"optim: {eps: 0}", "eps: ", "optim.eps: 0 is out of range [1e-30, 1]"},
      {"optim: {grad_clip: -1}", "grad_clip: ", "optim.grad_clip: -1 is out of range [0, 1e+09]"},
      {"optim: {lr: .nan}", "lr: ", "optim.lr: .nan is out of range [0, 10000]"},
      {"optim: {lr: .inf}", "lr: ", "optim.lr: .inf is out of range [0, 10000]"},
      {"model: {kind: gpt, n_layer: 2, d_model: 32, n_head: 4, init_std: -0.02}", "init_std: ",
       "model.init_std: -0.02 is out of range [0, 10]"},
      {"model: {kind: gpt, n_layer: 0, d_model: 32, n_head: 4}", "n_layer: ",
       "model.n_layer: 0 is out of range [1, 4096]"},
      {"model: {kind: gpt, n_layer: 2, d_model: 32, n_head: 4, blocks: [{heads: 0}, {}]}", "heads: ",
       "model.blocks[0].heads: 0 is out of range [1, 65536]"},
      {"data: {train: t.bin, batch_size: 2, std: [0.5, 0]}", "0.5, ", "data.std[1]: 0 is out of range [1e-06, 1000]"},
      {"train: {max_steps: 0}", "max_steps: ", "train.max_steps: 0 is out of range [1, 99999999]"},
      {"train: {max_steps: -5}", "max_steps: ", "train.max_steps: -5 is out of range [1, 99999999]"},
      {"train: {max_steps: 100000000}", "max_steps: ", "train.max_steps: 100000000 is out of range [1, 99999999]"},
      {"train: {max_steps: 10, checkpoint_every: -2}", "checkpoint_every: ",
       "train.checkpoint_every: -2 is out of range [-1, 99999999]"},
      {"train: {max_steps: 10, spike_guard: {enabled: true, lr_scale: 2}}", "lr_scale: ",
       "train.spike_guard.lr_scale: 2 is out of range [1e-06, 1]"},
      {"parallel: {data: 0}", "data: ", "parallel.data: 0 is out of range [1, 1048576]"},
  };
  for (const Case& c : cases) {
    // The case's message replaces the minimal config's line for the same top-level key.
    std::istringstream lines(kMinimal);
    const std::string key = c.extra.substr(0, c.extra.find(':') + 1);
    std::string yaml, line;
    while (std::getline(lines, line))
      if (line.rfind(key, 0) != 0) yaml.append(line).append("\n");
    yaml += c.extra + "\n";
    const size_t at = yaml.rfind(c.before) + c.before.size();  // the case's line is the last one
    EXPECT_EQ(load_error(yaml), kSource + ":" + testing::line_column(yaml, at) + ": " + c.message) << c.extra;
  }
}

TEST(ConfigRanges, BoundsAreInclusiveAndOverridesAreChecked) {
  const config::RunConfig c =
      parse_run_config(kMinimal + "optim: {beta1: 0, beta2: 0.999999, eps: 1e-30, grad_clip: 0, lr: 1e4}\n", kSource);
  EXPECT_EQ(c.optim().beta2(), 0.999999);
  EXPECT_EQ(c.optim().lr(), 1e4);
  EXPECT_EQ(load_error(kMinimal, {"optim.beta1=1"}),
            kSource + ": override 'optim.beta1=1': optim.beta1: 1 is out of range [0, 0.999999]");
  EXPECT_EQ(load_error(kMinimal, {"train.max_steps=0"}),
            kSource + ": override 'train.max_steps=0': train.max_steps: 0 is out of range [1, 99999999]");
}

TEST(ConfigRanges, EnumLikeStringsAreCheckedOnEveryDevice) {
  std::string yaml = kMinimal;
  yaml.replace(yaml.find("train: {max_steps: 10}"), 22, "train: {max_steps: 10, device: cpu, dtype: bert}");
  EXPECT_EQ(load_error(yaml), kSource + ":3:44: train.dtype: expected one of bf16, f16, f32, got \"bert\"");
  EXPECT_EQ(load_error(kMinimal, {"train.device=tpu"}),
            kSource + ": override 'train.device=tpu': train.device: expected one of auto, cpu, cuda, got \"tpu\"");
  EXPECT_EQ(load_error(kMinimal, {"model.kind=bert"}),
            kSource + ": override 'model.kind=bert': model.kind: expected one of gpt, vit, got \"bert\"");
  EXPECT_EQ(parse_run_config(kMinimal, kSource, {"train.dtype=f16"}).train().dtype(), "f16");
  EXPECT_EQ(load_error(kMinimal, {"train.gemm_algorithm=fastest"}),
            kSource + ": override 'train.gemm_algorithm=fastest': train.gemm_algorithm: expected one of heuristic, "
                      "timed, got \"fastest\"");
}

// train.gemm_algorithm reaches the backend as chosen, except that tensor parallelism keeps the heuristic (its
// ranks compute replicated layers and must agree bit for bit).
TEST(ConfigRanges, GemmAlgorithmChoice) {
  EXPECT_EQ(select_gemm_algorithm(parse_run_config(kMinimal, kSource)), GemmAlgorithm::Timed);  // the default
  EXPECT_EQ(select_gemm_algorithm(parse_run_config(kMinimal, kSource, {"train.gemm_algorithm=heuristic"})),
            GemmAlgorithm::Heuristic);
  EXPECT_EQ(select_gemm_algorithm(parse_run_config(kMinimal, kSource, {"parallel.tensor=2"})),
            GemmAlgorithm::Heuristic);
  EXPECT_EQ(select_gemm_algorithm(parse_run_config(kMinimal, kSource, {"parallel.data=2"})), GemmAlgorithm::Timed);
}

// Every numeric field (in every message reachable from RunConfig) carries both bounds, min <= max, and its
// declared default lies inside them: a field added without a range fails here.
TEST(ConfigRanges, EveryNumericFieldHasARangeHoldingItsDefault) {
  std::set<const pb::Descriptor*> seen;
  int numeric = 0;
  const std::function<void(const pb::Descriptor*)> visit = [&](const pb::Descriptor* type) {
    if (!seen.insert(type).second) return;
    for (int i = 0; i < type->field_count(); ++i) {
      const pb::FieldDescriptor* f = type->field(i);
      using F = pb::FieldDescriptor;
      if (f->cpp_type() == F::CPPTYPE_MESSAGE) {
        visit(f->message_type());
        continue;
      }
      const bool is_numeric = f->cpp_type() == F::CPPTYPE_INT32 || f->cpp_type() == F::CPPTYPE_INT64 ||
                              f->cpp_type() == F::CPPTYPE_UINT32 || f->cpp_type() == F::CPPTYPE_UINT64 ||
                              f->cpp_type() == F::CPPTYPE_FLOAT || f->cpp_type() == F::CPPTYPE_DOUBLE;
      if (!is_numeric) continue;
      ++numeric;
      const pb::FieldOptions& o = f->options();
      ASSERT_TRUE(o.HasExtension(config::min)) << f->full_name() << " has no (min)";
      ASSERT_TRUE(o.HasExtension(config::max)) << f->full_name() << " has no (max)";
      const double lo = o.GetExtension(config::min), hi = o.GetExtension(config::max);
      EXPECT_LE(lo, hi) << f->full_name();
      if (!f->has_default_value()) continue;
      double def = 0;
      switch (f->cpp_type()) {
        case F::CPPTYPE_INT32: def = f->default_value_int32(); break;
        case F::CPPTYPE_INT64: def = static_cast<double>(f->default_value_int64()); break;
        case F::CPPTYPE_UINT32: def = f->default_value_uint32(); break;
        case F::CPPTYPE_UINT64: def = static_cast<double>(f->default_value_uint64()); break;
        case F::CPPTYPE_FLOAT: def = f->default_value_float(); break;
        default: def = f->default_value_double(); break;
      }
      EXPECT_TRUE(def >= lo && def <= hi) << f->full_name() << " default " << def;
    }
  };
  visit(config::RunConfig::descriptor());
  EXPECT_GT(numeric, 40);
}

TEST(ConfigRanges, EveryShippedConfigLoads) {
  int loaded = 0;
  for (const auto& e : std::filesystem::directory_iterator(std::string(LOOM_SOURCE_DIR) + "/configs")) {
    if (e.path().extension() != ".yaml") continue;
    EXPECT_NO_THROW(load_run_config(e.path().string())) << e.path();
    ++loaded;
  }
  EXPECT_GE(loaded, 10);
}

}  // namespace
}  // namespace loom
