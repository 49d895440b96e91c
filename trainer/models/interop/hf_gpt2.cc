#include "trainer/models/interop/hf_gpt2.h"

#include <algorithm>

#include "trainer/models/interop/import.h"

#include <cmath>
#include <cstring>
#include <map>
#include <regex>

#include "core/error.h"

namespace loom {
namespace {

// Per-block parameters in our canonical order. `transpose`: our Linear [out, in] vs HF Conv1D [in, out].
struct BlockParam {
  const char* ours;
  const char* hf;
  bool transpose;
};
constexpr BlockParam kBlockParams[] = {
    {"norm1.weight", "ln_1.weight", false},           {"norm1.bias", "ln_1.bias", false},
    {"attn.qkv.weight", "attn.c_attn.weight", true},  {"attn.qkv.bias", "attn.c_attn.bias", false},
    {"attn.proj.weight", "attn.c_proj.weight", true}, {"attn.proj.bias", "attn.c_proj.bias", false},
    {"norm2.weight", "ln_2.weight", false},           {"norm2.bias", "ln_2.bias", false},
    {"mlp.fc1.weight", "mlp.c_fc.weight", true},      {"mlp.fc1.bias", "mlp.c_fc.bias", false},
    {"mlp.fc2.weight", "mlp.c_proj.weight", true},    {"mlp.fc2.bias", "mlp.c_proj.bias", false},
};

// Our-layout shape of a block parameter for model width C and MLP width M.
Shape our_block_shape(const std::string& ours, int64_t C, int64_t M) {
  if (ours == "attn.qkv.weight") return {3 * C, C};
  if (ours == "attn.qkv.bias") return {3 * C};
  if (ours == "attn.proj.weight") return {C, C};
  if (ours == "mlp.fc1.weight") return {M, C};
  if (ours == "mlp.fc1.bias") return {M};
  if (ours == "mlp.fc2.weight") return {C, M};
  return {C};  // norms and the remaining biases
}

Shape transposed(const Shape& s) { return {s[1], s[0]}; }

// out[j, i] = in[i, j] for a 2-D tensor, as a new F32 CPU tensor.
Tensor transpose2d(const Tensor& in) {
  const int64_t rows = in.dim(0), cols = in.dim(1);
  Tensor out = Tensor::empty({cols, rows}, DType::F32);
  const float* src = in.data<float>();
  float* dst = out.data<float>();
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) dst[j * rows + i] = src[i * cols + j];
  return out;
}

// Tensors by name that are consumed one by one; what is left at the end was unexpected.
class Pool {
 public:
  explicit Pool(const char* what) : what_(what) {}
  void add(const std::string& name, const Tensor& t) {
    if (!t.defined()) fail(what_, ": tensor '", name, "' is undefined");
    if (!tensors_.emplace(name, t).second) fail(what_, ": duplicate tensor '", name, "'");
  }
  bool has(const std::string& name) const { return tensors_.count(name) > 0; }
  const Tensor& peek(const std::string& name) const {
    auto it = tensors_.find(name);
    if (it == tensors_.end()) fail(what_, ": missing tensor '", name, "'");
    return it->second;
  }
  // Removes `name` and returns it as a contiguous F32 CPU tensor, after checking its shape.
  Tensor take(const std::string& name, const Shape& expected, const char* why = "") {
    const Tensor t = peek(name);
    if (t.shape() != expected)
      fail(what_, ": tensor '", name, "' has shape ", shape_str(t.shape()), ", expected ", shape_str(expected), why);
    tensors_.erase(name);
    const Tensor host = t.device().is_cpu() ? t : t.to(Device::cpu());
    return host.dtype() == DType::F32 ? host : host.cast(DType::F32);
  }
  // Largest N such that some name starts with "<prefix>.<N-1>.", or 0.
  int64_t count_indexed(const std::string& prefix) const {
    const std::regex pattern("^" + prefix + "\\.([0-9]+)\\..*");
    int64_t n = 0;
    std::smatch m;
    for (const auto& [name, t] : tensors_)
      if (std::regex_match(name, m, pattern) && m[1].length() < 10) n = std::max<int64_t>(n, std::stoll(m[1]) + 1);
    return n;
  }
  void expect_empty() const {
    if (!tensors_.empty()) fail(what_, ": unexpected tensor '", tensors_.begin()->first, "'");
  }

