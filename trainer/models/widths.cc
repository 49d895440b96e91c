#include "trainer/models/widths.h"

#include "core/error.h"

namespace loom {

std::vector<BlockWidths> resolve_block_widths(const config::ModelConfig& m) {
  if (!(m.n_layer() > 0)) fail("model.n_layer must be positive, got ", m.n_layer());
  if (!(m.d_model() > 0)) fail("model.d_model must be positive, got ", m.d_model());
  if (!(m.n_head() > 0)) fail("model.n_head must be positive, got ", m.n_head());
  // The derived head width d_model / n_head is needed only by blocks that set neither head dim.
  auto default_head_dim = [&m]() -> int64_t {
    if (m.has_head_dim()) return m.head_dim();
    if (!(m.d_model() % m.n_head() == 0))
      fail("model.d_model (", m.d_model(), ") must divide by model.n_head (", m.n_head(),
           ") unless model.head_dim is set");
    return m.d_model() / m.n_head();
  };
  const int64_t mlp_dim = m.has_mlp_dim() ? m.mlp_dim() : 4LL * m.d_model();
  if (m.blocks_size() != 0)
    if (!(m.blocks_size() == m.n_layer()))
      fail("model.blocks has ", m.blocks_size(), " entries but model.n_layer is ", m.n_layer(),
           " (give one per block, or none)");
  std::vector<BlockWidths> out(m.n_layer());
  for (int i = 0; i < m.n_layer(); ++i) {
    const config::BlockSpec none;
    const auto& b = m.blocks_size() != 0 ? m.blocks(i) : none;
    BlockWidths w{m.n_head(), 0, 0, mlp_dim};
    w.qk_dim = b.has_qk_head_dim() ? b.qk_head_dim() : default_head_dim();
    w.v_dim = b.has_v_head_dim() ? b.v_head_dim() : default_head_dim();
    if (b.has_heads()) w.heads = b.heads();
    if (b.has_mlp_dim()) w.mlp_dim = b.mlp_dim();
    if (b.has_attention_scale()) w.attention_scale = b.attention_scale();
    const std::string at = "model.blocks[" + std::to_string(i) + "]";
    if (!(w.heads > 0)) fail(at, ".heads must be positive, got ", w.heads);
    if (!(w.qk_dim > 0)) fail(at, ".qk_head_dim must be positive, got ", w.qk_dim);
    if (!(w.v_dim > 0)) fail(at, ".v_head_dim must be positive, got ", w.v_dim);
    if (!(w.mlp_dim > 0)) fail(at, ".mlp_dim must be positive, got ", w.mlp_dim);
    if (!(!b.has_attention_scale() || w.attention_scale > 0))
      fail(at, ".attention_scale must be positive, got ", w.attention_scale);
    w.attention_scale = w.scale();
    out[i] = w;
  }
  return out;
}

}  // namespace loom
