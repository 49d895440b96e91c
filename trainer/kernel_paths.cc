#include "trainer/kernel_paths.h"

#include <cstdint>
#include <map>
#include <tuple>

namespace loom {

std::vector<BlockSlowPaths> model_slow_paths(const ModelShape& model, int64_t batch, int64_t seq,
                                             int64_t tensor_size, DType dtype, const SlowPathQuery& query) {
  std::vector<BlockSlowPaths> out;
  // Blocks of equal widths share one entry: the key is what the kernels see.
  std::map<std::tuple<int64_t, int64_t, int64_t, int64_t>, size_t> seen;
  for (int64_t i = 0; i < model.n_layer(); ++i) {
    const BlockWidths& w = model.blocks[static_cast<size_t>(i)];
    BlockKernelShape s;
    s.batch = batch;
    s.seq = model.is_vit() ? model.tokens() : seq;
    s.d_model = model.d_model;
    s.heads = w.heads / tensor_size;
    s.qk_dim = w.qk_dim;
    s.v_dim = w.v_dim;
    s.mlp_dim = w.mlp_dim / tensor_size;
    s.causal = model.is_gpt();
    s.gelu = model.is_gpt() ? GeluKind::Tanh : GeluKind::Erf;
    const auto key = std::make_tuple(s.heads, s.qk_dim, s.v_dim, s.mlp_dim);
    if (const auto it = seen.find(key); it != seen.end()) {
      if (it->second < out.size()) out[it->second].blocks.push_back(i);
      continue;
    }
    std::vector<SlowPath> paths = query(s, dtype);
    seen[key] = paths.empty() ? SIZE_MAX : out.size();
    if (!paths.empty()) out.push_back({{i}, s, std::move(paths)});
  }
  return out;
}

void log_slow_paths(const std::vector<BlockSlowPaths>& slow, std::ostream& log) {
  for (const BlockSlowPaths& b : slow) {
    std::string blocks;
    for (const int64_t i : b.blocks) blocks += (blocks.empty() ? "" : ", ") + std::to_string(i);
    for (const SlowPath& p : b.paths)
      log << "slow path: block" << (b.blocks.size() > 1 ? "s " : " ") << blocks << " (heads " << b.shape.heads
          << ", q/k dim " << b.shape.qk_dim << ", v dim " << b.shape.v_dim << ", mlp " << b.shape.mlp_dim
          << ", width " << b.shape.d_model << "): " << p.op << " runs " << p.rule << std::endl;
  }
}

}  // namespace loom
