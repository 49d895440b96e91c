#include "trainer/models/model_shape.h"

#include "core/error.h"

namespace loom {

int64_t pad_vocab(int64_t vocab) { return (vocab + 127) / 128 * 128; }

namespace {

constexpr const char* kShapeFormat = "loom-model-1";

void check_kind_fields(const ModelShape& s, const std::string& where) {
  if (!(s.d_model > 0)) fail(where, "d_model must be positive, got ", s.d_model);
  if (!(s.ln_eps > 0)) fail(where, "ln_eps must be positive, got ", s.ln_eps);
  if (s.is_gpt()) {
    if (!(s.vocab > 0)) fail(where, "vocab_size must be positive, got ", s.vocab);
    if (!(s.max_seq > 0)) fail(where, "max_seq_len must be positive, got ", s.max_seq);
  } else if (s.is_vit()) {
    if (!(s.image_size > 0 && s.patch_size > 0 && s.image_size % s.patch_size == 0))
      fail(where, "image_size (", s.image_size, ") must be a positive multiple of ", where, "patch_size (",
           s.patch_size, ")");
    if (!(s.in_channels > 0)) fail(where, "in_channels must be positive, got ", s.in_channels);
    if (!(s.num_classes > 1)) fail(where, "num_classes must be at least 2, got ", s.num_classes);
  } else {
    fail(where, "kind: expected \"gpt\" or \"vit\", got \"", s.kind, "\"");
  }
}

}  // namespace

ModelShape model_shape_from_config(const config::ModelConfig& m) {
  for (const auto& [present, name] : {std::pair{m.has_n_layer(), "n_layer"}, std::pair{m.has_d_model(), "d_model"},
                                      std::pair{m.has_n_head(), "n_head"}})
    if (!(present))
      fail("model.", name,
           ": missing required field (it may be left out only when the model comes from a checkpoint: "
           "train.resume or a model.init_from file with its shape)");
  ModelShape s;
  s.kind = m.kind();
  s.d_model = m.d_model();
  s.init_std = m.init_std();
  if (s.is_gpt()) {
    s.vocab = m.vocab_size();
    s.padded_vocab = pad_vocab(s.vocab);
    s.max_seq = m.max_seq_len();
    s.ln_eps = m.has_ln_eps() ? m.ln_eps() : 1e-5;
  } else if (s.is_vit()) {
    s.image_size = m.image_size();
    s.patch_size = m.patch_size();
    s.in_channels = m.in_channels();
    s.num_classes = m.num_classes();
    s.distilled = m.distilled();
    s.ln_eps = m.has_ln_eps() ? m.ln_eps() : 1e-6;
  }
  check_kind_fields(s, "model.");
  s.blocks = resolve_block_widths(m);
  return s;
}

nlohmann::json model_shape_to_json(const ModelShape& s) {
  nlohmann::json j;
  j["format"] = kShapeFormat;
  j["kind"] = s.kind;
  j["d_model"] = s.d_model;
  j["ln_eps"] = s.ln_eps;
  j["init_std"] = s.init_std;
  if (s.is_gpt()) {
    j["vocab_size"] = s.vocab;
    j["max_seq_len"] = s.max_seq;
  } else {
    j["image_size"] = s.image_size;
    j["patch_size"] = s.patch_size;
    j["in_channels"] = s.in_channels;
    j["num_classes"] = s.num_classes;
    j["distilled"] = s.distilled;
  }
  nlohmann::json blocks = nlohmann::json::array();
  for (const BlockWidths& b : s.blocks)
    blocks.push_back({{"heads", b.heads},
                      {"qk_head_dim", b.qk_dim},
                      {"v_head_dim", b.v_dim},
                      {"mlp_dim", b.mlp_dim},
                      {"attention_scale", b.scale()}});
  j["blocks"] = blocks;
  return j;
}

namespace {

const nlohmann::json& member(const nlohmann::json& j, const char* key, const std::string& where) {
  if (!(j.is_object() && j.contains(key))) fail(where, ": missing \"", key, "\"");
  return j.at(key);
}

int64_t positive_int(const nlohmann::json& j, const char* key, const std::string& where) {
  const nlohmann::json& v = member(j, key, where);
  if (!(v.is_number_integer() && v.get<int64_t>() > 0 && v.get<int64_t>() <= (int64_t{1} << 31)))
    fail(where, ": \"", key, "\" must be a positive integer, got ", v.dump());
  return v.get<int64_t>();
}

double positive_number(const nlohmann::json& j, const char* key, const std::string& where) {
  const nlohmann::json& v = member(j, key, where);
  if (!(v.is_number() && v.get<double>() > 0 && std::isfinite(v.get<double>())))
    fail(where, ": \"", key, "\" must be a positive number, got ", v.dump());
  return v.get<double>();
}

}  // namespace

ModelShape model_shape_from_json(const nlohmann::json& j, const std::string& source) {
  if (!(j.is_object())) fail(source, ": expected a JSON object, got ", j.type_name());
  const nlohmann::json& format = member(j, "format", source);
  if (!(format == kShapeFormat)) fail(source, ": \"format\" is ", format.dump(), ", expected \"", kShapeFormat, "\"");
  ModelShape s;
  const nlohmann::json& kind = member(j, "kind", source);
  if (!(kind.is_string() && (kind == "gpt" || kind == "vit")))
    fail(source, ": \"kind\" must be \"gpt\" or \"vit\", got ", kind.dump());
  s.kind = kind.get<std::string>();
  s.d_model = positive_int(j, "d_model", source);
  s.ln_eps = positive_number(j, "ln_eps", source);
  s.init_std = positive_number(j, "init_std", source);
  if (s.is_gpt()) {
    s.vocab = positive_int(j, "vocab_size", source);
    s.padded_vocab = pad_vocab(s.vocab);
    s.max_seq = positive_int(j, "max_seq_len", source);
  } else {
    s.image_size = positive_int(j, "image_size", source);
    s.patch_size = positive_int(j, "patch_size", source);
    s.in_channels = positive_int(j, "in_channels", source);
    s.num_classes = positive_int(j, "num_classes", source);
    const nlohmann::json& d = member(j, "distilled", source);
    if (!(d.is_boolean())) fail(source, ": \"distilled\" must be true or false, got ", d.dump());
    s.distilled = d.get<bool>();
  }
  check_kind_fields(s, source + ": ");
  const nlohmann::json& blocks = member(j, "blocks", source);
  if (!(blocks.is_array() && !blocks.empty()))
    fail(source, ": \"blocks\" must be a non-empty list, got ", blocks.dump());
  for (size_t i = 0; i < blocks.size(); ++i) {
    const std::string at = source + ": blocks[" + std::to_string(i) + "]";
    BlockWidths w;
    w.heads = positive_int(blocks[i], "heads", at);
    w.qk_dim = positive_int(blocks[i], "qk_head_dim", at);
    w.v_dim = positive_int(blocks[i], "v_head_dim", at);
    w.mlp_dim = positive_int(blocks[i], "mlp_dim", at);
    w.attention_scale = positive_number(blocks[i], "attention_scale", at);
    s.blocks.push_back(w);
  }
  return s;
}

namespace {

// Fails when the config sets a field to another value than the checkpoint's.
template <typename A, typename B>
void agree(bool present, const std::string& field, const A& config_value, const B& saved, const std::string& source) {
  if (present && !(config_value == saved))
    fail("model.", field, " is ", config_value, " in the config but ", saved, " in ", source);
}

}  // namespace

ModelShape reconcile_model_shape(const config::ModelConfig& m, const ModelShape& saved, const std::string& source) {
  if (!(m.kind() == saved.kind))
    fail("model.kind is \"", m.kind(), "\" in the config but \"", saved.kind, "\" in ", source);
  agree(m.has_n_layer(), "n_layer", m.n_layer(), saved.n_layer(), source);
  agree(m.has_d_model(), "d_model", m.d_model(), saved.d_model, source);
  agree(m.has_ln_eps(), "ln_eps", m.ln_eps(), saved.ln_eps, source);
  agree(m.has_init_std(), "init_std", m.init_std(), saved.init_std, source);
  agree(m.has_vocab_size(), "vocab_size", m.vocab_size(), saved.vocab, source);
  agree(m.has_max_seq_len(), "max_seq_len", m.max_seq_len(), saved.max_seq, source);
  agree(m.has_image_size(), "image_size", m.image_size(), saved.image_size, source);
  agree(m.has_patch_size(), "patch_size", m.patch_size(), saved.patch_size, source);
  agree(m.has_in_channels(), "in_channels", m.in_channels(), saved.in_channels, source);
  agree(m.has_num_classes(), "num_classes", m.num_classes(), saved.num_classes, source);
  agree(m.has_distilled(), "distilled", m.distilled(), saved.distilled, source);
  if (m.blocks_size() != 0)
    if (!(m.blocks_size() == saved.n_layer()))
      fail("model.blocks has ", m.blocks_size(), " entries in the config but ", source, " has ", saved.n_layer(),
           " blocks");
  for (int i = 0; i < saved.n_layer(); ++i) {
    const BlockWidths& w = saved.blocks[i];
    const config::BlockSpec none;
    const config::BlockSpec& b = m.blocks_size() != 0 ? m.blocks(i) : none;
    const std::string at = "blocks[" + std::to_string(i) + "].";
    auto width = [&](bool block_has, int64_t block_value, bool model_has, int64_t model_value, const char* block_key,
                     const char* model_key, int64_t saved_value) {
      if (block_has)
        agree(true, at + block_key, block_value, saved_value, source);
      else
        agree(model_has, std::string(model_key) + " (for " + at + block_key + ")", model_value, saved_value, source);
    };
    width(b.has_heads(), b.heads(), m.has_n_head(), m.n_head(), "heads", "n_head", w.heads);
    width(b.has_qk_head_dim(), b.qk_head_dim(), m.has_head_dim(), m.head_dim(), "qk_head_dim", "head_dim", w.qk_dim);
    width(b.has_v_head_dim(), b.v_head_dim(), m.has_head_dim(), m.head_dim(), "v_head_dim", "head_dim", w.v_dim);
    width(b.has_mlp_dim(), b.mlp_dim(), m.has_mlp_dim(), m.mlp_dim(), "mlp_dim", "mlp_dim", w.mlp_dim);
    agree(b.has_attention_scale(), at + "attention_scale", b.attention_scale(), w.scale(), source);
  }
  return saved;
}

config::ModelConfig model_config_of_shape(const ModelShape& s) {
  config::ModelConfig m;
  m.set_kind(s.kind);
  m.set_n_layer(static_cast<int32_t>(s.n_layer()));
  m.set_d_model(static_cast<int32_t>(s.d_model));
  m.set_n_head(static_cast<int32_t>(s.blocks.empty() ? 1 : s.blocks[0].heads));
  for (const BlockWidths& w : s.blocks) {
    config::BlockSpec* b = m.add_blocks();
    b->set_heads(static_cast<int32_t>(w.heads));
    b->set_qk_head_dim(static_cast<int32_t>(w.qk_dim));
    b->set_v_head_dim(static_cast<int32_t>(w.v_dim));
    b->set_mlp_dim(static_cast<int32_t>(w.mlp_dim));
    b->set_attention_scale(w.scale());
  }
  m.set_ln_eps(s.ln_eps);
  m.set_init_std(s.init_std);
  if (s.is_gpt()) {
    m.set_vocab_size(static_cast<int32_t>(s.vocab));
    m.set_max_seq_len(static_cast<int32_t>(s.max_seq));
  } else {
    m.set_image_size(static_cast<int32_t>(s.image_size));
    m.set_patch_size(static_cast<int32_t>(s.patch_size));
    m.set_in_channels(static_cast<int32_t>(s.in_channels));
    m.set_num_classes(static_cast<int32_t>(s.num_classes));
    m.set_distilled(s.distilled);
  }
  return m;
}

}  // namespace loom
