#include "fuzz_support.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <vector>

namespace loom::fuzz {
namespace {

[[noreturn]] void harness_failure(const std::string& what) {
  std::fprintf(stderr, "fuzz harness: %s\n", what.c_str());
  std::abort();
}

// Never destroyed: the atexit handler below may run after static destructors.
std::vector<std::string>& temp_dirs() {
  static auto* dirs = new std::vector<std::string>;
  return *dirs;
}

void remove_temp_dirs() {
  std::error_code ec;
  for (const std::string& d : temp_dirs()) std::filesystem::remove_all(d, ec);
}

}  // namespace

MemoryFile::MemoryFile(std::string_view bytes) {
  fd_ = ::memfd_create("loom-fuzz-input", MFD_CLOEXEC);
  if (fd_ < 0) harness_failure("memfd_create failed");
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd_, bytes.data() + done, bytes.size() - done);
    if (n <= 0) harness_failure("writing the memfd failed");
    done += static_cast<size_t>(n);
  }
  path_ = "/proc/self/fd/" + std::to_string(fd_);
}

MemoryFile::~MemoryFile() { ::close(fd_); }

void write_file(const std::string& path, std::string_view bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) harness_failure("cannot write " + path);
}

std::string make_temp_dir(const char* tag) {
  const char* base = std::getenv("TMPDIR");
  std::string pattern = std::string(base && *base ? base : "/tmp") + "/loom-" + tag + "-XXXXXX";
  if (!::mkdtemp(pattern.data())) harness_failure("mkdtemp failed for " + pattern);
  static std::once_flag registered;
  std::call_once(registered, [] { std::atexit(remove_temp_dirs); });
  temp_dirs().push_back(pattern);
  return pattern;
}

}  // namespace loom::fuzz
