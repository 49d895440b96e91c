// Timing a model's step the way the latency table times its parts (trainer/pruning/latency_table.h), shared by
// the table builder and bench/pruning/prune_bench.cc, which checks the table's predictions on whole models
// and measures a pruned model's speed-up, so that both measure the same thing.
//
// A value is the median of `repeats` runs after `warmup` untimed ones, timed with the backend's WorkMarkers
// (CUDA events on the GPU; the host clock on the CPU, where work is complete when a call returns).
// Thread-safety: a model and its backend are driven by one thread.
#pragma once
#include <cstdint>
#include <functional>

#include "core/config.pb.h"
#include "trainer/models/model.h"
#include "trainer/pruning/latency_table.h"

namespace loom {

// The median time of `run` as above; `prepare` runs before each run, outside the timed region.
double median_ms(Backend& be, int warmup, int repeats, const std::function<void()>& prepare,
                 const std::function<void()>& run);

// Random inputs for a model of `shape` on `device`, drawn from `seed`: GPT token ids and targets I32
// [batch, tokens] (tokens <= shape.max_seq), ViT f32 patch rows [batch, patches, C·P·P] in [-1, 1) and labels
// I32 [batch]. Throws loom::Error for GPT tokens beyond max_seq.
Batch random_batch(const ModelShape& shape, int64_t batch, int64_t tokens, Device device, uint64_t seed);

// One step of `model` on `batch`, the median as above. Training: zero the gradients, forward_backward, one
// AdamW update with `optim`'s settings (no clipping); the model's weights change. Inference: the forward pass
// alone (Model::logits).
double model_step_ms(Model& model, const config::OptimConfig& optim, const Batch& batch, LatencyMode mode,
                     int warmup, int repeats);

}  // namespace loom
