#include "core/tokenizer.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <array>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "core/error.h"
#include "tests/common/test_util.h"

namespace loom {
namespace {

using testing::error_message;
namespace fs = std::filesystem;

std::string default_vocab_dir() { return gpt2_vocab_dir(std::string(LOOM_SOURCE_DIR) + "/data/gpt2"); }

bool vocab_present(const std::string& dir) {
  return fs::exists(dir + "/encoder.json") && fs::exists(dir + "/vocab.bpe");
}

// A fresh folder for one test, removed afterwards.
struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& name) {
    path = fs::temp_directory_path() / ("loom_tokenizer_test_" + std::to_string(::getpid()) + "_" + name);
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
  std::string file(const std::string& name, const std::string& contents) const {
    const std::string p = (path / name).string();
    std::ofstream(p, std::ios::binary) << contents;
    return p;
  }
};

// The GPT-2 tokenizer, loaded once for the suite (about a second); null when the vocabulary is absent.
class Gpt2TokenizerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (vocab_present(default_vocab_dir())) tokenizer_ = std::make_unique<Tokenizer>(Tokenizer::from_dir(default_vocab_dir()));
  }
  static void TearDownTestSuite() { tokenizer_.reset(); }
  void SetUp() override {
    if (!tokenizer_)
      GTEST_SKIP() << "GPT-2 vocabulary not found in '" << default_vocab_dir()
                   << "': run scripts/fetch_gpt2_vocab.sh data/gpt2 or set LOOM_GPT2_DIR";
  }
  static std::unique_ptr<Tokenizer> tokenizer_;
};
std::unique_ptr<Tokenizer> Gpt2TokenizerTest::tokenizer_;

TEST_F(Gpt2TokenizerTest, MatchesReferenceParityVectors) {
  const std::string path = std::string(LOOM_SOURCE_DIR) + "/tests/data/tokenizer/parity.json";
  std::ifstream in(path);
  ASSERT_TRUE(in) << "cannot open " << path;
  const nlohmann::json parity = nlohmann::json::parse(in);
  ASSERT_GE(parity["cases"].size(), 30u);
  for (const auto& c : parity["cases"]) {
    const std::string name = c["name"], text = c["text"];
    const std::vector<int32_t> expected = c["ids"].get<std::vector<int32_t>>();
    const std::vector<int32_t> ids =
        c["special"].get<bool>() ? tokenizer_->encode_with_special(text) : tokenizer_->encode(text);
    EXPECT_EQ(ids, expected) << "case " << name;
    EXPECT_EQ(tokenizer_->decode(ids), text) << "case " << name;
  }
}

TEST_F(Gpt2TokenizerTest, VocabularyShape) {
  EXPECT_EQ(tokenizer_->vocab_size(), 50257);
  EXPECT_EQ(tokenizer_->eot_token(), 50256);
  EXPECT_EQ(tokenizer_->token_bytes(50256), "<|endoftext|>");
  EXPECT_EQ(tokenizer_->token_bytes(198), "\n");
  EXPECT_EQ(tokenizer_->token_bytes(220), " ");
  EXPECT_THROW(tokenizer_->token_bytes(50257), Error);
  EXPECT_THROW(tokenizer_->token_bytes(-1), Error);
}

TEST_F(Gpt2TokenizerTest, EndOfTextIsOrdinaryTextUnlessAsked) {
  const std::string text = "a<|endoftext|>b";
  const std::vector<int32_t> plain = tokenizer_->encode(text);
  EXPECT_EQ(std::count(plain.begin(), plain.end(), 50256), 0);
  EXPECT_EQ(tokenizer_->decode(plain), text);
  const std::vector<int32_t> special = tokenizer_->encode_with_special(text);
  std::vector<int32_t> expected = tokenizer_->encode("a");
  expected.push_back(50256);
  for (int32_t id : tokenizer_->encode("b")) expected.push_back(id);
  EXPECT_EQ(special, expected);
  EXPECT_EQ(tokenizer_->decode(special), text);
}

TEST_F(Gpt2TokenizerTest, DecodeRejectsIdsOutsideTheVocabulary) {
  const std::vector<int32_t> bad = {464, 50257};
  const std::string message = error_message([&] { tokenizer_->decode(bad); });
  EXPECT_NE(message.find("50257"), std::string::npos) << message;
  EXPECT_THROW(tokenizer_->decode(std::vector<int32_t>{-3}), Error);
}

