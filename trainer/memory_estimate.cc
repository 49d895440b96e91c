#include "trainer/memory_estimate.h"

#include <algorithm>
#include <cstdio>

#include "core/error.h"
#include "core/tensor.h"
#include "trainer/run.h"

namespace loom {
namespace {

struct Sizes {
  int64_t compute;   // bytes of an activation / gradient element
  int64_t stat;      // LayerNorm statistics, losses: f32 (f64 when computing in f64)
  int64_t residual;  // bytes of a residual-stream element (train.residual_dtype): compute, or 4 for f32
};

// Parameters of one block on a tensor rank of R: the LayerNorms and the row-parallel biases are replicated.
int64_t block_parameters(int64_t C, const BlockWidths& w, int64_t R) {
  const int64_t Q = w.qkv_width() / R, A = w.attn_out_width() / R, M = w.mlp_dim / R;
  return 4 * C + Q * C + Q + C * A + C + M * C + M + C * M + C;
}

// Activations of one block for B sequences of T tokens (n of the rows on this rank), as
// TransformerBlock::allocate_activations allocates them (without its GELU output when that is recomputed into a
// buffer shared by the blocks, counted by the caller).
int64_t block_activations(const BlockWidths& full, int64_t C, int64_t B, int64_t T, int64_t R, bool sp, bool causal,
                          DType compute, const Backend& backend, Sizes b, bool recompute_gelu) {
  const int64_t N = B * T, n = sp ? N / R : N;
  AttentionShape as;
  as.batch = B;
  as.seq = T;
  as.heads = full.heads / R;
  as.qk_dim = full.qk_dim;
  as.v_dim = full.v_dim;
  as.causal = causal;
  as.scale = full.scale();
  const DType saved_dtype = backend.attention_saved_dtype() == DType::F32 && compute == DType::F64
                                ? DType::F64
                                : backend.attention_saved_dtype();
  const int64_t saved =
      shape_numel(backend.attention_saved_shape(as, compute)) * static_cast<int64_t>(dtype_size(saved_dtype));
  // ln1 and ln2 in the compute dtype and mid in the residual dtype ([n, C] each), plus one more [n, C] of compute
  // dtype that the estimate has always counted (a margin).
  const int64_t mlp_buffers = recompute_gelu ? 1 : 2;  // the pre-activation, and the GELU output unless shared
  int64_t bytes = (3 * n * C + N * (as.qkv_width() + as.out_width() + mlp_buffers * full.mlp_dim / R)) * b.compute;
  bytes += n * C * b.residual + 4 * n * b.stat + saved;
  if (sp) bytes += 3 * N * C * b.compute;  // the gathered LayerNorm outputs and the partial sums
  return bytes;
}

}  // namespace

std::string format_bytes(double bytes) {
  char buf[32];
  if (bytes >= 1024.0 * 1024 * 1024)
    std::snprintf(buf, sizeof buf, "%.2f GiB", bytes / (1024.0 * 1024 * 1024));
  else if (bytes >= 1024.0 * 1024)
    std::snprintf(buf, sizeof buf, "%.1f MiB", bytes / (1024.0 * 1024));
  else if (bytes >= 1024.0)
    std::snprintf(buf, sizeof buf, "%.1f KiB", bytes / 1024.0);
  else
    std::snprintf(buf, sizeof buf, "%.0f B", bytes);
  return buf;
}

std::string MemoryEstimate::describe() const {
  // The parts in the total's unit.
  const double t = static_cast<double>(total());
  const auto [unit, name] = t >= 1024.0 * 1024 * 1024 ? std::pair{1024.0 * 1024 * 1024, "GiB"}
                            : t >= 1024.0 * 1024      ? std::pair{1024.0 * 1024, "MiB"}
                                                      : std::pair{1024.0, "KiB"};
  char buf[160];
  std::snprintf(buf, sizeof buf, " (weights %.3g, gradients %.3g, AdamW moments %.3g, activations %.3g %s)",
                weights / unit, gradients / unit, optimizer / unit, activations / unit, name);
  return format_bytes(t) + buf;
}

MemoryEstimate estimate_training_memory(const ModelShape& shape, const config::RunConfig& cfg, const Backend& backend,
                                        DType compute) {
  const auto& par = cfg.parallel();
  const int64_t R = par.tensor(), D = par.data(), C = shape.d_model, L = shape.n_layer();
  const bool sp = par.sequence() && R > 1;
  const int64_t compute_bytes = static_cast<int64_t>(dtype_size(compute));
  const bool f32_residual = cfg.train().residual_dtype() == "f32" && compute_bytes < 4;
  const Sizes b{compute_bytes, compute == DType::F64 ? 8 : 4, f32_residual ? 4 : compute_bytes};
  const bool recompute_gelu = select_recompute_gelu(cfg.train());
  const int64_t B = cfg.data().batch_size();
  const int64_t T = shape.is_gpt() ? cfg.data().seq_len() : shape.tokens(), N = B * T, n = sp ? N / R : N;

  MemoryEstimate e;
  int64_t max_qkv = 0, max_att = 0, max_mlp = 0;
  for (const BlockWidths& w : shape.blocks) {
    e.parameters += block_parameters(C, w, R);
    e.activations += block_activations(w, C, B, T, R, sp, shape.is_gpt(), compute, backend, b, recompute_gelu);
    max_qkv = std::max(max_qkv, w.qkv_width() / R);
    max_att = std::max(max_att, w.attn_out_width() / R);
    max_mlp = std::max(max_mlp, w.mlp_dim / R);
  }
  if (recompute_gelu) e.activations += N * max_mlp * b.compute;  // the blocks' shared GELU output
  // The backward's scratch (allocate_block_scratch) and the residual gradient (GPT; ViT's below).
  e.activations += (N * (C + max_qkv + max_att + max_mlp) + (sp ? n * C + N * C : 0)) * b.compute;
  if (shape.is_gpt()) e.activations += N * C * b.residual;
  // The residual stream at every block boundary, and the embeddings (their own buffer under SP).
  e.activations += (L + 1) * n * C * b.residual + (sp ? N * C : 0) * b.compute;
  // An f32 residual stream: the branches' shared compute-dtype output buffer (which also holds the embeddings)
  // and the residual gradient converted for the GEMMs.
  if (f32_residual) e.activations += (n * C + N * C) * b.compute;
  if (shape.is_gpt()) {
    const int64_t vocab_rows = shape.padded_vocab / R;
    e.parameters += vocab_rows * C + shape.max_seq * C + 2 * C;
    // Final norm, logits (overwritten by their gradient), losses, the batch's tokens and targets.
    e.activations += (n * C + (sp ? N * C : 0) + N * vocab_rows) * b.compute + 2 * n * b.stat + N * b.stat;
    e.activations += 2 * N * 4;
    if (R > 1) e.activations += 2 * shape.padded_vocab * C * b.compute;  // the gathered token table, its gradient
  } else {
    const int64_t patches = shape.patches(), P = shape.patch_dim(), heads = shape.distilled ? 2 : 1;
    e.parameters += C * P + C + shape.prefix_tokens() * C + T * C + 2 * C +
                    heads * (shape.num_classes * C + shape.num_classes);
    // Patch embeddings, position table and its gradient, final norm, heads' inputs and logits, the blocks'
    // output over every token (SP), the residual gradient (SP: and its rows), the batch's images and labels.
    e.activations += (B * patches * C + 2 * T * C + N * C + shape.prefix_tokens() * B * C + 2 * B * shape.num_classes +
                      (sp ? N * C + n * C : 0)) *
                     b.compute;
    e.activations += N * C * b.residual;
    e.activations += 2 * N * b.stat + B * b.stat + B * patches * P * 4 + B * 4;
  }
  const int64_t master = 4;  // fp32 master weights and moments
  e.weights = e.parameters * (master + (b.compute < master ? b.compute : 0));
  e.gradients = e.parameters * b.compute;
  e.optimizer = 2 * e.parameters * master / (par.zero1() ? D : 1);
  return e;
}

void check_memory_fits(const MemoryEstimate& estimate, int64_t available, const std::string& device) {
  if (available < 0 || estimate.total() <= available) return;
  fail("memory: the run needs about ", estimate.describe(), " on ", device, " but only ",
       format_bytes(static_cast<double>(available)), " are free there; stopping before allocating. Lower "
       "data.batch_size (activations grow with it, use train.grad_accum_steps for the same batch) or data.seq_len, "
       "split the model over more ranks (parallel.tensor) or the moments (parallel.zero1), or use a smaller model");
}

}  // namespace loom
