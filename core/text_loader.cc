#include "core/text_loader.h"

#include <algorithm>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>

#include "core/error.h"

namespace loom {
namespace {

// SplitMix64 finaliser: spreads (seed, epoch) into a well-mixed 64-bit engine seed.
uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Uniform integer in [0, bound) without modulo bias: draws below 2^64 mod bound are rejected. Written out
// because std::uniform_int_distribution's algorithm differs between standard libraries.
uint64_t uniform_below(std::mt19937_64& rng, uint64_t bound) {
  const uint64_t threshold = (0 - bound) % bound;  // == 2^64 mod bound
  for (;;) {
    const uint64_t r = rng();
    if (r >= threshold) return r % bound;
  }
}

}  // namespace

void to_json(nlohmann::json& json, const LoaderPosition& position) {
  json = nlohmann::json{{"epoch", position.epoch}, {"index", position.index}};
}

void from_json(const nlohmann::json& json, LoaderPosition& position) {
  if (!json.is_object()) fail("loader position: expected a JSON object, got ", json.dump());
  for (const char* field : {"epoch", "index"}) {
    if (!json.contains(field) || !json[field].is_number_integer())
      fail("loader position: field '", field, "' is missing or not an integer in ", json.dump());
  }
  position.epoch = json["epoch"].get<int64_t>();
  position.index = json["index"].get<int64_t>();
}

TextLoader::TextLoader(const TextLoaderOptions& options) : options_(options) {
  LOOM_CHECK(options.batch_size > 0, "text loader: batch_size ", options.batch_size, " must be positive");
  LOOM_CHECK(options.seq_len > 0, "text loader: seq_len ", options.seq_len, " must be positive");
  LOOM_CHECK(options.world_size > 0, "text loader: world_size ", options.world_size, " must be positive");
  LOOM_CHECK(options.rank >= 0 && options.rank < options.world_size, "text loader: rank ", options.rank,
             " is outside [0, ", options.world_size, ")");
  const int64_t T = options.seq_len;
  window_offsets_.push_back(0);
  for (const std::string& path : glob_files(options.pattern)) {
    shards_.emplace_back(path, options.vocab_size);
    const int64_t n = shards_.back().size();
    total_tokens_ += n;
    window_offsets_.push_back(window_offsets_.back() + (n > 0 ? (n - 1) / T : 0));
  }
  windows_per_rank_ = total_windows() / options.world_size;
  if (windows_per_rank_ == 0)
    fail("text loader: the shards matching '", options.pattern, "' (", shards_.size(), " files, ", total_tokens_,
         " tokens) hold ", total_windows(), " windows of ", T + 1, " tokens, fewer than world_size ",
         options.world_size);
}

const std::vector<int64_t>& TextLoader::permutation(int64_t epoch) {
  if (epoch == permutation_epoch_) return permutation_;
  permutation_.resize(static_cast<size_t>(total_windows()));
  std::iota(permutation_.begin(), permutation_.end(), int64_t{0});
  if (options_.shuffle) {
    std::mt19937_64 rng(splitmix64(options_.seed ^ splitmix64(static_cast<uint64_t>(epoch))));
    for (size_t i = permutation_.size(); i > 1; --i) std::swap(permutation_[i - 1], permutation_[uniform_below(rng, i)]);
  }
  permutation_epoch_ = epoch;
  return permutation_;
}

void TextLoader::copy_window(int64_t window, int32_t* inputs, int32_t* targets) const {
  const size_t shard_index =
      static_cast<size_t>(std::upper_bound(window_offsets_.begin(), window_offsets_.end(), window) -
                          window_offsets_.begin() - 1);
  const TokenShard& shard = shards_[shard_index];
  const int64_t T = options_.seq_len;
  const int64_t start = (window - window_offsets_[shard_index]) * T;
  const uint16_t* tokens = shard.tokens().data() + start;  // checked against vocab_size when the shard opened
  for (int64_t t = 0; t < T; ++t) {
    inputs[t] = tokens[t];
    targets[t] = tokens[t + 1];
  }
}

void TextLoader::next_batch(int32_t* inputs, int32_t* targets) {
  const int64_t T = options_.seq_len;
  for (int64_t b = 0; b < options_.batch_size; ++b) {
    const std::vector<int64_t>& order = permutation(position_.epoch);
    const int64_t window = order[static_cast<size_t>(options_.rank + options_.world_size * position_.index)];
    copy_window(window, inputs + b * T, targets + b * T);
    if (++position_.index == windows_per_rank_) {
      ++position_.epoch;
      position_.index = 0;
    }
  }
}

TextLoader::Batch TextLoader::next_batch() {
  Batch batch{Tensor::empty({options_.batch_size, options_.seq_len}, DType::I32),
              Tensor::empty({options_.batch_size, options_.seq_len}, DType::I32)};
  next_batch(batch.inputs.data<int32_t>(), batch.targets.data<int32_t>());
  return batch;
}

void TextLoader::set_position(const LoaderPosition& position) {
  if (position.epoch < 0 || position.index < 0 || position.index >= windows_per_rank_)
    fail("text loader: position (epoch ", position.epoch, ", index ", position.index, ") is invalid for '",
         options_.pattern, "': need epoch >= 0 and index in [0, ", windows_per_rank_, ")");
  position_ = position;
}

}  // namespace loom
