#include "trainer/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace loom {

int32_t pick_token(const float* logits, int64_t vocab, double temperature, int64_t top_k, PhiloxStream& rng) {
  LOOM_CHECK(vocab > 0, "pick_token: empty vocabulary");
  if (temperature <= 0) return static_cast<int32_t>(std::max_element(logits, logits + vocab) - logits);
  std::vector<int32_t> order(vocab);
  std::iota(order.begin(), order.end(), 0);
  const int64_t k = (top_k > 0 && top_k < vocab) ? top_k : vocab;
  // Ties are broken by index so the choice does not depend on the sort implementation.
  std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int32_t a, int32_t b) {
    return logits[a] != logits[b] ? logits[a] > logits[b] : a < b;
  });
  std::vector<double> p(k);
  const double top = logits[order[0]];
  double total = 0;
  for (int64_t i = 0; i < k; ++i) total += p[i] = std::exp((logits[order[i]] - top) / temperature);
  double u = rng.uniform() * total;
  for (int64_t i = 0; i < k; ++i) {
    u -= p[i];
    if (u <= 0) return order[i];
  }
  return order[k - 1];
}

std::vector<int32_t> sample_tokens(Model& model, const std::vector<int32_t>& prompt, const SampleOptions& opts,
                                   PhiloxStream& rng) {
  LOOM_CHECK(!prompt.empty(), "sample: the prompt must have at least one token");
  const int64_t ctx_max = model.tokens_per_sample();
  std::vector<int32_t> context = prompt, generated;
  for (int64_t i = 0; i < opts.max_new_tokens; ++i) {
    const int64_t start = std::max<int64_t>(0, static_cast<int64_t>(context.size()) - ctx_max);
    std::vector<int32_t> window(context.begin() + start, context.end());
    const Tensor ids = Tensor::from_ints(window, {1, static_cast<int64_t>(window.size())});
    const std::vector<float> logits = model.last_logits(ids);
    const int32_t next = pick_token(logits.data(), model.shape().vocab, opts.temperature, opts.top_k, rng);
    context.push_back(next);
    generated.push_back(next);
    if (next == opts.stop_token) break;
  }
  return generated;
}

}  // namespace loom
