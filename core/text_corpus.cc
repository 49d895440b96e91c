#include "core/text_corpus.h"

#include <fnmatch.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <span>
#include <sstream>

#include "core/error.h"
#include "core/token_shards.h"

namespace loom {
namespace fs = std::filesystem;

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// True for names this module writes: "train_" or "val_", six digits, ".bin".
bool is_shard_name(const std::string& name) {
  for (const std::string prefix : {"train_", "val_"}) {
    if (name.size() != prefix.size() + 10 || name.rfind(prefix, 0) != 0 || !ends_with(name, ".bin")) continue;
    const std::string digits = name.substr(prefix.size(), 6);
    if (std::all_of(digits.begin(), digits.end(), [](unsigned char c) { return std::isdigit(c); })) return true;
  }
  return false;
}

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("text corpus: cannot open '", path, "' for reading");
  std::ostringstream os;
  os << in.rdbuf();
  if (in.bad()) fail("text corpus: read error in '", path, "'");
  return os.str();
}

std::string shard_path(const std::string& out_dir, const char* split, size_t index) {
  char name[32];
  std::snprintf(name, sizeof(name), "%s_%06zu.bin", split, index);
  return (fs::path(out_dir) / name).string();
}

// Collects one split's tokens and writes a shard each time `shard_tokens` have accumulated.
class ShardWriter {
 public:
  ShardWriter(std::string out_dir, const char* split, int64_t shard_tokens)
      : out_dir_(std::move(out_dir)), split_(split), shard_tokens_(shard_tokens) {}

  void add(std::span<const int32_t> tokens) {
    buffer_.insert(buffer_.end(), tokens.begin(), tokens.end());
    total_ += static_cast<int64_t>(tokens.size());
    while (static_cast<int64_t>(buffer_.size()) >= shard_tokens_) {
      write(std::span<const int32_t>(buffer_).first(static_cast<size_t>(shard_tokens_)));
      buffer_.erase(buffer_.begin(), buffer_.begin() + shard_tokens_);
    }
  }
  void finish() {
    if (!buffer_.empty()) write(buffer_);
    buffer_.clear();
  }
  int64_t total() const { return total_; }
  const std::vector<std::string>& shards() const { return shards_; }

 private:
  void write(std::span<const int32_t> tokens) {
    shards_.push_back(shard_path(out_dir_, split_, shards_.size()));
    write_shard(shards_.back(), tokens);
  }

  std::string out_dir_;
  const char* split_;
  int64_t shard_tokens_;
  std::vector<int32_t> buffer_;
  int64_t total_ = 0;
  std::vector<std::string> shards_;
};

}  // namespace

std::vector<std::string> list_text_files(const std::vector<std::string>& inputs,
                                         const std::vector<std::string>& patterns) {
  const auto matches = [&](const std::string& name) {
    return std::any_of(patterns.begin(), patterns.end(),
                       [&](const std::string& p) { return ::fnmatch(p.c_str(), name.c_str(), 0) == 0; });
  };
  std::vector<std::string> files;
  for (const std::string& input : inputs) {
    std::error_code ec;
    const fs::file_status status = fs::status(input, ec);
    if (ec || !fs::exists(status)) fail("text corpus: input '", input, "' does not exist");
    if (fs::is_regular_file(status)) {
      files.push_back(input);
    } else if (fs::is_directory(status)) {
      std::vector<std::string> found;
      for (const auto& entry : fs::recursive_directory_iterator(input, fs::directory_options::follow_directory_symlink)) {
        if (entry.is_regular_file() && matches(entry.path().filename().string()))
          found.push_back(entry.path().string());
      }
      std::sort(found.begin(), found.end());
      files.insert(files.end(), found.begin(), found.end());
    } else {
      fail("text corpus: input '", input, "' is neither a file nor a folder");
    }
  }
  return files;
}