// Invalid UTF-8: every byte survives, and the valid text around an invalid run is split as if the run
// were a separate document.
TEST_F(Gpt2TokenizerTest, InvalidUtf8RoundTripsByteExactly) {
  const std::vector<std::string> samples = {"abc\xff\xfe" "def", "\xe6\x97", "\x80", "x \xc0\xaf y",
                                            "\xed\xa0\x80 surrogate", "caf\xc3", "\xf4\x90\x80\x80 too big"};
  for (const std::string& s : samples) {
    const std::vector<int32_t> ids = tokenizer_->encode(s);
    EXPECT_EQ(tokenizer_->decode(ids), s);
  }
  std::vector<int32_t> expected = tokenizer_->encode("hello");
  for (int32_t id : tokenizer_->encode("\xff")) expected.push_back(id);
  for (int32_t id : tokenizer_->encode("world")) expected.push_back(id);
  EXPECT_EQ(tokenizer_->encode("hello\xffworld"), expected);

  std::mt19937 rng(7);
  for (int trial = 0; trial < 200; ++trial) {
    std::string bytes(rng() % 64, '\0');
    for (char& b : bytes) b = static_cast<char>(rng() % 256);
    const std::vector<int32_t> ids = tokenizer_->encode(bytes);
    for (int32_t id : ids) ASSERT_TRUE(id >= 0 && id < 50256) << id;
    ASSERT_EQ(tokenizer_->decode(ids), bytes) << "trial " << trial;
  }
}

TEST_F(Gpt2TokenizerTest, RandomUnicodeRoundTrips) {
  // Code points from ASCII, Latin-1, Greek/Cyrillic, combining marks, CJK, emoji and spaces.
  const std::vector<std::pair<uint32_t, uint32_t>> ranges = {
      {0x20, 0x7e}, {0x09, 0x0d}, {0xa0, 0xff}, {0x370, 0x4ff}, {0x300, 0x36f}, {0x4e00, 0x4fff},
      {0x1f600, 0x1f64f}, {0x2000, 0x200a}, {0x30, 0x39}};
  std::mt19937 rng(11);
  for (int trial = 0; trial < 200; ++trial) {
    std::string text;
    const int length = static_cast<int>(rng() % 40);
    for (int i = 0; i < length; ++i) {
      const auto& [lo, hi] = ranges[rng() % ranges.size()];
      const uint32_t cp = lo + rng() % (hi - lo + 1);
      if (cp < 0x80) {
        text += static_cast<char>(cp);
      } else if (cp < 0x800) {
        text += static_cast<char>(0xC0 | (cp >> 6));
        text += static_cast<char>(0x80 | (cp & 0x3F));
      } else if (cp < 0x10000) {
        text += static_cast<char>(0xE0 | (cp >> 12));
        text += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        text += static_cast<char>(0x80 | (cp & 0x3F));
      } else {
        text += static_cast<char>(0xF0 | (cp >> 18));
        text += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
        text += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        text += static_cast<char>(0x80 | (cp & 0x3F));
      }
    }
    ASSERT_EQ(tokenizer_->decode(tokenizer_->encode(text)), text) << "trial " << trial;
  }
}

