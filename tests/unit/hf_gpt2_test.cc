#include "trainer/models/interop/hf_gpt2.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <random>

#include "core/error.h"
#include "tests/common/test_util.h"

namespace loom {
namespace {

using testing::error_message;

constexpr int64_t kVocab = 100, kPaddedVocab = 128, kC = 8, kMaxT = 16;
const int64_t kMlp[] = {32, 24};  // per-block MLP widths differ (allowed on import/export)

Tensor random_tensor(const Shape& shape, std::mt19937& rng) {
  std::normal_distribution<float> n;
  std::vector<float> v(static_cast<size_t>(shape_numel(shape)));
  for (float& x : v) x = n(rng);
  return Tensor::from_vector(v, shape);
}

// Our GPT parameters (2 blocks) in canonical order, with the padded wte rows zero.
NamedTensors make_ours(unsigned seed) {
  std::mt19937 rng(seed);
  NamedTensors p;
  Tensor wte = random_tensor({kPaddedVocab, kC}, rng);
  wte.narrow0(kVocab, kPaddedVocab).zero_();
  p.emplace_back("wte.weight", wte);
  p.emplace_back("wpe.weight", random_tensor({kMaxT, kC}, rng));
  for (int i = 0; i < 2; ++i) {
    const std::string b = "blocks." + std::to_string(i) + ".";
    const int64_t M = kMlp[i];
    p.emplace_back(b + "norm1.weight", random_tensor({kC}, rng));
    p.emplace_back(b + "norm1.bias", random_tensor({kC}, rng));
    p.emplace_back(b + "attn.qkv.weight", random_tensor({3 * kC, kC}, rng));
    p.emplace_back(b + "attn.qkv.bias", random_tensor({3 * kC}, rng));
    p.emplace_back(b + "attn.proj.weight", random_tensor({kC, kC}, rng));
    p.emplace_back(b + "attn.proj.bias", random_tensor({kC}, rng));
    p.emplace_back(b + "norm2.weight", random_tensor({kC}, rng));
    p.emplace_back(b + "norm2.bias", random_tensor({kC}, rng));
    p.emplace_back(b + "mlp.fc1.weight", random_tensor({M, kC}, rng));
    p.emplace_back(b + "mlp.fc1.bias", random_tensor({M}, rng));
    p.emplace_back(b + "mlp.fc2.weight", random_tensor({kC, M}, rng));
    p.emplace_back(b + "mlp.fc2.bias", random_tensor({kC}, rng));
  }
  p.emplace_back("norm.weight", random_tensor({kC}, rng));
  p.emplace_back("norm.bias", random_tensor({kC}, rng));
  return p;
}

std::map<std::string, Tensor> by_name(const NamedTensors& t) {
  std::map<std::string, Tensor> m;
  for (const auto& [name, tensor] : t) m[name] = tensor;
  return m;
}

void expect_identical(const NamedTensors& a, const NamedTensors& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].first, b[i].first);
    ASSERT_EQ(a[i].second.shape(), b[i].second.shape()) << a[i].first;
    ASSERT_EQ(a[i].second.dtype(), DType::F32);
    ASSERT_EQ(b[i].second.dtype(), DType::F32);
    EXPECT_EQ(std::memcmp(a[i].second.raw(), b[i].second.raw(), a[i].second.nbytes()), 0) << a[i].first;
  }
}

TEST(HfGpt2, ExportTransposesAndDropsPadding) {
  const NamedTensors ours = make_ours(1);
  const auto o = by_name(ours);
  const auto hf = by_name(export_hf_gpt2(ours, kVocab));
  EXPECT_EQ(hf.size(), ours.size());
  EXPECT_EQ(hf.count("lm_head.weight"), 0u);
  EXPECT_EQ(hf.at("wte.weight").shape(), (Shape{kVocab, kC}));
  for (int64_t v = 0; v < kVocab; ++v)
    for (int64_t c = 0; c < kC; ++c)
      ASSERT_EQ(hf.at("wte.weight").item(v * kC + c), o.at("wte.weight").item(v * kC + c));
  EXPECT_EQ(hf.at("h.0.attn.c_attn.weight").shape(), (Shape{kC, 3 * kC}));
  EXPECT_EQ(hf.at("h.1.attn.c_proj.weight").shape(), (Shape{kC, kC}));
  EXPECT_EQ(hf.at("h.0.mlp.c_fc.weight").shape(), (Shape{kC, kMlp[0]}));
  EXPECT_EQ(hf.at("h.1.mlp.c_fc.weight").shape(), (Shape{kC, kMlp[1]}));
  EXPECT_EQ(hf.at("h.1.mlp.c_proj.weight").shape(), (Shape{kMlp[1], kC}));
  EXPECT_EQ(hf.at("ln_f.bias").item(3), o.at("norm.bias").item(3));
  // HF Conv1D weight[in, out] == our Linear weight[out, in] transposed, element by element.
  const std::pair<const char*, const char*> transposed[] = {{"h.1.attn.c_attn.weight", "blocks.1.attn.qkv.weight"},
                                                            {"h.0.attn.c_proj.weight", "blocks.0.attn.proj.weight"},
                                                            {"h.1.mlp.c_fc.weight", "blocks.1.mlp.fc1.weight"},
                                                            {"h.0.mlp.c_proj.weight", "blocks.0.mlp.fc2.weight"}};
  for (const auto& [hf_name, our_name] : transposed) {
    const Tensor& h = hf.at(hf_name);
    const Tensor& w = o.at(our_name);
    for (int64_t i = 0; i < h.dim(0); ++i)
      for (int64_t j = 0; j < h.dim(1); ++j)
        ASSERT_EQ(h.item(i * h.dim(1) + j), w.item(j * w.dim(1) + i)) << hf_name << " [" << i << ", " << j << "]";
  }
}