 private:
  const char* what_;
  std::map<std::string, Tensor> tensors_;
};

// A fresh copy of `t` (F32 CPU) so outputs never alias inputs.
Tensor clone(const Tensor& t) {
  Tensor out = Tensor::empty(t.shape(), DType::F32);
  out.copy_from(t);
  return out;
}

int64_t mlp_width(const Tensor& w, size_t dim, const std::string& name, const char* what) {
  if (w.ndim() != 2) fail(what, ": tensor '", name, "' has shape ", shape_str(w.shape()), ", expected 2 dimensions");
  return w.dim(static_cast<int>(dim));
}

}  // namespace

void check_hf_gpt2_representable(const ModelShape& s, const std::string& source) {
  check_uniform_blocks(s, source, "Hugging Face GPT-2");
}

nlohmann::json hf_gpt2_config(const ModelShape& s) {
  const BlockWidths& b = s.blocks.at(0);
  const int64_t eot = std::min<int64_t>(50256, s.vocab - 1);  // GPT-2's <|endoftext|>, when the vocabulary has it
  return {{"architectures", {"GPT2LMHeadModel"}},
          {"model_type", "gpt2"},
          {"vocab_size", s.vocab},
          {"n_positions", s.max_seq},
          {"n_ctx", s.max_seq},
          {"n_embd", s.d_model},
          {"n_layer", s.n_layer()},
          {"n_head", b.heads},
          {"n_inner", b.mlp_dim},
          {"activation_function", "gelu_new"},  // the tanh approximation, as GPT-2 and this project use
          {"layer_norm_epsilon", s.ln_eps},
          {"initializer_range", s.init_std},
          {"resid_pdrop", 0.0},
          {"embd_pdrop", 0.0},
          {"attn_pdrop", 0.0},
          {"scale_attn_weights", true},
          {"tie_word_embeddings", true},
          {"bos_token_id", eot},
          {"eos_token_id", eot},
          {"torch_dtype", "float32"}};
}

NamedTensors export_hf_gpt2(const NamedTensors& ours, int64_t vocab) {
  const char* what = "export_hf_gpt2";
  Pool pool(what);
  for (const auto& [name, t] : ours) pool.add(name, t);
  const Tensor& wte_in = pool.peek("wte.weight");
  if (!(wte_in.ndim() == 2 && vocab > 0 && vocab <= wte_in.dim(0)))
    fail(what, ": tensor 'wte.weight' has shape ", shape_str(wte_in.shape()), ", expected [Vp, C] with Vp >= vocab ",
         vocab);
  const int64_t C = wte_in.dim(1);
  const int64_t n_layer = pool.count_indexed("blocks");

  NamedTensors hf;
  const Tensor wte = pool.take("wte.weight", wte_in.shape());
  hf.emplace_back("wte.weight", clone(wte.narrow0(0, vocab)));
  const Tensor& wpe = pool.peek("wpe.weight");
  if (wpe.ndim() != 2)
    fail(what, ": tensor 'wpe.weight' has shape ", shape_str(wpe.shape()), ", expected [maxT, ", C, "]");
  hf.emplace_back("wpe.weight", clone(pool.take("wpe.weight", {wpe.dim(0), C})));
  for (int64_t i = 0; i < n_layer; ++i) {
    const std::string ours_prefix = "blocks." + std::to_string(i) + ".";
    const std::string fc1 = ours_prefix + "mlp.fc1.weight";
    const int64_t M = mlp_width(pool.peek(fc1), 0, fc1, what);
    for (const BlockParam& p : kBlockParams) {
      const Tensor t = pool.take(ours_prefix + p.ours, our_block_shape(p.ours, C, M),
                                 " (Hugging Face GPT-2 needs equal head widths: 3C QKV rows)");
      hf.emplace_back("h." + std::to_string(i) + "." + p.hf, p.transpose ? transpose2d(t) : clone(t));
    }
  }
  hf.emplace_back("ln_f.weight", clone(pool.take("norm.weight", {C})));
  hf.emplace_back("ln_f.bias", clone(pool.take("norm.bias", {C})));
  pool.expect_empty();
  return hf;
}

