// Shared helpers of the fuzz targets (tests/fuzz/README.md).
//
// The parsers under test take file paths, so a fuzz input is handed to them as an in-memory file: a memfd
// (no disk traffic, nothing left behind) reached through /proc/self/fd/N, which open(), stat() and mmap()
// treat as the regular file it is.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace loom::fuzz {

// An anonymous in-memory file holding `bytes`. Move-free; closed (and gone) when destroyed. Aborts if the
// memfd cannot be made (a harness failure, not a finding).
class MemoryFile {
 public:
  explicit MemoryFile(std::string_view bytes);
  ~MemoryFile();
  MemoryFile(const MemoryFile&) = delete;
  MemoryFile& operator=(const MemoryFile&) = delete;
  // "/proc/self/fd/N": a path the code under test can open.
  const std::string& path() const { return path_; }

 private:
  int fd_ = -1;
  std::string path_;
};

// Writes `bytes` to `path` (replacing it); aborts on failure (a harness failure).
void write_file(const std::string& path, std::string_view bytes);

// A fresh folder under $TMPDIR (or /tmp), removed with its contents at process exit. Aborts on failure.
std::string make_temp_dir(const char* tag);

// The whole input as a string view.
inline std::string_view as_text(const uint8_t* data, size_t size) {
  return {reinterpret_cast<const char*>(data), size};
}

}  // namespace loom::fuzz