TEST(HfGpt2, RoundTripIsIdentical) {
  const NamedTensors ours = make_ours(2);
  expect_identical(import_hf_gpt2(export_hf_gpt2(ours, kVocab), kPaddedVocab), ours);

  // Through a safetensors file, as transformers would read and write it.
  const std::string path = (std::filesystem::path(::testing::TempDir()) / "loom_hf_gpt2_test.safetensors").string();
  save_hf_gpt2(path, ours, kVocab);
  expect_identical(load_hf_gpt2(path, kPaddedVocab), ours);
  std::filesystem::remove(path);
}

TEST(HfGpt2, ImportAcceptsPrefixBuffersTiedHeadAndOtherDtypes) {
  const NamedTensors ours = make_ours(3);
  NamedTensors hf;
  for (const auto& [name, t] : export_hf_gpt2(ours, kVocab)) {
    // As GPT2LMHeadModel.state_dict() names them; ln_f.weight stored in bf16.
    hf.emplace_back("transformer." + name, name == "ln_f.weight" ? t.cast(DType::BF16) : t);
    if (name == "wte.weight") hf.emplace_back("lm_head.weight", t);
  }
  hf.emplace_back("transformer.h.0.attn.bias", Tensor::zeros({1, 1, kMaxT, kMaxT}, DType::F32));
  hf.emplace_back("transformer.h.1.attn.masked_bias", Tensor::zeros({}, DType::F32));
  // The same bf16 values stored as f16.
  NamedTensors half = hf;
  for (auto& [name, t] : half)
    if (name == "transformer.ln_f.weight") t = t.cast(DType::F16);
  const NamedTensors back = import_hf_gpt2(hf, kPaddedVocab);
  const NamedTensors back_half = import_hf_gpt2(half, kPaddedVocab);
  ASSERT_EQ(back.size(), ours.size());
  ASSERT_EQ(back_half.size(), ours.size());
  for (size_t i = 0; i < ours.size(); ++i) {
    EXPECT_EQ(back[i].first, ours[i].first);
    ASSERT_EQ(back[i].second.dtype(), DType::F32);
    const bool rounded = ours[i].first == "norm.weight";
    for (int64_t k = 0; k < ours[i].second.numel(); ++k) {
      const float x = static_cast<float>(ours[i].second.item(k));
      const float want = rounded ? bf16_to_float(float_to_bf16(x)) : x;
      const float want_half = rounded ? f16_to_float(float_to_f16(want)) : x;
      ASSERT_EQ(back[i].second.item(k), want) << ours[i].first << " element " << k;
      ASSERT_EQ(back_half[i].second.item(k), want_half) << ours[i].first << " element " << k;
    }
  }
}

