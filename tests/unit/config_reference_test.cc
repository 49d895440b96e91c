// `loom config`: the resolved config with every field, its value or default and one line of help taken from the
// comments in core/config.proto (core/config_schema.h, run_config_reference).
#include <google/protobuf/descriptor.h>
#include <google/protobuf/util/message_differencer.h>
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <functional>
#include <set>
#include <sstream>

#include "core/config.h"
#include "core/config_schema.h"

namespace loom {
namespace {

namespace pb = google::protobuf;
const std::string kRoot = LOOM_SOURCE_DIR;

// Every field of every message reachable from RunConfig.
std::vector<const pb::FieldDescriptor*> all_fields() {
  std::vector<const pb::FieldDescriptor*> fields;
  std::set<const pb::Descriptor*> seen;
  const std::function<void(const pb::Descriptor*)> visit = [&](const pb::Descriptor* type) {
    if (!seen.insert(type).second) return;
    for (int i = 0; i < type->field_count(); ++i) {
      fields.push_back(type->field(i));
      if (type->field(i)->message_type()) visit(type->field(i)->message_type());
    }
  };
  visit(config::RunConfig::descriptor());
  return fields;
}

// A field added to the schema without a comment has no help in `loom config`: it fails here.
TEST(ConfigSchema, EveryFieldHasAComment) {
  const auto fields = all_fields();
  EXPECT_GT(fields.size(), 90u);
  for (const pb::FieldDescriptor* f : fields)
    EXPECT_FALSE(config_field_comment(f).empty()) << f->full_name() << " has no comment in core/config.proto";
  EXPECT_EQ(config_field_comment(config::TrainConfig::descriptor()->FindFieldByName("max_steps")),
            "Steps to train. At most 8 digits: a checkpoint directory is named ckpt_<step, 8 digits>.");
  // A trailing comment, and a message's own comment.
  EXPECT_EQ(config_field_comment(config::OptimConfig::descriptor()->FindFieldByName("grad_clip")),
            "global-norm clip; 0 disables");
  EXPECT_EQ(config_message_comment(config::SpikeGuardConfig::descriptor()).rfind("train.spike_guard: what ", 0), 0u);
}

// The line of `key` (at `indent` spaces) in `text`.
std::string line_of(const std::string& text, const std::string& indent_and_key) {
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);)
    if (line.rfind(indent_and_key + ":", 0) == 0) return line;
  return "(no line " + indent_and_key + ")";
}

TEST(ConfigReference, EveryFieldWithItsValueDefaultAndHelpAndTheTextParsesBack) {
  const config::RunConfig cfg = load_run_config(kRoot + "/configs/gpt_tiny.yaml", {"train.max_steps=7"});
  const std::string text = run_config_reference(cfg);
  EXPECT_EQ(line_of(text, "  max_steps"),
            "  max_steps: 7  # Steps to train. At most 8 digits: a checkpoint directory is named ckpt_<step, 8 "
            "digits>. Range [1, 99999999].");
  EXPECT_EQ(line_of(text, "  beta2"), "  beta2: 0.95  # second-moment decay, < 1 as beta1. Range [0, 0.999999].");
  EXPECT_EQ(line_of(text, "  device"), "  device: \"auto\"  # auto: a GPU when there is one. One of: auto, cpu, cuda.");
  EXPECT_EQ(line_of(text, "  seed"), "  seed: 1337  # any uint64. Range [0, 18446744073709551615].");
  EXPECT_EQ(line_of(text, "  head_dim"),
            "  head_dim: ~  # default d_model / n_head, for q/k and v. Range [1, 65536].");  // unset: derived
  EXPECT_EQ(line_of(text, "    window"),
            "    window: 20  # accepted losses the median is taken over. Range [1, 100000].");  // absent section
  EXPECT_EQ(line_of(text, "#   saliency").rfind("#   saliency: taylor2  # how a unit's importance", 0), 0u) << text;
  // Every field of the schema appears, with help.
  for (const pb::FieldDescriptor* f : all_fields())
    EXPECT_NE(text.find(f->name() + ":"), std::string::npos) << f->full_name();
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);)
    if (line.find(':') != std::string::npos && line.rfind("# ", 0) != 0)
      EXPECT_NE(line.find("  # "), std::string::npos) << "no help: " << line;

  // It is a config: the same run, every default now spelled out, and still no prune section.
  const config::RunConfig back = parse_run_config(text, "reference.yaml");
  EXPECT_FALSE(back.has_prune());
  EXPECT_TRUE(back.train().has_keep_checkpoints());
  EXPECT_EQ(back.train().max_steps(), 7);
  pb::util::MessageDifferencer equivalent;
  equivalent.set_message_field_comparison(pb::util::MessageDifferencer::EQUIVALENT);
  EXPECT_TRUE(equivalent.Compare(cfg, back)) << text;

  // A config with per-block widths and a prune section round-trips too.
  const config::RunConfig pruning = parse_run_config(
      "model: {kind: vit, n_layer: 2, d_model: 32, n_head: 4, blocks: [{heads: 2, mlp_dim: 64}, {}]}\n"
      "data: {train: t.idx, batch_size: 2, mean: [0.5]}\ntrain: {max_steps: 3}\n"
      "prune: {target_ratio: 0.5, structures: [heads, mlp], latency_grid: {heads: [1, 2]}}\n",
      "p.yaml");
  const std::string pruning_text = run_config_reference(pruning);
  EXPECT_NE(pruning_text.find("  blocks:  # empty: every block"), std::string::npos) << pruning_text;
  EXPECT_NE(pruning_text.find("    - heads: 2  # attention heads"), std::string::npos) << pruning_text;
  EXPECT_TRUE(equivalent.Compare(pruning, parse_run_config(pruning_text, "p2.yaml"))) << pruning_text;
}

TEST(ConfigReference, TheLoomConfigCommandPrintsIt) {
  const std::string cmd = std::string(LOOM_BINARY_DIR) + "/loom config " + kRoot +
                          "/configs/gpt_tiny.yaml train.max_steps=7 2>&1";
  FILE* pipe = popen(cmd.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  std::string output;
  std::array<char, 4096> buf;
  for (size_t n; (n = fread(buf.data(), 1, buf.size(), pipe)) > 0;) output.append(buf.data(), n);
  EXPECT_EQ(pclose(pipe), 0) << output;
  EXPECT_EQ(output, run_config_reference(load_run_config(kRoot + "/configs/gpt_tiny.yaml", {"train.max_steps=7"})));
}

}  // namespace
}  // namespace loom
