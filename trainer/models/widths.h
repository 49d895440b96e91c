// Per-block widths of the shared transformer block, resolved from the config (defaults plus overrides).
#pragma once
#include <cmath>
#include <cstdint>
#include <vector>

#include "core/config.pb.h"

namespace loom {

struct BlockWidths {
  int64_t heads = 0, qk_dim = 0, v_dim = 0, mlp_dim = 0;
  // Softmax scale of the block's attention; 0 means 1/sqrt(qk_dim). A shrink that deletes q/k dims keeps the
  // original block's scale, so the pruned block computes exactly what the masked one did.
  double attention_scale = 0;
  int64_t qkv_width() const { return heads * (2 * qk_dim + v_dim); }
  int64_t attn_out_width() const { return heads * v_dim; }
  double scale() const { return attention_scale > 0 ? attention_scale : 1.0 / std::sqrt(static_cast<double>(qk_dim)); }
  bool operator==(const BlockWidths&) const = default;
};

// Resolves every block's widths from `model` (n_layer entries; attention_scale set to the block's scale).
// Throws loom::Error naming the field ("model.blocks[3].heads") when a width is missing, non-positive, or the
// blocks list has the wrong length.
std::vector<BlockWidths> resolve_block_widths(const config::ModelConfig& model);

}  // namespace loom