TextCorpusSummary prepare_text_corpus(const std::vector<std::string>& inputs, const std::string& out_dir,
                                      const Tokenizer& tokenizer, const TextCorpusOptions& options) {
  LOOM_CHECK(options.val_fraction >= 0 && options.val_fraction < 1, "text corpus: val_fraction ",
             options.val_fraction, " must be in [0, 1)");
  LOOM_CHECK(options.shard_tokens > 0, "text corpus: shard_tokens ", options.shard_tokens, " must be positive");
  LOOM_CHECK(options.max_files >= 0, "text corpus: max_files ", options.max_files, " must be >= 0");
  std::vector<std::string> files = list_text_files(inputs, options.patterns);
  if (files.empty()) {
    std::string names, globs;
    for (const std::string& input : inputs) names += (names.empty() ? "'" : ", '") + input + "'";
    for (const std::string& p : options.patterns) globs += (globs.empty() ? "" : ", ") + p;
    fail("text corpus: no text files (", globs, ") found in ", names.empty() ? "(no inputs)" : names);
  }
  if (options.max_files > 0 && static_cast<int64_t>(files.size()) > options.max_files)
    files.resize(static_cast<size_t>(options.max_files));

  const double f = options.val_fraction;
  const int64_t n = static_cast<int64_t>(files.size());
  // Whole documents, unless there are too few to give the validation split its share that way.
  const bool by_tokens = f > 0 && static_cast<double>(n) * f < 1.0;
  const auto is_val = [f](int64_t i) {
    return std::ceil(static_cast<double>(i + 1) * f) > std::ceil(static_cast<double>(i) * f);
  };
  int64_t val_documents = 0;
  if (!by_tokens)
    for (int64_t i = 0; i < n; ++i) val_documents += is_val(i) ? 1 : 0;
  if (!by_tokens && val_documents == n)
    fail("text corpus: all ", n, " documents went to the val split (val_fraction ", f,
         "); add files or lower val_fraction");

  fs::create_directories(out_dir);
  for (const auto& entry : fs::directory_iterator(out_dir)) {
    if (entry.is_regular_file() && is_shard_name(entry.path().filename().string())) fs::remove(entry.path());
  }

  ShardWriter train(out_dir, "train", options.shard_tokens), val(out_dir, "val", options.shard_tokens);
  TextCorpusSummary summary;
  summary.documents = n;
  summary.split_by_tokens = by_tokens;
  std::vector<int32_t> document, stream;
  std::vector<int64_t> document_starts;  // in `stream` (split by tokens)
  for (int64_t i = 0; i < n; ++i) {
    document.assign(1, tokenizer.eot_token());
    const std::vector<int32_t> ids = tokenizer.encode(read_text_file(files[i]));
    document.insert(document.end(), ids.begin(), ids.end());
    if (by_tokens) {
      document_starts.push_back(static_cast<int64_t>(stream.size()));
      stream.insert(stream.end(), document.begin(), document.end());
    } else {
      (is_val(i) ? val : train).add(document);
    }
  }
  if (by_tokens) {
    const int64_t total = static_cast<int64_t>(stream.size());
    const int64_t val_tokens = static_cast<int64_t>(std::ceil(static_cast<double>(total) * f));
    if (val_tokens >= total)
      fail("text corpus: ", total, " tokens are too few to keep ", val_tokens,
           " for validation (val_fraction ", f, "); add text or lower val_fraction");
    const std::span<const int32_t> all(stream);
    train.add(all.first(static_cast<size_t>(total - val_tokens)));
    val.add(all.last(static_cast<size_t>(val_tokens)));
    // Documents with tokens on each side (the one cut in two counts for both).
    summary.train_documents = std::upper_bound(document_starts.begin(), document_starts.end(), total - val_tokens - 1) -
                              document_starts.begin();
    summary.val_documents =
        n - (std::upper_bound(document_starts.begin(), document_starts.end(), total - val_tokens) -
             document_starts.begin()) + 1;
  } else {
    summary.train_documents = n - val_documents;
    summary.val_documents = val_documents;
  }
  train.finish();
  val.finish();

  summary.train_tokens = train.total();
  summary.val_tokens = val.total();
  summary.train_shards = train.shards();
  summary.val_shards = val.shards();
  return summary;
}

double unigram_entropy_nats(const std::vector<std::string>& shard_files) {
  LOOM_CHECK(!shard_files.empty(), "unigram entropy: no shard files given");
  std::vector<int64_t> counts(65536, 0);
  int64_t total = 0;
  for (const std::string& path : shard_files) {
    const TokenShard shard(path);
    for (const uint16_t token : shard.tokens()) ++counts[token];
    total += shard.size();
  }
  if (total == 0) fail("unigram entropy: the shards (first: '", shard_files.front(), "') hold no tokens");
  double entropy = 0;
  for (const int64_t count : counts) {
    if (count == 0) continue;
    const double p = static_cast<double>(count) / static_cast<double>(total);
    entropy -= p * std::log(p);
  }
  return entropy;
}

}  // namespace loom
