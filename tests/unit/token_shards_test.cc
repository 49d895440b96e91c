#include "core/token_shards.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>

#include "core/error.h"
#include "tests/common/test_util.h"

namespace loom {
namespace {
namespace fs = std::filesystem;
using testing::error_message;
using testing::TempDir;

std::vector<int32_t> random_tokens(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> tokens(n);
  for (int32_t& t : tokens) t = static_cast<int32_t>(rng() % 65536);
  return tokens;
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

TEST(TokenShards, RoundTripsRaggedSizes) {
  TempDir dir("roundtrip");
  for (const size_t n : {size_t{0}, size_t{1}, size_t{7}, size_t{1001}}) {
    const std::string path = dir / ("shard_" + std::to_string(n) + ".bin");
    const std::vector<int32_t> tokens = random_tokens(n, static_cast<uint32_t>(n) + 1);
    write_shard(path, tokens);
    EXPECT_EQ(read_shard(path), tokens);
    const TokenShard shard(path);
    EXPECT_EQ(shard.size(), static_cast<int64_t>(n));
    EXPECT_EQ(shard.path(), path);

    // The llm.c layout, byte by byte: 256 int32 header then little-endian uint16 tokens.
    const std::string bytes = read_bytes(path);
    ASSERT_EQ(bytes.size(), 1024 + 2 * n);
    int32_t header[256];
    std::memcpy(header, bytes.data(), sizeof(header));
    EXPECT_EQ(header[0], 20240520);
    EXPECT_EQ(header[1], 1);
    EXPECT_EQ(header[2], static_cast<int32_t>(n));
    for (int i = 3; i < 256; ++i) ASSERT_EQ(header[i], 0);
    for (size_t i = 0; i < n; ++i) {
      const int32_t token = static_cast<uint8_t>(bytes[1024 + 2 * i]) | (static_cast<uint8_t>(bytes[1025 + 2 * i]) << 8);
      ASSERT_EQ(token, tokens[i]) << i;
    }
  }
}

TEST(TokenShards, OverwriteLeavesNoTemporaryFiles) {
  TempDir dir("overwrite");
  const std::string path = dir / "train_000000.bin";
  write_shard(path, random_tokens(50, 1));
  const std::vector<int32_t> second = random_tokens(20, 2);
  write_shard(path, second);
  EXPECT_EQ(read_shard(path), second);
  EXPECT_EQ(std::distance(fs::directory_iterator(dir.path()), fs::directory_iterator()), 1);
}

TEST(TokenShards, WriteRejectsTokensOutsideUint16) {
  TempDir dir("range");
  const std::string path = dir / "bad.bin";
  for (const int32_t bad : {65536, -1}) {
    const std::vector<int32_t> tokens = {1, 2, bad};
    const std::string message = error_message([&] { write_shard(path, tokens); });
    EXPECT_NE(message.find(path), std::string::npos) << message;
    EXPECT_FALSE(fs::exists(path));
  }
  EXPECT_EQ(std::distance(fs::directory_iterator(dir.path()), fs::directory_iterator()), 0);
  EXPECT_NE(error_message([&] { write_shard(dir / "no/such/folder.bin", std::vector<int32_t>{1}); })
                .find("no/such/folder.bin"),
            std::string::npos);
}

// Each corruption must throw a loom::Error that names the file and says what is wrong.
void expect_rejected(const std::string& path, const std::string& reason) {
  const std::string message = error_message([&] { TokenShard shard(path); });
  EXPECT_NE(message.find(path), std::string::npos) << message;
  EXPECT_NE(message.find(reason), std::string::npos) << message;
}

TEST(TokenShards, RejectsBadMagic) {
  TempDir dir("magic");
  const std::string path = dir / "s.bin";
  write_shard(path, random_tokens(10, 3));
  std::string bytes = read_bytes(path);
  bytes[0] ^= 0x5a;
  write_bytes(path, bytes);
  expect_rejected(path, "magic");
}

TEST(TokenShards, RejectsBadVersion) {
  TempDir dir("version");
  const std::string path = dir / "s.bin";
  write_shard(path, random_tokens(10, 4));
  std::string bytes = read_bytes(path);
  bytes[4] = 7;
  write_bytes(path, bytes);
  expect_rejected(path, "version");
}

TEST(TokenShards, RejectsTruncatedFiles) {
  TempDir dir("truncated");
  const std::string path = dir / "s.bin";
  write_shard(path, random_tokens(10, 5));
  const std::string bytes = read_bytes(path);
  write_bytes(path, bytes.substr(0, bytes.size() - 2));
  expect_rejected(path, "truncated");
  write_bytes(path, bytes.substr(0, 100));  // not even a whole header
  expect_rejected(path, "truncated");
  write_bytes(path, "");
  expect_rejected(path, "truncated");
}

TEST(TokenShards, RejectsCountMismatch) {
  TempDir dir("count");
  const std::string path = dir / "s.bin";
  write_shard(path, random_tokens(10, 6));
  write_bytes(path, read_bytes(path) + std::string(2, '\0'));
  expect_rejected(path, "count mismatch");
}

TEST(TokenShards, RejectsMissingFile) {
  TempDir dir("missing");
  expect_rejected(dir / "absent.bin", "cannot open");
}

// A FIFO among the shards must be refused at once, naming it: opening one for reading used to wait for a writer
// forever. Here a writer holds the FIFO open, so the old code did not hang but misread it as a truncated shard.
TEST(TokenShards, RefusesAFifoWithAWriterAsNotARegularFile) {
  TempDir dir("fifo_writer");
  const std::string path = dir / "train_000000.bin";
  ASSERT_EQ(::mkfifo(path.c_str(), 0600), 0);
  const int writer = ::open(path.c_str(), O_RDWR | O_NONBLOCK);  // O_RDWR on a FIFO does not block on Linux
  ASSERT_GE(writer, 0);
  const std::string message = error_message([&] { TokenShard shard(path); });
  ::close(writer);
  EXPECT_NE(message.find(path), std::string::npos) << message;
  EXPECT_NE(message.find("not a regular file (a FIFO)"), std::string::npos) << message;
}

// The reported hang: nobody writes to the FIFO.
TEST(TokenShards, RefusesAFifoWithoutAWriterInsteadOfWaiting) {
  TempDir dir("fifo");
  const std::string path = dir / "train_000000.bin";
  ASSERT_EQ(::mkfifo(path.c_str(), 0600), 0);
  const std::string message = error_message([&] { read_shard(path); });
  EXPECT_NE(message.find(path), std::string::npos) << message;
  EXPECT_NE(message.find("shard files must be regular files"), std::string::npos) << message;
}

TEST(TokenShards, RefusesAFolder) {
  TempDir dir("folder");
  const std::string path = dir / "val_000000.bin";
  fs::create_directory(path);
  const std::string message = error_message([&] { TokenShard shard(path); });
  EXPECT_NE(message.find("not a regular file (a folder)"), std::string::npos) << message;
}

TEST(TokenShards, ChecksTheVocabularyAtOpenNamingTheOffset) {
  TempDir dir("vocab");
  const std::string path = dir / "shard.bin";
  write_shard(path, std::vector<int32_t>{5, 50256, 9, 50257, 65535});
  EXPECT_EQ(TokenShard(path).size(), 5);  // no vocabulary given: any uint16 is fine
  EXPECT_EQ(TokenShard(path, 65536).size(), 5);
  const std::string message = error_message([&] { TokenShard shard(path, 50257); });
  EXPECT_NE(message.find(path), std::string::npos) << message;
  EXPECT_NE(message.find("token 3 (byte offset 1030) is 50257, not below the vocabulary size 50257"),
            std::string::npos)
      << message;
}

TEST(TokenShards, GlobIsSortedAndNamesThePatternWhenEmpty) {
  TempDir dir("glob");
  for (const char* name : {"train_000002.bin", "train_000000.bin", "train_000010.bin", "val_000000.bin"})
    write_shard(dir / name, std::vector<int32_t>{1});
  EXPECT_EQ(glob_files(dir / "train_*.bin"),
            (std::vector<std::string>{dir / "train_000000.bin", dir / "train_000002.bin", dir / "train_000010.bin"}));
  const std::string pattern = dir / "test_*.bin";
  EXPECT_NE(error_message([&] { glob_files(pattern); }).find(pattern), std::string::npos);
}

}  // namespace
}  // namespace loom
