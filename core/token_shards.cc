#include "core/token_shards.h"

#include <fcntl.h>
#include <glob.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <limits>
#include <utility>

#include "core/error.h"

namespace loom {

static_assert(std::endian::native == std::endian::little, "llm.c token shards are little-endian");

namespace {

std::string errno_text() { return std::strerror(errno); }

const char* file_kind(mode_t mode) {
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISDIR(mode)) return "a folder";
  if (S_ISCHR(mode) || S_ISBLK(mode)) return "a device";
  if (S_ISSOCK(mode)) return "a socket";
  return "not a regular file";
}

// Writes all of `bytes` to fd, retrying short writes and EINTR.
void write_all(int fd, const void* bytes, size_t size, const std::string& path) {
  const char* p = static_cast<const char*>(bytes);
  while (size > 0) {
    const ssize_t n = ::write(fd, p, size);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail("token shard '", path, "': write failed: ", errno_text());
    p += n;
    size -= static_cast<size_t>(n);
  }
}

// fsync of the folder makes the rename itself durable.
void sync_parent_folder(const std::string& path) {
  const std::string folder = std::filesystem::path(path).parent_path().string();
  const int fd = ::open(folder.empty() ? "." : folder.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) return;  // best effort: some file systems do not allow opening folders
  ::fsync(fd);
  ::close(fd);
}

}  // namespace

void write_shard(const std::string& path, std::span<const int32_t> tokens) {
  if (tokens.size() > static_cast<size_t>(std::numeric_limits<int32_t>::max()))
    fail("token shard '", path, "': ", tokens.size(), " tokens do not fit the int32 count of the header");
  std::vector<uint16_t> packed(tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] > 65535)
      fail("token shard '", path, "': token ", i, " is ", tokens[i], ", outside the uint16 range [0, 65535]");
    packed[i] = static_cast<uint16_t>(tokens[i]);
  }
  int32_t header[256] = {};
  header[0] = kShardMagic;
  header[1] = kShardVersion;
  header[2] = static_cast<int32_t>(tokens.size());

  const std::string temp = path + ".tmp." + std::to_string(::getpid());
  const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail("token shard '", path, "': cannot create temporary file '", temp, "': ", errno_text());
  try {
    write_all(fd, header, sizeof(header), path);
    write_all(fd, packed.data(), packed.size() * sizeof(uint16_t), path);
    if (::fsync(fd) != 0) fail("token shard '", path, "': fsync failed: ", errno_text());
  } catch (...) {
    ::close(fd);
    ::unlink(temp.c_str());
    throw;
  }
  if (::close(fd) != 0) {
    ::unlink(temp.c_str());
    fail("token shard '", path, "': close failed: ", errno_text());
  }
  if (::rename(temp.c_str(), path.c_str()) != 0) {
    const std::string reason = errno_text();
    ::unlink(temp.c_str());
    fail("token shard '", path, "': cannot rename '", temp, "' into place: ", reason);
  }
  sync_parent_folder(path);
}

