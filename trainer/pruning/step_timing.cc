#include "trainer/pruning/step_timing.h"

#include <algorithm>
#include <vector>

#include "core/rng.h"
#include "trainer/optimizer.h"

namespace loom {

double median_ms(Backend& be, int warmup, int repeats, const std::function<void()>& prepare,
                 const std::function<void()>& run) {
  LOOM_CHECK(repeats >= 1 && warmup >= 0, "timing: ", repeats, " repeats after ", warmup,
             " warm-up runs (at least one repeat, no negative warm-up)");
  for (int i = 0; i < warmup; ++i) {
    prepare();
    run();
  }
  std::vector<double> times;
  auto start = be.make_marker(), end = be.make_marker();
  for (int i = 0; i < repeats; ++i) {
    prepare();
    start->record();
    run();
    end->record();
    times.push_back(end->ms_since(*start));
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

Batch random_batch(const ModelShape& shape, int64_t batch, int64_t tokens, Device device, uint64_t seed) {
  PhiloxStream rng(seed, 0);
  if (shape.is_gpt()) {
    LOOM_CHECK(tokens >= 1 && tokens <= shape.max_seq, "random batch: ", tokens, " tokens for a GPT of max_seq ",
               shape.max_seq);
    std::vector<int32_t> inputs(static_cast<size_t>(batch * tokens)), targets(inputs.size());
    for (auto& v : inputs) v = static_cast<int32_t>(rng.below(static_cast<uint64_t>(shape.vocab)));
    for (auto& v : targets) v = static_cast<int32_t>(rng.below(static_cast<uint64_t>(shape.vocab)));
    return {Tensor::from_ints(inputs, {batch, tokens}).to(device), Tensor::from_ints(targets, {batch, tokens}).to(device)};
  }
  std::vector<float> patches(static_cast<size_t>(batch * shape.patches() * shape.patch_dim()));
  for (auto& v : patches) v = 2 * rng.uniform() - 1;
  std::vector<int32_t> labels(static_cast<size_t>(batch));
  for (auto& v : labels) v = static_cast<int32_t>(rng.below(static_cast<uint64_t>(shape.num_classes)));
  return {Tensor::from_vector(patches, {batch, shape.patches(), shape.patch_dim()}).to(device),
          Tensor::from_ints(labels, {batch}).to(device)};
}

double model_step_ms(Model& model, const config::OptimConfig& optim, const Batch& batch, LatencyMode mode,
                     int warmup, int repeats) {
  Backend& be = model.backend();
  if (mode == LatencyMode::Inference)
    return median_ms(be, warmup, repeats, [] {}, [&] { model.logits(batch.inputs); });
  AdamW adamw(model.params(), optim, be);
  int64_t step = 0;
  return median_ms(be, warmup, repeats, [] {}, [&] {
    be.zero(model.params().grads());
    model.forward_backward(batch, 1.0);
    adamw.step(optim.lr(), ++step, 1.0);
  });
}

}  // namespace loom
