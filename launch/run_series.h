// A run's metrics as columns for charts: what the dashboard serves (launch/dashboard_server.h) and `loom plot`
// draws, read from the run folder's metrics.jsonl while the run is writing it (or built from the controller's
// metrics reports).
//
// Thread-safety: none; the dashboard guards each run's tail with its own lock.
#pragma once
#include <sys/types.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "launch/controller.pb.h"

namespace loom {

class RunSeries {
 public:
  // Takes one metrics.jsonl record: a step record (trainer/trainer.h) or an event line ("resumed",
  // "restored"). Fields a record lacks are gaps (null in the JSON).
  void add(const nlohmann::json& record);
  // The same from a controller's metrics report (fewer fields: no validation accuracy, no pruning).
  void add(const controller::MetricsReport& report);
  void clear() { *this = RunSeries(); }

  int64_t last_step() const { return steps_.empty() ? 0 : steps_.back(); }
  size_t size() const { return steps_.size(); }

  // {"series": {"step": [...], "time": [...], "loss": [...], ... one array per column, at most `max_points`
  //   points: evenly thinned, the last always kept},
  //  "val": {"step", "time", "loss", "accuracy"} (every validation),
  //  "events": [{"step", "time", "event", "checkpoint"}] (resumes and spike-guard restores),
  //  "widths": {"first": {...}, "last": {...}} (a pruning run's widths per block: the first and newest record
  //  holding them; absent otherwise)}
  nlohmann::json to_json(size_t max_points) const;

  // The columns' names, in the order of to_json's "series" (after "step").
  static const std::vector<std::string>& column_names();

 private:
  std::vector<int64_t> steps_;
  std::vector<std::vector<double>> columns_;  // column_names() order
  nlohmann::json val_ = {{"step", nlohmann::json::array()},
                         {"time", nlohmann::json::array()},
                         {"loss", nlohmann::json::array()},
                         {"accuracy", nlohmann::json::array()}};
  nlohmann::json events_ = nlohmann::json::array();
  nlohmann::json first_widths_, last_widths_;
};

// Follows a metrics.jsonl as it grows: each update() reads the whole lines appended since the last one. A file
// that was replaced or became shorter (a resume rewinds it: core/metrics_writer.h) is read again from the start.
class MetricsFileTail {
 public:
  explicit MetricsFileTail(std::string path) : path_(std::move(path)) {}
  // Returns false while the file does not exist. Lines that are not JSON objects are skipped.
  bool update();
  const RunSeries& series() const { return series_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  RunSeries series_;
  ino_t inode_ = 0;
  int64_t offset_ = 0;
  std::string partial_;  // a line not yet ended
};

// What the dashboard says about a run folder: {"id", "name" (the folder's name), "dir", "kind" ("gpt", "vit",
// or null when <dir>/config.yaml is missing or unreadable)}.
nlohmann::json run_folder_summary(const std::string& id, const std::string& dir);

}  // namespace loom
