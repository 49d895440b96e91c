// Batches of token sequences from llm.c token shards, shuffled, split across data-parallel ranks, with a
// position that can be saved and restored to continue exactly where training stopped.
//
// Windows: a shard of n tokens holds floor((n - 1) / T) windows of T + 1 tokens, window k starting at
// token k T (stride T, so consecutive windows share one token and every token except each shard's last is
// a target once). Windows never cross shard boundaries. All windows of all shards (sorted by path) are
// numbered 0 .. W-1.
//
// Order: epoch e visits the windows in a permutation P_e of 0 .. W-1: the identity without shuffle, else a
// Fisher–Yates shuffle driven by std::mt19937_64 seeded from (seed, e) with an explicit unbiased bounded
// draw (std::uniform_int_distribution is implementation-defined, so it is not used). Rank r of R takes
// P_e[r], P_e[r + R], P_e[r + 2R], ...: floor(W / R) windows per epoch, the same count on every rank so
// ranks stay in lockstep; the W mod R windows at the end of P_e are skipped that epoch (a different set each
// epoch when shuffled). Ranks' windows within an epoch are disjoint.
//
// Batches: each batch takes the rank's next B windows; a batch that reaches the end of an epoch continues
// with the start of the next one (no window is dropped or repeated within an epoch).
#pragma once
#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "core/token_shards.h"

namespace loom {

// Where a loader stands: the next window served is the `index`-th (0-based) of this rank's windows in
// epoch `epoch`. Always 0 <= index < windows_per_rank().
struct LoaderPosition {
  int64_t epoch = 0;
  int64_t index = 0;
  bool operator==(const LoaderPosition&) const = default;
};
// JSON form {"epoch": e, "index": i}; from_json throws loom::Error naming a missing or non-integer field.
void to_json(nlohmann::json& json, const LoaderPosition& position);
void from_json(const nlohmann::json& json, LoaderPosition& position);

struct TextLoaderOptions {
  std::string pattern;      // glob of shard files, e.g. "data/linux_doc/train_*.bin"
  int64_t batch_size = 0;   // B: sequences per batch (per rank)
  int64_t seq_len = 0;      // T
  int rank = 0;             // this process's data-parallel rank, in [0, world_size)
  int world_size = 1;
  uint64_t seed = 1337;
  bool shuffle = true;
  int32_t vocab_size = 0;   // when > 0, every token of every shard must be below it: checked when the shards
                            // open (loom::Error naming the shard, the token's index and byte offset)
};

// Not thread-safe: one thread calls next_batch(); separate loaders may be used from separate threads.
class TextLoader {
 public:
  // Opens (memory-maps) every shard matching options.pattern. Throws loom::Error naming the pattern when no
  // file matches or the shards hold fewer windows than world_size, naming a shard that is invalid, and
  // for non-positive batch_size / seq_len / world_size or a rank outside [0, world_size).
  explicit TextLoader(const TextLoaderOptions& options);

  // Writes the next batch: inputs[b * T + t] = window_b[t], targets[b * T + t] = window_b[t + 1] for
  // b < B, t < T. Both arrays must hold B * T int32 (host memory). Advances the position by B windows.
  void next_batch(int32_t* inputs, int32_t* targets);
  // Same, as new CPU I32 tensors of shape [B, T].
  struct Batch {
    Tensor inputs;
    Tensor targets;
  };
  Batch next_batch();

  LoaderPosition position() const { return position_; }
  // Continues from `position` (as returned by position() of a loader with the same shards and options).
  // Throws loom::Error if epoch < 0 or index is outside [0, windows_per_rank()).
  void set_position(const LoaderPosition& position);

  int64_t total_windows() const { return window_offsets_.back(); }  // W
  int64_t windows_per_rank() const { return windows_per_rank_; }     // floor(W / world_size), per epoch
  int64_t total_tokens() const { return total_tokens_; }
  const std::vector<TokenShard>& shards() const { return shards_; }
  const TextLoaderOptions& options() const { return options_; }

 private:
  const std::vector<int64_t>& permutation(int64_t epoch);
  void copy_window(int64_t window, int32_t* inputs, int32_t* targets) const;

  TextLoaderOptions options_;
  std::vector<TokenShard> shards_;
  std::vector<int64_t> window_offsets_;  // window_offsets_[s]: first global window of shard s; back() == W
  int64_t windows_per_rank_ = 0;
  int64_t total_tokens_ = 0;
  LoaderPosition position_;
  int64_t permutation_epoch_ = -1;  // the epoch permutation_ belongs to
  std::vector<int64_t> permutation_;
};

}  // namespace loom