TEST(HfGpt2, ImportErrorsNameTheTensor) {
  const NamedTensors good = export_hf_gpt2(make_ours(4), kVocab);
  auto with = [&](const std::function<void(NamedTensors&)>& edit) {
    NamedTensors t = good;
    edit(t);
    return error_message([&] { import_hf_gpt2(t, kPaddedVocab); });
  };
  auto replace = [](NamedTensors& t, const std::string& name, const Tensor& v) {
    for (auto& [n, x] : t)
      if (n == name) x = v;
  };
  // Our layout instead of Conv1D's.
  EXPECT_EQ(with([&](NamedTensors& t) {
              replace(t, "h.1.attn.c_attn.weight", Tensor::zeros({3 * kC, kC}, DType::F32));
            }),
            "import_hf_gpt2: tensor 'h.1.attn.c_attn.weight' has shape [24, 8], expected [8, 24]");
  EXPECT_EQ(with([&](NamedTensors& t) {
              replace(t, "h.0.mlp.c_proj.weight", Tensor::zeros({kMlp[0] + 1, kC}, DType::F32));
            }),
            "import_hf_gpt2: tensor 'h.0.mlp.c_proj.weight' has shape [33, 8], expected [32, 8]");
  EXPECT_EQ(with([](NamedTensors& t) {
              t.erase(std::find_if(t.begin(), t.end(), [](const auto& e) { return e.first == "h.1.ln_2.bias"; }));
            }),
            "import_hf_gpt2: missing tensor 'h.1.ln_2.bias'");
  EXPECT_EQ(with([](NamedTensors& t) { t.emplace_back("h.0.attn.rotary", Tensor::zeros({2}, DType::F32)); }),
            "import_hf_gpt2: unexpected tensor 'h.0.attn.rotary'");
  EXPECT_EQ(with([](NamedTensors& t) {
              t.emplace_back("transformer.wpe.weight", Tensor::zeros({kMaxT, kC}, DType::F32));
            }),
            "import_hf_gpt2: duplicate tensor 'wpe.weight'");
  EXPECT_EQ(with([](NamedTensors& t) {
              t.emplace_back("lm_head.weight", Tensor::zeros({kVocab, kC}, DType::F32));
            }),
            "import_hf_gpt2: tensor 'lm_head.weight' differs from 'wte.weight' (only tied output heads are supported)");
  EXPECT_NE(error_message([&] { import_hf_gpt2(good, kVocab - 1); }).find("tensor 'wte.weight' has shape [100, 8]"),
            std::string::npos);
}

// A transposed wte [C, V] is refused by its shape against wpe's before the padded embedding is allocated:
// padded_vocab x V floats (10 GB for GPT-2) used to be asked for before any shape check failed.
TEST(HfGpt2, ImportRefusesATransposedEmbeddingBeforeAllocating) {
  NamedTensors hf = export_hf_gpt2(make_ours(6), kVocab);
  for (auto& [name, t] : hf)
    if (name == "wte.weight") t = Tensor::zeros({kC, kVocab}, DType::F32);
  EXPECT_EQ(error_message([&] { import_hf_gpt2(hf, kPaddedVocab); }),
            "import_hf_gpt2: tensor 'wte.weight' has shape [8, 100] but 'wpe.weight' has shape [16, 8]: expected "
            "wte [V, C] and wpe [maxT, C] (is one of them transposed?)");
}

TEST(HfGpt2, ExportErrorsNameTheTensor) {
  NamedTensors ours = make_ours(5);
  for (auto& [name, t] : ours)
    if (name == "blocks.1.attn.qkv.weight") t = Tensor::zeros({2 * kC + 4, kC}, DType::F32);  // pruned heads
  EXPECT_EQ(error_message([&] { export_hf_gpt2(ours, kVocab); }),
            "export_hf_gpt2: tensor 'blocks.1.attn.qkv.weight' has shape [20, 8], expected [24, 8] (Hugging Face "
            "GPT-2 needs equal head widths: 3C QKV rows)");
  NamedTensors missing = make_ours(5);
  missing.pop_back();
  EXPECT_EQ(error_message([&] { export_hf_gpt2(missing, kVocab); }), "export_hf_gpt2: missing tensor 'norm.bias'");
  NamedTensors extra = make_ours(5);
  extra.emplace_back("head.weight", Tensor::zeros({2}, DType::F32));
  EXPECT_EQ(error_message([&] { export_hf_gpt2(extra, kVocab); }), "export_hf_gpt2: unexpected tensor 'head.weight'");
  EXPECT_NE(error_message([&] { export_hf_gpt2(make_ours(5), kPaddedVocab + 1); }).find("'wte.weight'"), std::string::npos);
}

TEST(HfGpt2, OnlyEvenWidthsAreRepresentable) {
  ModelShape s;
  s.kind = "gpt";
  s.vocab = 50257;
  s.padded_vocab = pad_vocab(s.vocab);
  s.max_seq = 1024;
  s.d_model = 768;
  s.blocks.assign(12, BlockWidths{12, 64, 64, 3072});
  EXPECT_NO_THROW(check_hf_gpt2_representable(s, "ckpt"));
  s.blocks[3].v_dim = 32;
  const std::string message = error_message([&] { check_hf_gpt2_representable(s, "ckpt"); });
  EXPECT_EQ(message.rfind("ckpt: Hugging Face GPT-2 cannot represent per-block widths: block 3 has 12 heads", 0), 0u)
      << message;
  EXPECT_NE(message.find("loom export"), std::string::npos) << message;
  s.blocks[3].v_dim = 64;
  s.blocks[5].attention_scale = 0.25;  // a shrunk block keeps its original scale: not GPT-2's
  EXPECT_NE(error_message([&] { check_hf_gpt2_representable(s, "ckpt"); }).find("block 5"), std::string::npos);
}

}  // namespace
}  // namespace loom
