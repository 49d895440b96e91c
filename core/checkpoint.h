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
// temporary directory is removed. Readers (latest_checkpoint) never see temporary directories.
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
CheckpointContents load_checkpoint(const std::string& dir);

// Complete checkpoints in out_dir as (step, directory), oldest first. A directory counts only if it is
// named ckpt_<8 digits> and holds all three files. Missing out_dir: empty list.
std::vector<std::pair<int64_t, std::string>> list_checkpoints(const std::string& out_dir);

// The directory of the newest complete checkpoint in out_dir, or "" if there is none.
std::string latest_checkpoint(const std::string& out_dir);

// Removes all but the newest `keep_last` complete checkpoints. keep_last == 0 keeps everything; negative
// throws. Temporary directories are left alone (one may belong to a save in progress).
void prune_checkpoints(const std::string& out_dir, int keep_last);

}  // namespace loom
