// Crash-safe file writes: a file written here is either the complete new contents or the previous contents
// (or absent), never a torn mixture, even if the process or the machine dies mid-write.
//
// How: the bytes go to a temporary file in the same directory (so the final rename(2) stays on one file
// system and is atomic), the file is fsync'ed, renamed over the target, and the directory is fsync'ed so the
// rename itself is durable.
//
// Errors: every failure throws loom::Error naming the path and the system error (strerror). A writer that
// is destroyed without commit() removes its temporary file.
// Threads: an AtomicFileWriter is used by one thread; distinct writers may run concurrently (their temporary
// names are unique per process, thread and call).
#pragma once
#include <cstddef>
#include <functional>
#include <string>
#include <string_view>

namespace loom {

class AtomicFileWriter {
 public:
  // Opens a temporary file next to `path` (same directory, which must exist).
  explicit AtomicFileWriter(std::string path);
  // Discards the temporary file unless commit() succeeded.
  ~AtomicFileWriter();
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

  // Appends bytes to the temporary file (handles short writes and EINTR).
  void write(const void* data, size_t bytes);
  void write(std::string_view bytes) { write(bytes.data(), bytes.size()); }
  // fsync + close the temporary file, rename it to the target path, fsync the directory. After a throw the
  // target path is unchanged and the temporary file is gone.
  void commit();

  const std::string& path() const { return path_; }

 private:
  void discard() noexcept;

  std::string path_;
  std::string temp_path_;
  int fd_ = -1;
  bool fault_armed_ = false;  // the test hook chose this file: the next write fails half-way
};

// Writes `contents` to `path` atomically (AtomicFileWriter in one call).
void write_file_atomically(const std::string& path, std::string_view contents);

// fsyncs a directory so that entries created, renamed or removed in it are durable. Throws on failure.
void fsync_directory(const std::string& dir);

// Test hook: when `should_fail` returns true for a target path, the first write() to that file writes about
// half of its bytes and then throws loom::Error (as a full disk would). Pass an empty function to disable.
// Not thread-safe against concurrent writers; meant for single-threaded tests only.
void set_write_fault_for_testing(std::function<bool(const std::string& path)> should_fail);

}  // namespace loom
