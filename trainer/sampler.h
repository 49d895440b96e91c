// Autoregressive sampling from a GPT: temperature and top-k, drawn from a counter-based RNG so the same seed
// gives the same text on every backend.
#pragma once
#include <cstdint>
#include <vector>

#include "core/rng.h"
#include "trainer/models/model.h"

namespace loom {

struct SampleOptions {
  int64_t max_new_tokens = 64;
  double temperature = 1.0;  // 0 means greedy (argmax)
  int64_t top_k = 40;        // 0 means the whole vocabulary
  int32_t stop_token = -1;   // stop after emitting this token (e.g. <|endoftext|>), -1: never
};

// Continues `prompt` (non-empty) with a language model (Model::last_logits; other models throw) and returns
// only the new tokens. The context is truncated to the model's sequence length from the left.
std::vector<int32_t> sample_tokens(Model& model, const std::vector<int32_t>& prompt, const SampleOptions& opts,
                                   PhiloxStream& rng);

// Picks one index from `logits` with temperature and top-k (exposed for tests).
int32_t pick_token(const float* logits, int64_t vocab, double temperature, int64_t top_k, PhiloxStream& rng);

}  // namespace loom
