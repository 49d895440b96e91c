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

// Rewinds the metrics file at `path` to `step` for a run that resumes there: keeps every line whose "step" is at
// most `step` (step records and events alike), drops the later ones and any line that is not a JSON object with
// an integer "step" (e.g. one torn by a crash), and replaces the file atomically (core/atomic_file.h), so the
// file never lists a step twice. A missing file is left missing. Returns how many lines were dropped. Throws
// loom::Error naming the file when it cannot be read or written.
int64_t rewind_metrics_file(const std::string& path, int64_t step);

}  // namespace loom
