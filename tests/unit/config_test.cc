#include "core/config.h"

#include <google/protobuf/util/message_differencer.h>
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>

#include "core/error.h"
#include "tests/common/test_util.h"

namespace loom {
namespace {

using testing::error_message;

const std::string kFixture = std::string(LOOM_SOURCE_DIR) + "/tests/data/config/gpt_tiny.yaml";
const std::string kSource = "configs/gpt_tiny.yaml";

// A minimal valid config; tests splice one line into it.
const std::string kMinimal = R"(model:
  kind: gpt
  n_layer: 2
  d_model: 32
  n_head: 4
data:
  train: "t.bin"
  batch_size: 2
train:
  max_steps: 10
)";

// kMinimal with `old_line` replaced by `new_line` (which may be several lines or empty).
std::string edited(const std::string& old_line, const std::string& new_line) {
  std::string text = kMinimal;
  const size_t at = text.find(old_line);
  EXPECT_NE(at, std::string::npos) << old_line;
  return text.replace(at, old_line.size(), new_line);
}

TEST(Config, LoadsValidFile) {
  const config::RunConfig c = load_run_config(kFixture);
  EXPECT_EQ(c.model().kind(), "gpt");
  EXPECT_EQ(c.model().n_layer(), 3);
  EXPECT_EQ(c.model().vocab_size(), 512);
  EXPECT_DOUBLE_EQ(c.model().ln_eps(), 1e-5);
  ASSERT_EQ(c.model().blocks_size(), 3);
  EXPECT_EQ(c.model().blocks(1).heads(), 2);
  EXPECT_EQ(c.model().blocks(1).mlp_dim(), 96);
  EXPECT_FALSE(c.model().blocks(0).has_mlp_dim());
  EXPECT_EQ(c.model().blocks(2).v_head_dim(), 16);
  EXPECT_EQ(c.data().train(), "data/tiny/train_*.bin");
  ASSERT_EQ(c.data().mean_size(), 2);
  EXPECT_FLOAT_EQ(c.data().mean(1), 0.25f);
  EXPECT_DOUBLE_EQ(c.optim().lr(), 3.0e-4);
  EXPECT_TRUE(c.optim().has_weight_decay());
  EXPECT_EQ(c.optim().weight_decay(), 0.0);
  EXPECT_EQ(c.train().max_steps(), 1000);  // 1e3: an exact whole number
  EXPECT_EQ(c.train().seed(), std::numeric_limits<uint64_t>::max());
  EXPECT_FALSE(c.train().has_resume());  // "resume:" (null) leaves the field unset
  EXPECT_EQ(c.train().log_every(), 1);   // declared default
  EXPECT_EQ(c.parallel().data(), 2);
  EXPECT_TRUE(c.parallel().sequence());
}

// "<source>:<line>:<column>" of the last occurrence of `at` inside the first occurrence of `part` in `text`:
// where the loader must point.
std::string position(const std::string& text, const std::string& part, const std::string& at) {
  const size_t begin = text.find(part);
  EXPECT_NE(begin, std::string::npos) << part;
  const size_t within = part.rfind(at);
  EXPECT_NE(within, std::string::npos) << at << " in " << part;
  return kSource + ":" + testing::line_column(text, begin + within);
}

TEST(Config, UnknownKeysNameFileLineColumnAndPath) {
  const std::string misspelt = edited("  n_layer: 2", "  n_layers: 2");
  EXPECT_EQ(error_message([&] { parse_run_config(misspelt, kSource, {}); }),
            kSource + ":3:3: model.n_layers: unknown key (did you mean 'n_layer'?)");
  const std::string blocks = edited("  n_head: 4", "  n_head: 4\n  blocks: [{heads: 4}, {wombat: 1}]");
  EXPECT_EQ(error_message([&] { parse_run_config(blocks, kSource, {}); }),
            position(blocks, "{wombat", "wombat") +
                ": model.blocks[1].wombat: unknown key (BlockSpec has: heads, qk_head_dim, v_head_dim, mlp_dim, "
                "attention_scale)");
  EXPECT_EQ(position(blocks, "{wombat", "wombat"), kSource + ":6:25");
  EXPECT_EQ(error_message([] { parse_run_config(kMinimal + "extra: 1\n", kSource, {}); }),
            kSource + ":11:1: extra: unknown key (RunConfig has: model, data, optim, train, parallel, prune)");
  EXPECT_EQ(error_message([] { parse_run_config(edited("  n_head: 4", "  n_head: 4\n  n_head: 8"), kSource, {}); }),
            kSource + ":6:3: model.n_head: duplicate key");
}

TEST(Config, WrongTypesNameFileLineColumnAndPath) {
  struct Case {
    std::string old_line, new_line, at, message;  // `at`: its last occurrence in new_line is the error's position
  };
  const std::vector<Case> cases = {
      {"  n_layer: 2", "  n_layer: twelve", "twelve", "model.n_layer: expected an integer, got \"twelve\""},
      {"  n_layer: 2", "  n_layer: \"2\"", "\"2\"", "model.n_layer: expected an integer, got \"2\""},
      {"  n_layer: 2", "  n_layer: 2.5", "2.5", "model.n_layer: expected an integer, got 2.5 (not a whole number)"},
      {"  n_layer: 2", "  n_layer: 3000000000", "3000000000",
       "model.n_layer: expected an integer, got 3000000000 (out of range for int32)"},
      {"  n_layer: 2", "  n_layer: -2147483649", "-2147483649",
       "model.n_layer: expected an integer, got -2147483649 (out of range for int32)"},
      {"  n_layer: 2", "  n_layer: true", "true", "model.n_layer: expected an integer, got true"},
      {"  n_layer: 2", "  n_layer: {x: 1}", "{x", "model.n_layer: expected an integer, got a map"},
      {"  n_layer: 2", "  n_layer: [2]", "[2]", "model.n_layer: expected an integer, got a list"},
      {"  max_steps: 10", "  max_steps: 10\n  seed: -1", "-1",
       "train.seed: expected a non-negative integer, got -1 (out of range for uint64)"},
      {"  max_steps: 10", "  max_steps: 10\n  progress: yes", "yes",
       "train.progress: expected true or false, got \"yes\""},
      {"  max_steps: 10", "  max_steps: 10\n  progress: 1", "1", "train.progress: expected true or false, got 1"},
      {"  kind: gpt", "  kind: [gpt]", "[gpt]", "model.kind: expected a string, got a list"},
      {"  batch_size: 2", "  batch_size: 2\n  mean: 0.5", "0.5", "data.mean: expected a list, got 0.5"},
      {"  batch_size: 2", "  batch_size: 2\n  mean: [0.5, 1e50]", "1e50",
       "data.mean[1]: expected a number, got 1e50 (out of range for float)"},
      {"  batch_size: 2", "  batch_size: 2\n  mean: [0.5, ~]", "~", "data.mean[1]: expected a value, got null"},
      {"  n_head: 4", "  n_head: 4\n  blocks:\n    - {heads: 4}\n    - {heads: 2}\n    - {heads: x}", "x",
       "model.blocks[2].heads: expected an integer, got \"x\""},
      {"  n_head: 4", "  n_head: 4\n  blocks: {heads: 4}", "{heads", "model.blocks: expected a list, got a map"},
      {"  max_steps: 10", "  max_steps: 10\ntrain2: 1", "train2", "train2: unknown key (did you mean 'train'?)"},
      {"data:\n", "data: 5\nx:\n", "5", "data: expected a map, got 5"},
  };
  for (const Case& c : cases) {
    const std::string text = edited(c.old_line, c.new_line);
    EXPECT_EQ(error_message([&] { parse_run_config(text, kSource, {}); }),
              position(text, c.new_line, c.at) + ": " + c.message);
  }
  const std::string lr = error_message([] { parse_run_config(kMinimal + "optim: {lr: fast}\n", kSource, {}); });
  EXPECT_EQ(lr, kSource + ":11:13: optim.lr: expected a number, got \"fast\"");
}

TEST(Config, MissingRequiredFieldsNameFileAndPath) {
  EXPECT_EQ(error_message([] { parse_run_config(edited("  batch_size: 2\n", ""), kSource, {}); }),
            "configs/gpt_tiny.yaml: data.batch_size: missing required field");
  EXPECT_EQ(error_message([] { parse_run_config(edited("train:\n  max_steps: 10\n", ""), kSource, {}); }),
            "configs/gpt_tiny.yaml: train: missing required field");
  // A present but empty message is checked too.
  EXPECT_EQ(error_message([] { parse_run_config(edited("train:\n  max_steps: 10\n", "train: {}\n"), kSource, {}); }),
            "configs/gpt_tiny.yaml: train.max_steps: missing required field");
  // Null means absent.
  EXPECT_EQ(error_message([] { parse_run_config(edited("  max_steps: 10", "  max_steps: ~"), kSource, {}); }),
            "configs/gpt_tiny.yaml: train.max_steps: missing required field");
}

TEST(Config, SyntaxAndFileErrorsNameTheFile) {
  EXPECT_EQ(error_message([] { load_run_config("/nonexistent/x.yaml"); }), "/nonexistent/x.yaml: cannot open config file");
  const std::string syntax = error_message([] { parse_run_config("model: [1, 2\n", kSource, {}); });
  EXPECT_EQ(syntax.rfind(kSource + ":", 0), 0u) << syntax;
  EXPECT_NE(syntax.find("YAML syntax error"), std::string::npos) << syntax;
  EXPECT_EQ(error_message([] { parse_run_config("# nothing\n", kSource, {}); }), kSource + ": the config is empty");
  EXPECT_EQ(error_message([] { parse_run_config("[1, 2]\n", kSource, {}); }),
            kSource + ":1:1: (top level): expected a map, got a list");
}

TEST(Config, OverridesApply) {
  const config::RunConfig c =
      load_run_config(kFixture, {"model.n_layer=4", "model.blocks.1.heads=8", "model.blocks[2].mlp_dim=32",
                                 "model.blocks.3.heads=1", "data.mean=[0.1]", "train.resume=latest",
                                 "train.out_dir=123", "optim.lr=1e-3", "model.ln_eps=", "parallel.sequence=false"});
  EXPECT_EQ(c.model().n_layer(), 4);
  ASSERT_EQ(c.model().blocks_size(), 4);
  EXPECT_EQ(c.model().blocks(1).heads(), 8);
  EXPECT_EQ(c.model().blocks(1).mlp_dim(), 96);  // other fields of the element kept
  EXPECT_EQ(c.model().blocks(2).mlp_dim(), 32);
  EXPECT_EQ(c.model().blocks(3).heads(), 1);
  ASSERT_EQ(c.data().mean_size(), 1);
  EXPECT_FLOAT_EQ(c.data().mean(0), 0.1f);
  EXPECT_EQ(c.train().resume(), "latest");
  EXPECT_EQ(c.train().out_dir(), "123");
  EXPECT_DOUBLE_EQ(c.optim().lr(), 1e-3);
  EXPECT_FALSE(c.model().has_ln_eps());
  EXPECT_FALSE(c.parallel().sequence());
  // An override may supply a required field the file lacks.
  EXPECT_EQ(parse_run_config(edited("  d_model: 32\n", ""), kSource, {"model.d_model=48"}).model().d_model(), 48);
  EXPECT_EQ(parse_run_config(kMinimal, kSource, {"data.mean.0=0.5"}).data().mean(0), 0.5f);
}

TEST(Config, BadOverridesNameTheOverride) {
  const auto err = [](const std::string& o) { return error_message([&] { load_run_config(kFixture, {o}); }); };
  const std::string prefix = kFixture + ": override '";
  EXPECT_EQ(err("model.n_layer=abc"), prefix + "model.n_layer=abc': model.n_layer: expected an integer, got \"abc\"");
  EXPECT_EQ(err("model.n_layr=3"), prefix + "model.n_layr=3': model.n_layr: unknown key (did you mean 'n_layer'?)");
  EXPECT_EQ(err("model.blocks.7.heads=1"),
            prefix + "model.blocks.7.heads=1': model.blocks[7]: index out of range (the list has 3 elements)");
  EXPECT_EQ(err("model.blocks.x.heads=1"),
            prefix + "model.blocks.x.heads=1': model.blocks: is a list; expected an element index, got \"x\"");
  EXPECT_EQ(err("model.n_layer.x=1"), prefix + "model.n_layer.x=1': model.n_layer: is a scalar (int32), not a map");
  EXPECT_EQ(err("model.blocks.0={heads: q}"),
            prefix + "model.blocks.0={heads: q}': model.blocks[0].heads: expected an integer, got \"q\"");
  EXPECT_EQ(err("model.n_layer"), prefix + "model.n_layer': expected key=value");
  EXPECT_EQ(err("model.kind="), kFixture + ": model.kind: missing required field");
}

TEST(Config, YamlRoundTrip) {
  config::RunConfig c = load_run_config(kFixture);
  // Values that are easy to get wrong in YAML: strings that look like other types, special characters,
  // doubles that need all their digits (within the fields' ranges, which the loader checks).
  c.mutable_train()->set_out_dir("true");
  c.mutable_train()->set_resume("123");
  c.mutable_data()->set_val("a \"quoted\": path\nwith newline # and hash");
  c.mutable_optim()->set_lr(0.1 + 0.2);
  c.mutable_optim()->set_eps(std::nextafter(1e-30, 1.0));
  c.mutable_train()->set_peak_flops(std::nextafter(1e21, 0.0));
  c.mutable_data()->add_std(1.0f / 3.0f);
  c.mutable_model()->set_init_from("");
  const std::string yaml = run_config_to_yaml(c);
  const config::RunConfig back = parse_run_config(yaml, "roundtrip.yaml", {});
  EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(c, back)) << yaml;

  // With defaults: every field is written and the values survive.
  const std::string full = run_config_to_yaml(c, true);
  const config::RunConfig resolved = parse_run_config(full, "resolved.yaml", {});
  EXPECT_TRUE(resolved.train().has_log_every());
  EXPECT_TRUE(resolved.optim().has_beta2());
  EXPECT_DOUBLE_EQ(resolved.optim().beta2(), 0.95);
  EXPECT_FALSE(resolved.model().has_head_dim());  // no declared default: derived later, so never written
  EXPECT_FALSE(resolved.model().blocks(0).has_mlp_dim());
  google::protobuf::util::MessageDifferencer equivalent;
  equivalent.set_message_field_comparison(google::protobuf::util::MessageDifferencer::EQUIVALENT);
  EXPECT_TRUE(equivalent.Compare(c, resolved)) << full;
  EXPECT_EQ(run_config_to_yaml(resolved, true), full);
  EXPECT_EQ(run_config_to_yaml(resolved), full);  // now everything is explicitly set
}

}  // namespace
}  // namespace loom
