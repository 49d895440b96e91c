// What a pruning run shows at its end: a per-block width table and an SVG picture with two panels, the
// widths per block before and after (NViT's "spindle": heads·v dim, q/k dim per head and MLP neurons per
// block, and the embedding width) and the predicted latency against the training loss over the run.
//
// The SVG is written by hand (a few rectangles, polylines and text elements): no plotting library among the
// project's dependencies writes SVG from C++, and a static picture needs none of their features.
// Thread-safety: pure functions.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "trainer/models/model_shape.h"

namespace loom {

// One step of a pruning run as the picture plots it.
struct PruningPoint {
  int64_t step = 0;
  double predicted_ms = 0, loss = 0;
};

// "embedding 64 → 48" then one row per block: heads, qk dim, v dim, mlp (was → now).
std::string width_table(const ModelShape& original, const ModelShape& pruned);

// The picture as an SVG document (see the header comment). `history` may be empty (no second panel then).
std::string pruning_svg(const ModelShape& original, const ModelShape& pruned, const std::vector<PruningPoint>& history);

}  // namespace loom
