// Per-step metrics as JSON Lines: one object per line, flushed each write so a crash loses at most the line
// being written, and a dashboard or `tail -f` can follow the file live.
//
// Thread-safety: one writer per file, driven by one thread.
#pragma once
#include <cstdio>
#include <string>

#include <nlohmann/json.hpp>

namespace loom {

class MetricsWriter {
 public:
  // Opens `path` for appending (creating parent directories). Throws loom::Error naming the path on failure.
  explicit MetricsWriter(const std::string& path);
  ~MetricsWriter();
  MetricsWriter(const MetricsWriter&) = delete;
  MetricsWriter& operator=(const MetricsWriter&) = delete;

  // Appends `record` as one line and flushes. Throws loom::Error on a write failure.
  void write(const nlohmann::json& record);
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::FILE* file_ = nullptr;
};

}  // namespace loom
