#include "core/text_corpus.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>

#include "core/error.h"
#include "tests/common/test_util.h"
#include "core/token_shards.h"

namespace loom {
namespace {
namespace fs = std::filesystem;
using testing::error_message;
using testing::TempDir;

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

TEST(UnigramEntropy, HandCheckableShards) {
  TempDir dir("entropy");
  // Tokens 1, 1, 2, 3: p = 1/2, 1/4, 1/4, so H = 1/2 ln 2 + 2 * 1/4 ln 4 = 1.5 ln 2.
  write_shard(dir / "a.bin", std::vector<int32_t>{1, 1, 2, 3});
  EXPECT_NEAR(unigram_entropy_nats({dir / "a.bin"}), 1.5 * std::log(2.0), 1e-12);
  // Together with a shard of 4, 4, 4, 4: p = 1/4, 1/8, 1/8, 1/2 -> H = 1/4 ln 4 + 2/8 ln 8 + 1/2 ln 2.
  write_shard(dir / "b.bin", std::vector<int32_t>{4, 4, 4, 4});
  const double expected = 0.25 * std::log(4.0) + 0.25 * std::log(8.0) + 0.5 * std::log(2.0);
  EXPECT_NEAR(unigram_entropy_nats({dir / "a.bin", dir / "b.bin"}), expected, 1e-12);
  EXPECT_NEAR(unigram_entropy_nats({dir / "b.bin"}), 0.0, 1e-15);
  write_shard(dir / "empty.bin", std::vector<int32_t>{});
  EXPECT_THROW(unigram_entropy_nats({dir / "empty.bin"}), Error);
  EXPECT_THROW(unigram_entropy_nats({}), Error);
  EXPECT_NE(error_message([&] { unigram_entropy_nats({dir / "absent.bin"}); }).find("absent.bin"), std::string::npos);
}

TEST(TextFiles, FoldersAreSearchedRecursivelyAndSorted) {
  TempDir dir("list");
  dir.file("docs/z.txt", "z");
  dir.file("docs/a/x.txt", "x");
  dir.file("docs/a/b/y.txt", "y");
  dir.file("docs/notes.md", "not text");
  const std::string single = dir.file("single.txt", "s");
  EXPECT_EQ(list_text_files({dir / "docs", single}),
            (std::vector<std::string>{dir / "docs/a/b/y.txt", dir / "docs/a/x.txt", dir / "docs/z.txt", single}));
  EXPECT_NE(error_message([&] { list_text_files({dir / "nowhere"}); }).find("nowhere"), std::string::npos);
}

// --glob: Markdown and reStructuredText sources (the kernel documentation's *.rst) instead of *.txt.
TEST(TextFiles, FoldersAreSearchedForTheGivenPatterns) {
  TempDir dir("globs");
  dir.file("docs/guide.md", "m");
  dir.file("docs/api/index.rst", "r");
  dir.file("docs/notes.txt", "t");
  dir.file("docs/build.py", "p");
  EXPECT_EQ(list_text_files({dir / "docs"}, {"*.md", "*.rst"}),
            (std::vector<std::string>{dir / "docs/api/index.rst", dir / "docs/guide.md"}));
  EXPECT_EQ(list_text_files({dir / "docs"}), (std::vector<std::string>{dir / "docs/notes.txt"}));
}

class TextCorpusTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string vocab = gpt2_vocab_dir(std::string(LOOM_SOURCE_DIR) + "/data/gpt2");
    if (fs::exists(vocab + "/encoder.json") && fs::exists(vocab + "/vocab.bpe"))
      tokenizer_ = std::make_unique<Tokenizer>(Tokenizer::from_dir(vocab));
  }
  static void TearDownTestSuite() { tokenizer_.reset(); }
  void SetUp() override {
    if (!tokenizer_)
      GTEST_SKIP() << "GPT-2 vocabulary not found: run scripts/fetch_gpt2_vocab.sh data/gpt2 or set LOOM_GPT2_DIR";
  }
  static std::unique_ptr<Tokenizer> tokenizer_;
};
std::unique_ptr<Tokenizer> TextCorpusTest::tokenizer_;

std::vector<int32_t> concat_shards(const std::vector<std::string>& shards) {
  std::vector<int32_t> all;
  for (const std::string& s : shards) {
    const std::vector<int32_t> tokens = read_shard(s);
    all.insert(all.end(), tokens.begin(), tokens.end());
  }
  return all;
}

