// Run folders (train.out_dir) that never lose a run (docs/RELIABILITY.md, "Checkpoints, configs and run
// folders").
//
// A folder holds one run: its checkpoints (ckpt_<step>/, each naming the run in state.json "run_id"), its
// metrics.jsonl, its TensorBoard event files (tensorboard/) and config.yaml. What keeps a run from being lost
// or mixed with another:
// - a new run (train.resume unset) into a folder that holds an earlier run's checkpoints, metrics or event
//   files stops with an error naming them, unless train.overwrite is true, which deletes them first
//   (take_over_run_folder). Without this, the new run's own final checkpoint could be the one keep_checkpoints
//   deletes (the old run's have higher steps), and a later train.resume=latest silently continued the old run;
// - a resumed run never runs beside checkpoints later than its step (remove_later_checkpoints), and rewinds
//   metrics.jsonl and the event files to the resumed step (rewind_run_outputs), so no step is listed twice
//   after a restart (the Trainer does this on resume and on a spike-guard restore);
// - keep_checkpoints prunes only the run's own checkpoints (core/checkpoint.h, prune_checkpoints).
//
// Callers hold the folder's lock (core/run_dir_lock.h). Errors: loom::Error naming the folder or file.
// Threads: no state; one caller per folder (the lock's holder).
#pragma once
#include <cstdint>
#include <iosfwd>
#include <string>
#include <vector>

namespace loom {

class RunDirectoryLock;

// What an earlier run left in a run folder.
struct EarlierRun {
  std::vector<std::string> checkpoints;  // complete checkpoint directories, oldest first
  std::vector<std::string> files;        // metrics.jsonl and TensorBoard event files that hold records
  bool empty() const { return checkpoints.empty() && files.empty(); }
  // "checkpoints ckpt_00000400, ckpt_00000600; metrics.jsonl; 1 TensorBoard event file"
  std::string describe() const;
};

EarlierRun find_earlier_run(const std::string& out_dir);

// For a run that does not resume, in the locked folder: returns when it holds no earlier run; with
// `overwrite`, deletes the earlier run's checkpoints (renamed away first, as pruning does), metrics.jsonl and
// event files and says so in `log`; otherwise throws
//   "<dir> holds an earlier run (...): continue it with train.resume=latest, replace it with
//    train.overwrite=true (deletes it), or choose another train.out_dir".
void take_over_run_folder(const RunDirectoryLock& lock, bool overwrite, std::ostream& log);

// For a run that resumes at `step` in the locked folder: checkpoints there after `step` (of this run, from a
// resume of an earlier checkpoint, or of another) would be replaced one by one as the run goes on, and
// train.resume=latest would pick them up meanwhile. Returns when there are none; with `overwrite`, deletes
// them (saying so in `log`); otherwise throws naming them.
void remove_later_checkpoints(const RunDirectoryLock& lock, int64_t step, bool overwrite, std::ostream& log);

// Rewinds <out_dir>/metrics.jsonl and every event file in <out_dir>/tensorboard to `step` (records after it
// dropped; core/metrics_writer.h, core/tensorboard_writer.h). Returns how many records were dropped.
int64_t rewind_run_outputs(const std::string& out_dir, int64_t step);

}  // namespace loom
