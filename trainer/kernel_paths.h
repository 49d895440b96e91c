// Which blocks of a model will miss a backend's fast kernels (Backend::slow_paths), reported once per distinct
// block shape, so a pruned or otherwise uneven model that falls back to, say, materialised attention says so
// at the start of the run instead of silently running slower.
//
// Threads: no state. Errors: none of its own (the query's exceptions pass through).
#pragma once
#include <functional>
#include <ostream>
#include <vector>

#include "kernels/backend.h"
#include "trainer/models/model_shape.h"

namespace loom {

// Blocks of one shape (as the kernels see it) and the fallbacks they take.
struct BlockSlowPaths {
  std::vector<int64_t> blocks;  // block indices, ascending
  BlockKernelShape shape;
  std::vector<SlowPath> paths;  // never empty
};

using SlowPathQuery = std::function<std::vector<SlowPath>(const BlockKernelShape&, DType)>;

// The block shapes of `model` with micro-batch `batch` (sequence length `seq` for GPT; a ViT's token count comes
// from its shape) on one of `tensor_size` tensor-parallel ranks (heads and MLP neurons divided among them), and
// for each distinct one the fallbacks `query` (normally Backend::slow_paths) names; shapes with none are left
// out. Ordered by first block.
std::vector<BlockSlowPaths> model_slow_paths(const ModelShape& model, int64_t batch, int64_t seq,
                                             int64_t tensor_size, DType dtype, const SlowPathQuery& query);

// One line per shape and fallback: "blocks 1, 3 (heads 4, q/k dim 12, v dim 40, mlp 96): attention runs
// materialised ...".
void log_slow_paths(const std::vector<BlockSlowPaths>& slow, std::ostream& log);

}  // namespace loom