TokenShard::TokenShard(const std::string& path, int32_t vocab_size) : path_(path) {
  // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever; it changes nothing for
  // the regular files accepted below (the tokens are read through the mapping).
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) fail("token shard '", path, "': cannot open: ", errno_text());
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const std::string reason = errno_text();
    ::close(fd);
    fail("token shard '", path, "': cannot stat: ", reason);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    fail("token shard '", path, "': not a regular file (", file_kind(st.st_mode),
         "); shard files must be regular files");
  }
  const int64_t file_bytes = st.st_size;
  if (file_bytes < kShardHeaderBytes) {
    ::close(fd);
    fail("token shard '", path, "': truncated: ", file_bytes, " bytes, shorter than the ", kShardHeaderBytes,
         "-byte header");
  }
  mapping_ = ::mmap(nullptr, static_cast<size_t>(file_bytes), PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);  // the mapping keeps the file alive
  if (mapping_ == MAP_FAILED) {
    mapping_ = nullptr;
    fail("token shard '", path, "': mmap failed: ", errno_text());
  }
  mapping_bytes_ = static_cast<size_t>(file_bytes);

  int32_t header[3];
  std::memcpy(header, mapping_, sizeof(header));
  const int64_t count = header[2];
  const int64_t expected_bytes = kShardHeaderBytes + 2 * count;
  std::string problem;
  if (header[0] != kShardMagic) {
    problem = detail::concat("bad magic ", header[0], " (expected ", kShardMagic, "; not an llm.c token shard)");
  } else if (header[1] != kShardVersion) {
    problem = detail::concat("unsupported version ", header[1], " (expected ", kShardVersion, ")");
  } else if (count < 0) {
    problem = detail::concat("negative token count ", count, " in the header");
  } else if (file_bytes < expected_bytes) {
    problem = detail::concat("truncated: the header says ", count, " tokens (", expected_bytes,
                             " bytes) but the file has ", file_bytes, " bytes");
  } else if (file_bytes > expected_bytes) {
    problem = detail::concat("token count mismatch: the header says ", count, " tokens (", expected_bytes,
                             " bytes) but the file has ", file_bytes, " bytes");
  }
  if (!problem.empty()) {
    unmap();
    fail("token shard '", path, "': ", problem);
  }
  tokens_ = std::span<const uint16_t>(
      reinterpret_cast<const uint16_t*>(static_cast<const char*>(mapping_) + kShardHeaderBytes),
      static_cast<size_t>(count));
  if (vocab_size > 0) {
    const auto bad = std::find_if(tokens_.begin(), tokens_.end(), [&](uint16_t t) { return t >= vocab_size; });
    if (bad != tokens_.end()) {
      const int64_t index = bad - tokens_.begin();
      const int32_t token = *bad;
      unmap();
      fail("token shard '", path, "': token ", index, " (byte offset ", kShardHeaderBytes + 2 * index, ") is ",
           token, ", not below the vocabulary size ", vocab_size);
    }
  }
}

void TokenShard::unmap() {
  if (mapping_) ::munmap(mapping_, mapping_bytes_);
  mapping_ = nullptr;
  mapping_bytes_ = 0;
  tokens_ = {};
}

TokenShard::~TokenShard() { unmap(); }

TokenShard::TokenShard(TokenShard&& other) noexcept
    : path_(std::move(other.path_)),
      mapping_(std::exchange(other.mapping_, nullptr)),
      mapping_bytes_(std::exchange(other.mapping_bytes_, 0)),
      tokens_(std::exchange(other.tokens_, {})) {}

TokenShard& TokenShard::operator=(TokenShard&& other) noexcept {
  if (this != &other) {
    unmap();
    path_ = std::move(other.path_);
    mapping_ = std::exchange(other.mapping_, nullptr);
    mapping_bytes_ = std::exchange(other.mapping_bytes_, 0);
    tokens_ = std::exchange(other.tokens_, {});
  }
  return *this;
}

std::vector<int32_t> read_shard(const std::string& path) {
  const TokenShard shard(path);
  return std::vector<int32_t>(shard.tokens().begin(), shard.tokens().end());
}

std::vector<std::string> glob_files(const std::string& pattern) {
  glob_t matches{};
  const int rc = ::glob(pattern.c_str(), GLOB_ERR, nullptr, &matches);
  std::vector<std::string> files;
  if (rc == 0)
    for (size_t i = 0; i < matches.gl_pathc; ++i) files.emplace_back(matches.gl_pathv[i]);
  ::globfree(&matches);
  if (rc == GLOB_NOMATCH || (rc == 0 && files.empty())) fail("no files match the pattern '", pattern, "'");
  if (rc != 0) fail("cannot expand the pattern '", pattern, "' (glob error ", rc, ")");
  std::sort(files.begin(), files.end());  // bytewise, independent of the locale's collation
  return files;
}

}  // namespace loom
