#include "trainer/run_folder.h"

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <ostream>

#include "core/atomic_file.h"
#include "core/checkpoint.h"
#include "core/error.h"
#include "core/metrics_writer.h"
#include "core/run_dir_lock.h"
#include "core/tensorboard_writer.h"

namespace loom {
namespace {

namespace fs = std::filesystem;

std::string metrics_path(const std::string& out_dir) { return out_dir + "/metrics.jsonl"; }

// The TensorBoard event files of a run folder, sorted.
std::vector<std::string> event_files(const std::string& out_dir) {
  std::vector<std::string> files;
  std::error_code ec;
  const fs::path dir = fs::path(out_dir) / "tensorboard";
  if (!fs::is_directory(dir, ec)) return files;
  for (const fs::directory_entry& e : fs::directory_iterator(dir, ec))
    if (e.is_regular_file(ec) && e.path().filename().string().rfind("events.out.tfevents.", 0) == 0)
      files.push_back(e.path().string());
  if (ec) fail(dir.string(), ": cannot list: ", ec.message());
  std::sort(files.begin(), files.end());
  return files;
}

// Removes checkpoint directories of `out_dir`, each renamed away first (to a name
// remove_stale_checkpoint_temporaries knows), so a crash mid-removal leaves a hidden folder rather than a
// half-deleted checkpoint that resume=latest could pick.
void remove_checkpoint_dirs(const std::string& out_dir, const std::vector<std::string>& dirs) {
  std::error_code ec;
  for (const std::string& dir : dirs) {
    const fs::path doomed =
        fs::path(out_dir) / detail::concat(".", fs::path(dir).filename().string(), ".deleting.", ::getpid());
    fs::rename(dir, doomed, ec);
    if (!ec) fs::remove_all(doomed, ec);
    if (ec) fail(dir, ": cannot remove (train.overwrite): ", ec.message());
  }
  fsync_directory(out_dir);
}

std::string names(const std::vector<std::string>& dirs) {
  std::string out;
  for (size_t i = 0; i < dirs.size(); ++i) out += (i ? ", " : "") + fs::path(dirs[i]).filename().string();
  return out;
}

}  // namespace

std::string EarlierRun::describe() const {
  std::string out;
  if (!checkpoints.empty()) out = (checkpoints.size() == 1 ? "checkpoint " : "checkpoints ") + names(checkpoints);
  size_t events = 0;
  for (const std::string& f : files) {
    if (fs::path(f).filename() == "metrics.jsonl")
      out += (out.empty() ? "" : "; ") + std::string("metrics.jsonl");
    else
      ++events;
  }
  if (events > 0)
    out += (out.empty() ? "" : "; ") + std::to_string(events) + " TensorBoard event file" + (events > 1 ? "s" : "");
  return out;
}

EarlierRun find_earlier_run(const std::string& out_dir) {
  EarlierRun run;
  for (const auto& [step, dir] : list_checkpoints(out_dir)) run.checkpoints.push_back(dir);
  std::error_code ec;
  if (fs::file_size(metrics_path(out_dir), ec) > 0 && !ec) run.files.push_back(metrics_path(out_dir));
  for (const std::string& f : event_files(out_dir)) {
    std::vector<std::string> records;
    try {
      records = read_tfrecords(f);
    } catch (const Error&) {
      records.assign(2, "");  // unreadable: count it, so overwrite (or the user) deals with it
    }
    if (records.size() > 1) run.files.push_back(f);  // more than the file_version record
  }
  return run;
}

void take_over_run_folder(const RunDirectoryLock& lock, bool overwrite, std::ostream& log) {
  const EarlierRun earlier = find_earlier_run(lock.dir());
  if (earlier.empty()) return;
  if (!overwrite)
    fail(lock.dir(), " holds an earlier run (", earlier.describe(),
         "): continue it with train.resume=latest, replace it with train.overwrite=true (deletes it), or choose "
         "another train.out_dir");
  remove_checkpoint_dirs(lock.dir(), earlier.checkpoints);
  std::error_code ec;
  for (const std::string& file : earlier.files) {
    fs::remove(file, ec);
    if (ec) fail(file, ": cannot remove (train.overwrite): ", ec.message());
  }
  fsync_directory(lock.dir());
  log << "train.overwrite: removed the earlier run from " << lock.dir() << " (" << earlier.describe() << ")"
      << std::endl;
}

void remove_later_checkpoints(const RunDirectoryLock& lock, int64_t step, bool overwrite, std::ostream& log) {
  std::vector<std::string> later;
  for (const auto& [s, dir] : list_checkpoints(lock.dir()))
    if (s > step) later.push_back(dir);
  if (later.empty()) return;
  if (!overwrite)
    fail(lock.dir(), " holds checkpoints after the resumed step ", step, " (", names(later),
         "): the run would replace them one by one and train.resume=latest would pick them meanwhile; resume the "
         "newest, delete them with train.overwrite=true, or choose another train.out_dir");
  remove_checkpoint_dirs(lock.dir(), later);
  log << "train.overwrite: removed the checkpoints after step " << step << " from " << lock.dir() << " ("
      << names(later) << ")" << std::endl;
}

int64_t rewind_run_outputs(const std::string& out_dir, int64_t step) {
  int64_t dropped = rewind_metrics_file(metrics_path(out_dir), step);
  for (const std::string& f : event_files(out_dir)) dropped += rewind_tensorboard_events(f, step);
  return dropped;
}

}  // namespace loom
