#include "launch/checkpoint_commands.h"

#include <filesystem>
#include <fstream>
#include <iostream>

#include "core/atomic_file.h"
#include "core/checkpoint.h"
#include "core/config.h"
#include "core/safetensors.h"
#include "core/tokenizer.h"
#include "trainer/models/interop/hf_gpt2.h"
#include "trainer/models/interop/timm_vit.h"
#include "trainer/run.h"
#include "trainer/sampler.h"

namespace loom {
namespace {

namespace fs = std::filesystem;

// The run configuration a checkpoint was trained with (saved in its state.json).
config::RunConfig checkpoint_config(const CheckpointContents& c, const std::string& dir) {
  if (!c.state.contains("config_yaml")) fail(dir, "/state.json: missing \"config_yaml\"");
  return parse_run_config(c.state["config_yaml"].get<std::string>(), dir + "/state.json");
}

// The shape of a checkpoint's model: its model.json, or (older checkpoints) the config it was trained with.
ModelShape checkpoint_shape(const CheckpointContents& c, const config::RunConfig& cfg, const std::string& dir) {
  if (!c.model_shape.is_null()) return model_shape_from_json(c.model_shape, dir + "/model.json");
  return model_shape_from_config(cfg.model());
}

// out_dir/model.safetensors and out_dir/config.json.
void write_model_folder(const std::string& out_dir, const NamedTensors& tensors, const nlohmann::json& config) {
  fs::create_directories(out_dir);
  safetensors::write(out_dir + "/model.safetensors", tensors, {{"format", "pt"}});
  write_file_atomically(out_dir + "/config.json", config.dump(2) + "\n");
}

}  // namespace

int cmd_sample(const std::string& dir, const std::string& prompt, int64_t tokens, double temperature, int64_t top_k,
               uint64_t seed) {
  const CheckpointContents c = load_checkpoint(dir);
  config::RunConfig cfg = checkpoint_config(c, dir);
  const ModelShape shape = checkpoint_shape(c, cfg, dir);
  if (!shape.is_gpt()) fail(dir, ": sampling needs a GPT checkpoint, this one is \"", shape.kind, "\"");
  cfg.mutable_train()->set_device("cpu");
  cfg.mutable_train()->set_seed(seed);
  auto backend = make_backend(Device::cpu());
  auto model = build_model_of_shape(shape, cfg, *backend, DType::F32, DType::F32);
  model->params().load_named(c.model, dir + "/model.safetensors");
  const Tokenizer tok = Tokenizer::from_dir(gpt2_vocab_dir(cfg.data().tokenizer()));
  std::vector<int32_t> ids = prompt.empty() ? std::vector<int32_t>{tok.eot_token()} : tok.encode(prompt);
  PhiloxStream rng(seed, 0);
  SampleOptions opts;
  opts.max_new_tokens = tokens;
  opts.temperature = temperature;
  opts.top_k = top_k;
  const auto out = sample_tokens(*model, ids, opts, rng);
  std::cout << prompt << tok.decode(out) << std::endl;
  return 0;
}

int cmd_export(const std::string& dir, const std::string& out_dir) {
  const CheckpointContents c = load_checkpoint(dir);
  const ModelShape shape = checkpoint_shape(c, checkpoint_config(c, dir), dir);
  fs::create_directories(out_dir);
  const std::string weights = out_dir + "/model.safetensors", yaml = out_dir + "/model.yaml";
  safetensors::write(weights, c.model, {{"format", "pt"}, {"loom_model", model_shape_to_json(shape).dump()}});
  config::RunConfig section;
  *section.mutable_model() = model_config_of_shape(shape);
  section.mutable_model()->set_init_from(weights);
  std::ofstream f(yaml);
  f << "# The model section of " << dir << " for a run config (widths per block, as trained).\n"
    << run_config_to_yaml(section);
  f.close();
  if (!f) fail(yaml, ": cannot write");
  std::cout << "wrote " << weights << " and " << yaml << std::endl;
  return 0;
}

int cmd_export_hf(const std::string& dir, const std::string& out_dir) {
  const CheckpointContents c = load_checkpoint(dir);
  const config::RunConfig cfg = checkpoint_config(c, dir);
  const ModelShape shape = checkpoint_shape(c, cfg, dir);
  if (!shape.is_gpt()) fail(dir, ": export-hf needs a GPT checkpoint, this one is \"", shape.kind, "\"");
  check_hf_gpt2_representable(shape, dir);
  if (out_dir.size() >= 12 && out_dir.compare(out_dir.size() - 12, 12, ".safetensors") == 0)
    fail("export-hf --out ", out_dir, ": names a folder (model.safetensors and config.json go into it, for "
         "from_pretrained), not a .safetensors file");
  write_model_folder(out_dir, export_hf_gpt2(c.model, shape.vocab), hf_gpt2_config(shape));
  std::cout << "wrote " << out_dir << "/model.safetensors and config.json";
  // GPT-2's tokenizer under the names transformers reads (vocab.json, merges.txt), when this is its vocabulary.
  const std::string vocab = gpt2_vocab_dir(cfg.data().tokenizer());
  if (shape.vocab == 50257 && fs::is_regular_file(vocab + "/encoder.json") &&
      fs::is_regular_file(vocab + "/vocab.bpe")) {
    fs::copy_file(vocab + "/encoder.json", out_dir + "/vocab.json", fs::copy_options::overwrite_existing);
    fs::copy_file(vocab + "/vocab.bpe", out_dir + "/merges.txt", fs::copy_options::overwrite_existing);
    std::cout << ", and the tokenizer (vocab.json, merges.txt from " << vocab << ")";
  }
  std::cout << std::endl;
  return 0;
}

int cmd_export_timm(const std::string& dir, const std::string& out_dir) {
  const CheckpointContents c = load_checkpoint(dir);
  const config::RunConfig cfg = checkpoint_config(c, dir);
  const ModelShape shape = checkpoint_shape(c, cfg, dir);
  if (!shape.is_vit()) fail(dir, ": export-timm needs a ViT checkpoint, this one is \"", shape.kind, "\"");
  check_timm_vit_representable(shape, dir);
  write_model_folder(out_dir, export_timm_vit(c.model, shape), timm_vit_config(shape, cfg.data()));
  std::cout << "wrote " << out_dir << "/model.safetensors and config.json" << std::endl;
  return 0;
}

}  // namespace loom