NamedTensors import_hf_gpt2(const NamedTensors& hf, int64_t padded_vocab) {
  const char* what = "import_hf_gpt2";
  static const std::regex kBuffer("^h\\.[0-9]+\\.attn\\.(bias|masked_bias)$");
  Pool pool(what);
  Tensor lm_head;
  for (const auto& [full_name, t] : hf) {
    const std::string name = full_name.rfind("transformer.", 0) == 0 ? full_name.substr(12) : full_name;
    if (std::regex_match(name, kBuffer)) continue;  // causal-mask buffers, not parameters
    if (name == "lm_head.weight") {
      if (lm_head.defined()) fail(what, ": duplicate tensor 'lm_head.weight'");
      lm_head = t;
      continue;
    }
    pool.add(name, t);
  }
  const Tensor& wte_in = pool.peek("wte.weight");
  if (!(wte_in.ndim() == 2 && wte_in.dim(0) <= padded_vocab))
    fail(what, ": tensor 'wte.weight' has shape ", shape_str(wte_in.shape()),
         ", expected [V, C] with V <= padded vocab ", padded_vocab);
  const int64_t V = wte_in.dim(0), C = wte_in.dim(1);
  // The width is confirmed before padded_vocab x C floats are allocated: a transposed wte [C, V] would ask
  // for padded_vocab x V (10 GB for GPT-2).
  const Tensor& wpe_in = pool.peek("wpe.weight");
  if (wpe_in.ndim() != 2 || wpe_in.dim(1) != C)
    fail(what, ": tensor 'wte.weight' has shape ", shape_str(wte_in.shape()), " but 'wpe.weight' has shape ",
         shape_str(wpe_in.shape()), ": expected wte [V, C] and wpe [maxT, C] (is one of them transposed?)");
  const int64_t n_layer = pool.count_indexed("h");

  NamedTensors ours;
  const Tensor wte = pool.take("wte.weight", {V, C});
  if (lm_head.defined()) {
    if (lm_head.shape() != wte.shape())
      fail(what, ": tensor 'lm_head.weight' has shape ", shape_str(lm_head.shape()), ", expected ",
           shape_str(wte.shape()), " (tied to wte.weight)");
    const Tensor head =
        lm_head.device().is_cpu() ? lm_head.cast(DType::F32) : lm_head.to(Device::cpu()).cast(DType::F32);
    if (std::memcmp(head.raw(), wte.raw(), wte.nbytes()) != 0)
      fail(what, ": tensor 'lm_head.weight' differs from 'wte.weight' (only tied output heads are supported)");
  }
  Tensor wte_padded = Tensor::zeros({padded_vocab, C}, DType::F32);
  wte_padded.narrow0(0, V).copy_from(wte);
  ours.emplace_back("wte.weight", wte_padded);
  ours.emplace_back("wpe.weight", clone(pool.take("wpe.weight", {wpe_in.dim(0), C})));
  for (int64_t i = 0; i < n_layer; ++i) {
    const std::string hf_prefix = "h." + std::to_string(i) + ".";
    const std::string c_fc = hf_prefix + "mlp.c_fc.weight";
    const int64_t M = mlp_width(pool.peek(c_fc), 1, c_fc, what);
    for (const BlockParam& p : kBlockParams) {
      const Shape shape = our_block_shape(p.ours, C, M);
      const Tensor t = pool.take(hf_prefix + p.hf, p.transpose ? transposed(shape) : shape);
      ours.emplace_back("blocks." + std::to_string(i) + "." + p.ours, p.transpose ? transpose2d(t) : clone(t));
    }
  }
  ours.emplace_back("norm.weight", clone(pool.take("ln_f.weight", {C})));
  ours.emplace_back("norm.bias", clone(pool.take("ln_f.bias", {C})));
  pool.expect_empty();
  return ours;
}

NamedTensors load_hf_gpt2(const std::string& path, int64_t padded_vocab) {
  safetensors::File file = safetensors::read(path);
  try {
    return import_hf_gpt2(file.tensors, padded_vocab);
  } catch (const Error& e) {
    fail(path, ": ", e.what());
  }
}

void save_hf_gpt2(const std::string& path, const NamedTensors& ours, int64_t vocab) {
  safetensors::write(path, export_hf_gpt2(ours, vocab), {{"format", "pt"}});
}

}  // namespace loom