// GPT-2's bytes_to_unicode(), written out again here as the test's reference for building a tiny vocabulary.
std::string byte_symbol(int b) {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    uint32_t extra = 256;
    for (uint32_t c = 0; c < 256; ++c)
      t[c] = ((c >= 33 && c <= 126) || (c >= 161 && c <= 172) || (c >= 174)) ? c : extra++;
    return t;
  }();
  const uint32_t cp = table[b];
  std::string s;
  if (cp < 0x80) {
    s += static_cast<char>(cp);
  } else {
    s += static_cast<char>(0xC0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return s;
}

// A vocabulary of the 256 byte tokens (ids 0..255), merges "a b" -> 256, "b c" -> 257, "ab c" -> 258,
// "a a" -> 259 (ranks in that order) and <|endoftext|> = 260.
struct TinyVocab {
  TempDir dir{"tiny"};
  std::string encoder, merges;
  TinyVocab() {
    nlohmann::json json = nlohmann::json::object();
    for (int b = 0; b < 256; ++b) json[byte_symbol(b)] = b;
    json["ab"] = 256;
    json["bc"] = 257;
    json["abc"] = 258;
    json["aa"] = 259;
    json["<|endoftext|>"] = 260;
    encoder = dir.file("encoder.json", json.dump());
    merges = dir.file("vocab.bpe", "#version: 0.2\na b\nb c\nab c\na a\n");
  }
};

TEST(TokenizerBpe, MergesLowestRankFirstOnATinyVocabulary) {
  TinyVocab vocab;
  const Tokenizer tokenizer(vocab.encoder, vocab.merges);
  EXPECT_EQ(tokenizer.vocab_size(), 261);
  EXPECT_EQ(tokenizer.eot_token(), 260);
  // (a,b) has rank 0 -> [ab, c]; then (ab, c) rank 2 -> [abc].
  EXPECT_EQ(tokenizer.encode("abc"), (std::vector<int32_t>{258}));
  // (a,b) rank 0 first -> [b, c, ab]; then (b,c) rank 1 -> [bc, ab].
  EXPECT_EQ(tokenizer.encode("bcab"), (std::vector<int32_t>{257, 256}));
  // Overlapping pairs merge left to right: a a a -> [aa, a].
  EXPECT_EQ(tokenizer.encode("aaa"), (std::vector<int32_t>{259, 'a'}));
  // The regex splits " abc" (with its space) and "!" apart; the space has no merges here.
  EXPECT_EQ(tokenizer.encode("abc abc!"), (std::vector<int32_t>{258, ' ', 258, '!'}));
  EXPECT_EQ(tokenizer.encode_with_special("ab<|endoftext|>c"), (std::vector<int32_t>{256, 260, 'c'}));
  EXPECT_EQ(tokenizer.decode(std::vector<int32_t>{258, 260, 259}), "abc<|endoftext|>aa");
}

TEST(TokenizerFiles, MissingFilesAreNamed) {
  TinyVocab vocab;
  const std::string missing = (vocab.dir.path / "nope.json").string();
  std::string message = error_message([&] { Tokenizer(missing, vocab.merges); });
  EXPECT_NE(message.find(missing), std::string::npos) << message;
  message = error_message([&] { Tokenizer::from_dir((vocab.dir.path / "absent").string()); });
  EXPECT_NE(message.find("absent/encoder.json"), std::string::npos) << message;
}

TEST(TokenizerFiles, CorruptEncoderIsNamed) {
  TinyVocab vocab;
  for (const std::string contents : {"{not json", "[1, 2]", R"({"a": -1})", R"({"a": 0, "b": 0})"}) {
    const std::string bad = vocab.dir.file("bad_encoder.json", contents);
    const std::string message = error_message([&] { Tokenizer(bad, vocab.merges); });
    EXPECT_NE(message.find(bad), std::string::npos) << contents << ": " << message;
  }
}

TEST(TokenizerFiles, CorruptMergesAreNamedWithTheLine) {
  TinyVocab vocab;
  for (const std::string contents : {"#version: 0.2\na b\nabc\n", "#version: 0.2\na b\nx y\n", "#version: 0.2\n"}) {
    const std::string bad = vocab.dir.file("bad_vocab.bpe", contents);
    const std::string message = error_message([&] { Tokenizer(vocab.encoder, bad); });
    EXPECT_NE(message.find(bad), std::string::npos) << message;
  }
  const std::string bad = vocab.dir.file("bad_vocab.bpe", "#version: 0.2\na b\nb c d\n");
  EXPECT_NE(error_message([&] { Tokenizer(vocab.encoder, bad); }).find("line 3"), std::string::npos);
}

TEST(TokenizerFiles, VocabDirComesFromTheEnvironment) {
  const char* old = std::getenv("LOOM_GPT2_DIR");
  const std::string saved = old ? old : "";
  ::setenv("LOOM_GPT2_DIR", "/some/where", 1);
  EXPECT_EQ(gpt2_vocab_dir("/fallback"), "/some/where");
  ::unsetenv("LOOM_GPT2_DIR");
  EXPECT_EQ(gpt2_vocab_dir("/fallback"), "/fallback");
  if (old) ::setenv("LOOM_GPT2_DIR", saved.c_str(), 1);
}

}  // namespace
}  // namespace loom
