#include "core/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <thread>

#include "core/error.h"

namespace loom {
namespace {

std::function<bool(const std::string&)>& write_fault() {
  static std::function<bool(const std::string&)> fault;
  return fault;
}

std::string errno_text() { return std::strerror(errno); }

// ".<name>.tmp.<pid>.<thread hash>.<counter>": hidden, unique, and never mistaken for the target.
std::string temp_path_for(const std::string& path) {
  static std::atomic<uint64_t> counter{0};
  const std::filesystem::path p(path);
  const size_t thread_tag = std::hash<std::thread::id>{}(std::this_thread::get_id()) % 1000000;
  const std::string name =
      detail::concat(".", p.filename().string(), ".tmp.", ::getpid(), ".", thread_tag, ".", counter++);
  return (p.parent_path() / name).string();
}

}  // namespace

AtomicFileWriter::AtomicFileWriter(std::string path) : path_(std::move(path)), temp_path_(temp_path_for(path_)) {
  fd_ = ::open(temp_path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd_ < 0) fail(path_, ": cannot create temporary file ", temp_path_, ": ", errno_text());
  fault_armed_ = write_fault() && write_fault()(path_);
}

AtomicFileWriter::~AtomicFileWriter() { discard(); }

void AtomicFileWriter::discard() noexcept {
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
  }
  if (!temp_path_.empty()) {
    ::unlink(temp_path_.c_str());
    temp_path_.clear();
  }
}

void AtomicFileWriter::write(const void* data, size_t bytes) {
  LOOM_CHECK(fd_ >= 0, path_, ": write after commit or failure");
  const char* p = static_cast<const char*>(data);
  size_t todo = bytes;
  if (fault_armed_) todo = bytes / 2;
  while (todo > 0) {
    const ssize_t n = ::write(fd_, p, todo);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail(path_, ": write failed: ", errno_text());
    p += n;
    todo -= static_cast<size_t>(n);
  }
  if (fault_armed_)
    fail(path_, ": write failed: injected fault for testing (after ", bytes / 2, " of ", bytes, " bytes)");
}

void AtomicFileWriter::commit() {
  LOOM_CHECK(fd_ >= 0, path_, ": commit after commit or failure");
  if (::fsync(fd_) != 0) fail(path_, ": fsync failed: ", errno_text());
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) fail(path_, ": close failed: ", errno_text());
  if (::rename(temp_path_.c_str(), path_.c_str()) != 0)
    fail(path_, ": rename from ", temp_path_, " failed: ", errno_text());
  temp_path_.clear();
  const std::string dir = std::filesystem::path(path_).parent_path().string();
  fsync_directory(dir.empty() ? "." : dir);
}

void write_file_atomically(const std::string& path, std::string_view contents) {
  AtomicFileWriter writer(path);
  writer.write(contents);
  writer.commit();
}

void fsync_directory(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) fail(dir, ": cannot open directory to fsync it: ", errno_text());
  const int rc = ::fsync(fd);
  const std::string err = rc != 0 ? errno_text() : "";
  ::close(fd);
  if (rc != 0) fail(dir, ": fsync of directory failed: ", err);
}

void set_write_fault_for_testing(std::function<bool(const std::string& path)> should_fail) {
  write_fault() = std::move(should_fail);
}

}  // namespace loom
