// Training checkpoints: one directory per saved step, written so that it is either complete or absent.
//
// Layout: <out_dir>/ckpt_<step, 8 digits>/ (e.g. runs/gpt/ckpt_00001000/) holding
//   model.safetensors      the weights (safetensors, our parameter names)
//   optimizer.safetensors  optimizer state (moments, ...)
//   state.json             {"format": "loom-checkpoint-1", "step": <step>, ...whatever the trainer adds:
//                           RNG state, data-loader position, the resolved config YAML, ...}
//   model.json             (optional) the model's shape (trainer/models/model_shape.h), also stored in
//                          model.safetensors' metadata as "loom_model" so the weights file alone describes it
//
// Atomicity: save_checkpoint writes everything into a hidden temporary directory next to the final one
// (".ckpt_<step>.tmp.<pid>.<n>"), fsyncs every file and the directory, renames it into place and fsyncs
// <out_dir>. A crash or error at any point leaves the earlier checkpoints untouched; on an error the
// temporary directory is removed; after a crash it stays until the next run into out_dir removes it
// (remove_stale_checkpoint_temporaries). Readers (latest_checkpoint) never see temporary directories.
//
// Errors: throw loom::Error naming the directory or file and the reason.
// Threads: not thread-safe against concurrent saves into the same out_dir (one process, one rank saves).
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/safetensors.h"

namespace loom {

struct CheckpointContents {
  NamedTensors model;      // any device; loaded back as CPU tensors in the same order
  NamedTensors optimizer;  // any device; loaded back as CPU tensors in the same order
  nlohmann::json state;    // a JSON object (or null for none); "format" and "step" are set by save_checkpoint
  nlohmann::json model_shape;  // null: none (checkpoints older than model.json); else written as model.json
};

// The directory name of a step's checkpoint inside out_dir: "<out_dir>/ckpt_00001000".
std::string checkpoint_dir(const std::string& out_dir, int64_t step);

// Saves `contents` as the checkpoint for `step` (0 <= step <= 99999999) in out_dir (created if needed).
// An existing checkpoint for the same step is replaced atomically. Throws if `state` is neither null nor an
// object, or holds a "step" different from `step`.
void save_checkpoint(const std::string& out_dir, int64_t step, const CheckpointContents& contents);

// Loads a checkpoint directory written by save_checkpoint. state["step"] holds the step; model_shape is the
// parsed model.json, or null when the checkpoint has none (throws naming the file when it is not JSON).
// state.json is checked before anything else is read: valid JSON without a key repeated in any object, an
// object with "format": "loom-checkpoint-1" and an integer "step" in [0, 99999999]; each error names the file
// and field.
CheckpointContents load_checkpoint(const std::string& dir);

// The step of the checkpoint in `dir`, from its state.json alone (checked as load_checkpoint checks it).
int64_t checkpoint_step(const std::string& dir);

// state[key] as an integer in [min, max]: a missing key, a non-integer (1.5, "3", 1e3) or a value outside the
// range (2^40 where an int is meant) throws "<file>: "<key>": ..." instead of being narrowed.
int64_t state_integer(const nlohmann::json& state, const std::string& key, int64_t min, int64_t max,
                      const std::string& file);

// Complete checkpoints in out_dir as (step, directory), oldest first. A directory counts only if it is
// named ckpt_<8 digits> and holds all three files. Missing out_dir: empty list.
std::vector<std::pair<int64_t, std::string>> list_checkpoints(const std::string& out_dir);

// The directory of the newest complete checkpoint in out_dir, or "" if there is none.
std::string latest_checkpoint(const std::string& out_dir);

// A fresh run id: 16 hex digits from the OS's random device. A run writes it into every checkpoint's
// state.json ("run_id"), and a resumed run takes over the id of the checkpoint it resumes.
std::string new_run_id();
// The "run_id" in a checkpoint's state.json, or "" when it has none (written before run ids) or the file
// cannot be read as JSON (such a checkpoint belongs to no run that prunes).
std::string checkpoint_run_id(const std::string& checkpoint_dir);

// Removes all but the newest `keep_last` complete checkpoints of run `run_id` (state.json "run_id"), and never
// `keep_also` (a checkpoint directory, e.g. the last one known to be good; "" for none). Checkpoints of other
// runs, or without a run id, are never touched. keep_last == 0 keeps everything; negative throws. Temporary
// directories are left alone (one may belong to a save in progress).
void prune_checkpoints(const std::string& out_dir, int keep_last, const std::string& run_id,
                       const std::string& keep_also = "");

class RunDirectoryLock;
// Removes the hidden directories that a save or prune interrupted by a crash or an error left in the run
// folder (".ckpt_<8 digits>.tmp.<pid>.<n>", ".ckpt_<8 digits>.deleting.<pid>"; nothing else, symlinks
// neither). Only safe while no other process writes checkpoints there, hence the lock (core/run_dir_lock.h).
// Returns how many were removed; throws naming the directory when one cannot be removed.
int remove_stale_checkpoint_temporaries(const RunDirectoryLock& lock);

}  // namespace loom
