// Token shards in llm.c's format, so shards made by llm.c's scripts (or by prepare_text_corpus) load here.
//
// Layout (little-endian): a header of 256 int32 — [0] magic 20240520, [1] version 1, [2] token count N,
// the rest zero — then N uint16 tokens. The file size is exactly 1024 + 2 N bytes.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace loom {

constexpr int32_t kShardMagic = 20240520;
constexpr int32_t kShardVersion = 1;
constexpr int64_t kShardHeaderBytes = 256 * sizeof(int32_t);

// Writes `tokens` to `path` atomically: to a temporary file in the same folder, fsync'ed, then renamed
// over `path`, so readers see the old file or the complete new one. Throws loom::Error naming the file
// when a token is outside [0, 65535], there are more than INT32_MAX tokens, or a write/rename fails.
void write_shard(const std::string& path, std::span<const int32_t> tokens);

// A read-only, memory-mapped token shard. Move-only; the mapping lives as long as the object. Reading
// tokens() from several threads is safe.
class TokenShard {
 public:
  // Opens and validates `path`. Throws loom::Error naming the file when it cannot be opened, is not a
  // regular file (a FIFO, device or folder: refused without waiting for a writer), is shorter than the
  // header, has a bad magic or version, or its size disagrees with the header's token count ("truncated"
  // when the file is too short, "count mismatch" when it has bytes past the tokens). With vocab_size > 0,
  // every token is checked at open to be below it; the error names the file, the first offending token's
  // index and its byte offset in the file.
  explicit TokenShard(const std::string& path, int32_t vocab_size = 0);
  ~TokenShard();
  TokenShard(TokenShard&& other) noexcept;
  TokenShard& operator=(TokenShard&& other) noexcept;
  TokenShard(const TokenShard&) = delete;
  TokenShard& operator=(const TokenShard&) = delete;

  const std::string& path() const { return path_; }
  int64_t size() const { return static_cast<int64_t>(tokens_.size()); }
  std::span<const uint16_t> tokens() const { return tokens_; }

 private:
  void unmap();

  std::string path_;
  void* mapping_ = nullptr;
  size_t mapping_bytes_ = 0;
  std::span<const uint16_t> tokens_;
};

// Convenience: all tokens of one shard (validated as by TokenShard), widened to int32.
std::vector<int32_t> read_shard(const std::string& path);

// Files matching the glob `pattern` (e.g. "data/linux_doc/train_*.bin"), sorted bytewise. Throws
// loom::Error naming the pattern when nothing matches.
std::vector<std::string> glob_files(const std::string& pattern);

}  // namespace loom