TEST_F(TextCorpusTest, SplitsDocumentsAndShardsTokens) {
  TempDir dir("prepare");
  std::vector<std::string> texts;
  for (int i = 0; i < 8; ++i) {
    texts.push_back("Document number " + std::to_string(i) + " talks about kernel module " + std::string(i, 'x') +
                    ".\nIt has\ttwo lines <|endoftext|> and a literal marker.\n");
    dir.file("in/doc" + std::to_string(i) + ".txt", texts.back());
  }
  dir.file("in/skip.rst", "ignored");
  dir.file("out/keep.json", "{}");
  write_shard(dir / "out/train_000099.bin", std::vector<int32_t>{1});  // stale: must be removed

  TextCorpusOptions options;
  options.val_fraction = 0.25;  // ceil((i+1)/4) > ceil(i/4) holds for documents 0 and 4
  options.shard_tokens = 16;
  const TextCorpusSummary summary = prepare_text_corpus({dir / "in"}, dir / "out", *tokenizer_, options);

  std::vector<int32_t> expected_train, expected_val;
  for (int i = 0; i < 8; ++i) {
    std::vector<int32_t>& split = (i == 0 || i == 4) ? expected_val : expected_train;
    split.push_back(50256);
    for (int32_t id : tokenizer_->encode(texts[i])) split.push_back(id);
  }
  EXPECT_EQ(summary.documents, 8);
  EXPECT_EQ(summary.train_documents, 6);
  EXPECT_EQ(summary.val_documents, 2);
  EXPECT_EQ(summary.train_tokens, static_cast<int64_t>(expected_train.size()));
  EXPECT_EQ(summary.val_tokens, static_cast<int64_t>(expected_val.size()));
  EXPECT_EQ(concat_shards(summary.train_shards), expected_train);
  EXPECT_EQ(concat_shards(summary.val_shards), expected_val);
  ASSERT_EQ(summary.train_shards.size(), (expected_train.size() + 15) / 16);
  for (size_t s = 0; s < summary.train_shards.size(); ++s) {
    char name[32];
    std::snprintf(name, sizeof(name), "train_%06zu.bin", s);
    EXPECT_EQ(summary.train_shards[s], dir / ("out/" + std::string(name)));
    if (s + 1 < summary.train_shards.size()) {
      EXPECT_EQ(TokenShard(summary.train_shards[s]).size(), 16);
    }
  }
  EXPECT_FALSE(fs::exists(dir / "out/train_000099.bin"));
  EXPECT_TRUE(fs::exists(dir / "out/keep.json"));
  EXPECT_EQ(glob_files(dir / "out/*.bin").size(), summary.train_shards.size() + summary.val_shards.size());

  // Deterministic: a second run writes byte-identical shards.
  const std::string first = read_bytes(summary.train_shards[0]);
  const TextCorpusSummary again = prepare_text_corpus({dir / "in"}, dir / "out", *tokenizer_, options);
  EXPECT_EQ(again.train_shards, summary.train_shards);
  EXPECT_EQ(read_bytes(again.train_shards[0]), first);

  options.max_files = 3;
  options.val_fraction = 0;
  const TextCorpusSummary limited = prepare_text_corpus({dir / "in"}, dir / "out", *tokenizer_, options);
  EXPECT_EQ(limited.documents, 3);
  EXPECT_EQ(limited.val_documents, 0);
  EXPECT_TRUE(limited.val_shards.empty());
  EXPECT_EQ(glob_files(dir / "out/*.bin").size(), limited.train_shards.size());
}

// Issue 15: a single file (one document) went to the validation split whole, and `prepare` failed. With fewer
// documents than 1 / val_fraction the split is made in the token stream: the last 5 % of the tokens.
TEST_F(TextCorpusTest, ASingleFileIsSplitByTokens) {
  TempDir dir("single");
  std::string text;
  for (int i = 0; i < 40; ++i) text += "Line " + std::to_string(i) + " of the only document, about memory.\n";
  const std::string file = dir.file("book.txt", text);
  const TextCorpusSummary s = prepare_text_corpus({file}, dir / "out", *tokenizer_);
  std::vector<int32_t> stream = {50256};
  for (int32_t id : tokenizer_->encode(text)) stream.push_back(id);
  const int64_t total = static_cast<int64_t>(stream.size());
  EXPECT_TRUE(s.split_by_tokens);
  EXPECT_EQ(s.val_tokens, static_cast<int64_t>(std::ceil(0.05 * static_cast<double>(total))));
  EXPECT_EQ(s.train_tokens + s.val_tokens, total);
  EXPECT_EQ(s.train_documents, 1);
  EXPECT_EQ(s.val_documents, 1);  // the one document, cut in two
  std::vector<int32_t> both = concat_shards(s.train_shards);
  const std::vector<int32_t> val = concat_shards(s.val_shards);
  both.insert(both.end(), val.begin(), val.end());
  EXPECT_EQ(both, stream);

  // Three documents, val_fraction 0.25 (fewer than 4): by tokens too, the cut inside the last document.
  dir.file("few/a.txt", text);
  dir.file("few/b.txt", text);
  dir.file("few/c.txt", text);
  TextCorpusOptions quarter;
  quarter.val_fraction = 0.25;
  const TextCorpusSummary few = prepare_text_corpus({dir / "few"}, dir / "out", *tokenizer_, quarter);
  EXPECT_TRUE(few.split_by_tokens);
  EXPECT_EQ(few.train_documents, 3);
  EXPECT_EQ(few.val_documents, 1);
  EXPECT_EQ(few.val_tokens, static_cast<int64_t>(std::ceil(0.25 * static_cast<double>(3 * total))));
  // Four documents: whole documents again (document 0 is the validation one).
  dir.file("few/d.txt", text);
  EXPECT_FALSE(prepare_text_corpus({dir / "few"}, dir / "out", *tokenizer_, quarter).split_by_tokens);
}

TEST_F(TextCorpusTest, RejectsBadInputs) {
  TempDir dir("bad");
  dir.file("empty/readme.md", "no txt here");
  std::string message = error_message([&] { prepare_text_corpus({dir / "empty"}, dir / "out", *tokenizer_); });
  EXPECT_NE(message.find(dir / "empty"), std::string::npos) << message;
  EXPECT_NE(message.find("no text files (*.txt)"), std::string::npos) << message;
  dir.file("one/a.txt", "x");  // two tokens with the EOT: too few to keep 99 % for validation
  TextCorpusOptions options;
  options.val_fraction = 0.99;
  message = error_message([&] { prepare_text_corpus({dir / "one"}, dir / "out", *tokenizer_, options); });
  EXPECT_NE(message.find("too few"), std::string::npos) << message;
  options.val_fraction = 1.0;
  EXPECT_THROW(prepare_text_corpus({dir / "one"}, dir / "out", *tokenizer_, options), Error);
  options.val_fraction = 0;
  options.shard_tokens = 0;
  EXPECT_THROW(prepare_text_corpus({dir / "one"}, dir / "out", *tokenizer_, options), Error);
}

}  // namespace
}  // namespace loom
