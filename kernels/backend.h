// The compute backend interface: every numerical operation the models and the optimizer need.
//
// Two implementations sit behind it: CpuBackend (kernels/cpu, fp32 reference, also f64 for gradient checks)
// and CudaBackend (kernels/cuda, bf16/fp16 activations, fp32 master weights and reductions).
//
// Contract for every method:
// - All tensors live on device() and are contiguous; shapes are checked and a mismatch throws loom::Error
//   naming the op and the tensors. An undefined Tensor means "absent" where the comment allows it.
// - "N" is the number of rows (tokens) = product of all leading dimensions; "C" the last dimension.
// - Gradients of parameters are ACCUMULATED (+=), so micro-batches add up; gradients of activations are
//   written (=) unless the comment says "accumulates".
// - Work may be asynchronous on CUDA (one stream per backend); results are visible to later calls on the
//   same backend and to the host after synchronize(). Not thread-safe: one thread drives a backend.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "kernels/step_stats.h"

namespace loom {

enum class GeluKind { Tanh, Erf };  // GPT-2 uses the tanh approximation; ViT/DeiT the exact erf form

// How a backend with a GEMM library picks the algorithm for each GEMM shape (train.gemm_algorithm).
// Heuristic: the library's first answer. Timed: on the first call of each shape, up to 8 of the library's
// candidates are timed on the device and the fastest is kept for the rest of the process (a candidate replaces
// the first answer only when more than 2 % faster). Either way one shape keeps one algorithm within a process;
// two processes may choose differently under Timed (timing noise), so their results may differ in the last bits.
enum class GemmAlgorithm { Heuristic, Timed };

// How a backend with a GEMM library computes a linear layer's bias gradient dbias += Σ_n dout
// (matmul_backward, matmul_backward_gelu). Both are deterministic; the CPU has one way and ignores the choice.
// ColumnSums (the default): the weight-gradient GEMM without an epilogue, then the backend's own column sums
//   (CUDA: f32 partials over blocks of rows, dout read once in 16-byte loads, then a small pass adding them in
//   a fixed order straight into dbias).
// GemmEpilogue: the GEMM library's bias-gradient epilogue (cuBLASLt BGRADB; H100 profiles show it as a reduction
//   kernel of its own after the GEMM) writes Σ_n dout to a scratch vector, since it overwrites, and a second
//   kernel adds that to dbias; where the library refuses the epilogue, ColumnSums.
// bench/kernels/bias_grad_bench.cc times the two.
enum class BiasGradient { ColumnSums, GemmEpilogue };

// What a backend's GEMM algorithm choice has done so far: shapes with a chosen algorithm, how many of them
// were chosen by timing, and how many of those replaced the heuristic's first answer.
struct GemmAlgorithmStats {
  int64_t shapes = 0, timed = 0, replaced = 0;
};

// Multi-head attention over a fused QKV activation.
// qkv is [B, T, H*Dqk (q) + H*Dqk (k) + H*Dv (v)]: per token, all query heads, then all key heads, then all
// value heads, each head contiguous. out is [B, T, H*Dv] with the same head order.
struct AttentionShape {
  int64_t batch = 0, seq = 0, heads = 0, qk_dim = 0, v_dim = 0;
  bool causal = true;
  double scale = 0;  // softmax scale, usually 1/sqrt(qk_dim)
  int64_t qkv_width() const { return heads * (2 * qk_dim + v_dim); }
  int64_t out_width() const { return heads * v_dim; }
};

// One deleted dimension of one parameter inside an arena (Backend::zero_deleted): the parameter's elements
// [offset, offset + numel) viewed as [outer, size, inner], and the dimension's keep flags at
// keep[flags_at .. flags_at + size).
struct DimensionMask {
  int64_t offset = 0, numel = 0;
  int64_t size = 0, inner = 1;
  int64_t flags_at = 0;
};

struct AdamWHyper {
  double lr = 0, beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
  int64_t step = 1;        // 1-based step for bias correction
  double grad_scale = 1;   // gradients are multiplied by this first (clipping and loss-scale undo)
  // Clipping and the finiteness guard decided where the update runs, so the host queues it without reading the
  // norm: when `step_stats` is defined (kernels/step_stats.h: F64 [kStepStatsSize] on the backend's device,
  // written earlier in stream order) the update uses step_update_scale(stats, max_grad_norm, grad_scale) as
  // its multiplier, and leaves param, m, v and compute_copy untouched when the loss or the norm is not finite.
  // max_grad_norm 0 disables clipping.
  Tensor step_stats;
  double max_grad_norm = 0;
};

// A timestamp taken in the order of queued work, so phases can be timed without synchronising the step.
// CUDA: an event recorded on a stream; CPU: the host clock when record() is called (CPU work is complete when
// each call returns, and so is a host communicator's blocking operation).
class WorkMarker {
 public:
  virtual ~WorkMarker() = default;
  // Marks the point after everything queued so far on `stream` (a cudaStream_t of the backend's GPU, e.g. a
  // communicator's; nullptr: the backend's own stream). The CPU marker ignores `stream`.
  virtual void record(void* stream = nullptr) = 0;
  // Milliseconds from `earlier` (made by the same backend) to this marker. Blocks until both have completed;
  // throws loom::Error when either has not been recorded.
  virtual double ms_since(const WorkMarker& earlier) const = 0;
};

// One transformer block's work as the kernels see it (under tensor parallelism: one rank's heads and neurons).
struct BlockKernelShape {
  int64_t batch = 0, seq = 0, d_model = 0, heads = 0, qk_dim = 0, v_dim = 0, mlp_dim = 0;
  bool causal = true;
  GeluKind gelu = GeluKind::Tanh;
};

// A fast kernel a backend will not use for some block, and the rule the block's shape broke.
struct SlowPath {
  std::string op;    // "attention", "layernorm", "mlp"
  std::string rule;  // what runs instead and why, e.g. "materialised [B, H, T, T] scores: q/k head dim 12 ..."
  bool operator==(const SlowPath&) const = default;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual Device device() const = 0;
  virtual std::string name() const = 0;
  // Blocks until queued work is done (no-op on the CPU).
  virtual void synchronize() {}
  // Waits for the queued work and returns x (F64, a few elements on device()) as host doubles: what a training
  // step reads once at its end. Also reports what synchronize() reports; CUDA makes it one blocking read for
  // both (cuda_host_reads() in kernels/cuda/cuda_backend.h counts it once).
  virtual std::vector<double> synchronize_and_read(const Tensor& x);
  // The queue this backend's work runs on (CUDA: its cudaStream_t, a blocking stream, so Tensor copies on the
  // legacy default stream stay ordered with it), for ordering communication against it; nullptr on the CPU.
  virtual void* native_stream() const { return nullptr; }
  // A new, unrecorded marker for timing this backend's work (default: the host clock).
  virtual std::unique_ptr<WorkMarker> make_marker() const;
  // The slower fallbacks a block of `shape` with activations of `dtype` will take, one per op that misses its
  // fast kernel; empty when every op runs on the fast path. Default (the CPU: one path per op): none.
  virtual std::vector<SlowPath> slow_paths(const BlockKernelShape& shape, DType dtype) const { return {}; }

  // ---- memory and elementwise ----
  virtual void zero(Tensor& x) = 0;
  // out = a + b (same shapes; out may alias a, or b when it has a's dtype). b is a compute tensor; a and out may be
  // an f32 residual stream beside a bf16/f16 b (CUDA; train.residual_dtype f32), else they have b's dtype.
  virtual void add(Tensor& out, const Tensor& a, const Tensor& b) = 0;
  // dst += src.
  virtual void accumulate(Tensor& dst, const Tensor& src) = 0;
  // x *= s.
  virtual void scale(Tensor& x, double s) = 0;
  // dst = src converted between float dtypes (e.g. f32 master weights to bf16 compute weights).
  virtual void convert(Tensor& dst, const Tensor& src) = 0;

  // ---- embeddings ----
  // out[n, :] = table[ids[n], :]. ids I32 of N elements, table [V, C], out [N, C] (or [B, T, C]).
  // Throws on an id outside [0, V) (CPU; CUDA checks in debug builds).
  virtual void embedding_forward(Tensor& out, const Tensor& ids, const Tensor& table) = 0;
  // dtable[ids[n], :] += dout[n, :], deterministic (same summation order on every run).
  virtual void embedding_backward(Tensor& dtable, const Tensor& dout, const Tensor& ids) = 0;
  // x[b, t, :] += pos[t, :] for x [B, T, C] and pos [P >= T, C] (learned positions).
  virtual void add_position_forward(Tensor& x, const Tensor& pos) = 0;
  // dpos[t, :] += sum_b dx[b, t, :].
  virtual void add_position_backward(Tensor& dpos, const Tensor& dx) = 0;
  // Copies `count` token rows per batch element: dst[b, dst_start + j, :] (=, or += when accumulate)
  // src[b, src_start + j, :] for j < count, with dst [B, Td, C] and src [B, Ts, C]. ViT uses it to place patch
  // embeddings after the class token(s) and to pick the class token(s) for the head (and the reverse in the
  // backward).
  virtual void copy_tokens(Tensor& dst, int64_t dst_start, const Tensor& src, int64_t src_start, int64_t count,
                           bool accumulate) = 0;

  // ---- LayerNorm over the last dimension ----
  // out = (x - mean) * rstd * w + b, with mean and rstd [N] saved in f32 for the backward.
  // `channels` (0: all C) is how many of the C channels count in the statistics, for a model whose embedding
  // channels are masked (pruning): the other C - channels entries of every row of x must be exact zeros, so
  //   mean = Σx / channels,  var = (Σ(x - mean)² - (C - channels)·mean²) / channels
  // are the statistics of the active channels alone (their w and b, zero on masked channels, make the output
  // zero there). Requires 1 <= channels <= C.
  // x (the residual stream) may be f32 beside bf16/f16 out, w and b (CUDA; train.residual_dtype f32); else all
  // share one dtype. The backward's dx has x's dtype, dout, dw and db out's.
  virtual void layernorm_forward(Tensor& out, Tensor& mean, Tensor& rstd, const Tensor& x, const Tensor& w,
                                 const Tensor& b, double eps, int64_t channels = 0) = 0;
  // Accumulates into dx (the residual stream's gradient), dw and db. `channels` as in the forward (the row
  // means of the backward divide by it; w is zero on masked channels).
  virtual void layernorm_backward(Tensor& dx, Tensor& dw, Tensor& db, const Tensor& dout, const Tensor& x,
                                  const Tensor& w, const Tensor& mean, const Tensor& rstd, int64_t channels = 0) = 0;

  // ---- linear layers (weights stored [out, in], as in PyTorch) ----
  // out[N, O] = x[N, I] · w[O, I]^T + bias[O]; bias may be undefined.
  virtual void matmul_forward(Tensor& out, const Tensor& x, const Tensor& w, const Tensor& bias) = 0;
  // out[N, O] = residual[N, O] + x[N, I] · w[O, I]^T + bias[O] (a residual branch joining its stream; bias may be
  // undefined). residual has out's shape and dtype and must not overlap it. The default is matmul_forward then
  // add; CUDA adds the residual in the GEMM (C ≠ D), which saves a pass over three [N, O] tensors and rounds
  // the sum once instead of twice.
  virtual void matmul_residual_forward(Tensor& out, const Tensor& x, const Tensor& w, const Tensor& bias,
                                       const Tensor& residual);
  // dx[N, I] = dout · w (written; undefined dx skips it), dw[O, I] += dout^T · x (undefined dw skips it and
  // then requires an undefined dbias), dbias[O] += Σ_n dout (undefined dbias skips it). Tensor parallelism calls
  // it twice, dx first, so the input gradient's reduction overlaps the weight-gradient GEMM.
  virtual void matmul_backward(Tensor& dx, Tensor& dw, Tensor& dbias, const Tensor& dout, const Tensor& x,
                               const Tensor& w) = 0;

  // ---- linear layer + GELU (a transformer MLP: fc2( gelu( fc1(x) ) )) ----
  // A linear layer followed by GELU: pre[N, M] = x[N, I] · w[M, I]^T + bias[M] (bias may be undefined) and
  // out = gelu(pre), both written; pre is what matmul_backward_gelu needs later. out, pre and x must not alias.
  // The default is matmul_forward then gelu_forward; CUDA fuses the GELU (tanh form, bf16/f16) into the GEMM's
  // epilogue, which computes it from the f32 accumulator instead of the rounded pre (a difference within the
  // dtype's rounding).
  virtual void matmul_gelu_forward(Tensor& out, Tensor& pre, const Tensor& x, const Tensor& w, const Tensor& bias,
                                   GeluKind kind) {
    matmul_forward(pre, x, w, bias);
    gelu_forward(out, pre, kind);
  }
  // The backward of a linear layer whose input x[N, M] = gelu(pre) came from matmul_gelu_forward, through the
  // GELU: dpre[N, M] = (dout[N, O] · w[O, M]) ∘ gelu'(pre) (written), dw[O, M] += doutᵀ · x and
  // dbias[O] += Σ_n dout (undefined dbias skips it). dpre must not alias pre, x or dout.
  // The default is matmul_backward then gelu_backward; CUDA fuses gelu' (tanh form, bf16/f16) into the dx GEMM's
  // epilogue (the product is not rounded before it is multiplied by gelu').
  virtual void matmul_backward_gelu(Tensor& dpre, Tensor& dw, Tensor& dbias, const Tensor& dout, const Tensor& x,
                                    const Tensor& w, const Tensor& pre, GeluKind kind) {
    matmul_backward(dpre, dw, dbias, dout, x, w);
    gelu_backward(dpre, dpre, pre, kind);
  }

  // ---- activations ----
  // out = gelu(x); out may alias x.
  virtual void gelu_forward(Tensor& out, const Tensor& x, GeluKind kind) = 0;
  // dx = dout * gelu'(x); dx may alias dout.
  virtual void gelu_backward(Tensor& dx, const Tensor& dout, const Tensor& x, GeluKind kind) = 0;

  // ---- attention ----
  // Shape and dtype of what the forward saves for the backward besides qkv and out
  // (CPU: the probabilities [B, H, T, T]; flash kernels: the row logsumexp [B, H, T] in f32).
  virtual Shape attention_saved_shape(const AttentionShape& s) const = 0;
  virtual DType attention_saved_dtype() const = 0;
  // The same for activations of `dtype`: the backend may pick a different kernel per dtype (CUDA: flash
  // attention for bf16/f16 and supported head dims, saving [B, H, T]). The tensor the caller allocates with this
  // shape selects the kernel in attention_forward/backward.
  virtual Shape attention_saved_shape(const AttentionShape& s, DType dtype) const { return attention_saved_shape(s); }
  // Deterministic mode: kernels that would otherwise accumulate with float atomics (flash attention's dQ)
  // take a slower fixed-order path, so repeated runs are bit-identical.
  virtual void set_deterministic(bool deterministic) {}
  // The GEMM algorithm choice for shapes first seen after this call (shapes already seen keep theirs). Backends
  // without a choice (CPU) ignore it; the CUDA backend starts with Heuristic and takes the heuristic's answer in
  // deterministic mode whatever this says, since a timed choice may differ between two runs.
  virtual void set_gemm_algorithm(GemmAlgorithm algorithm) {}
  virtual GemmAlgorithmStats gemm_algorithm_stats() const { return {}; }
  // The bias-gradient path of matmul_backward and matmul_backward_gelu from the next call on (BiasGradient).
  virtual void set_bias_gradient(BiasGradient choice) {}
  // out = softmax(scale · q kᵀ + causal mask) v per batch and head; fills `saved`.
  virtual void attention_forward(Tensor& out, Tensor& saved, const Tensor& qkv, const AttentionShape& s) = 0;
  // dqkv (same layout as qkv) is written.
  virtual void attention_backward(Tensor& dqkv, const Tensor& dout, const Tensor& qkv, const Tensor& out,
                                  const Tensor& saved, const AttentionShape& s) = 0;

  // ---- loss ----
  // Softmax cross-entropy per row of logits [N, Vp]; only the first `vocab` columns are classes (the rest is
  // padding and gets zero gradient). targets I32 [N]; a target of -1 ignores the row (loss 0, gradient 0).
  // With label smoothing ε the target distribution is (1-ε)·onehot + ε/vocab.
  // losses [N] f32 is written. If dlogits is defined it is written with dloss · (softmax - target dist)
  // and may alias logits (the logits are then overwritten, which saves a [N, Vp] buffer).
  virtual void cross_entropy(Tensor& losses, Tensor& dlogits, const Tensor& logits, const Tensor& targets,
                             int64_t vocab, double dloss, double label_smoothing) = 0;

  // Vocabulary-parallel cross-entropy (Megatron): the same loss and gradient as cross_entropy when the logits'
  // columns are split across R ranks, without any rank holding all of them. Each rank computes per-row partials
  // of its columns, the ranks all-gather them (R·N·4 numbers instead of N·Vp logits), and each finishes the loss
  // and its own columns' gradient (parallel/tensor_parallel.h: vocab_parallel_cross_entropy runs the three).
  //
  // Step 1. logits_local [N, Vr] holds the global columns [vocab_begin, vocab_begin + Vr); only global columns
  // < vocab are classes (the rest is padding). targets I32 [N] in [-1, vocab), -1 ignores the row.
  // partials [N, 4] is written, per row over this rank's class columns c:
  //   [0] m = max_c z_c (-inf when this rank holds no class column), [1] s = Σ_c exp(z_c - m) (0 then),
  //   [2] the target's logit z_target if vocab_begin <= target < vocab_begin + Vr, else 0,  [3] Σ_c z_c.
  // An ignored row gets (-inf, 0, 0, 0). partials is f32 (CUDA); the CPU also takes f64.
  virtual void cross_entropy_partials(Tensor& partials, const Tensor& logits_local, const Tensor& targets,
                                      int64_t vocab_begin, int64_t vocab) = 0;
  // Step 3. gathered [R, N, 4] holds every rank's partials (rank order does not matter), with the partials'
  // dtype. Per row: M = max_r m_r, S = Σ_r s_r·exp(m_r - M), z_target = Σ_r [2], Σz = Σ_r [3], and
  //   loss = M + log S - (1-ε)·z_target - (ε/vocab)·Σz   (cross_entropy's loss; 0 for an ignored row),
  // written to losses [N] (the partials' dtype; the same on every rank, which combine the same numbers).
  // If dlogits_local is defined it is written with dloss·(exp(z_c - M)/S - (1-ε)·[c = target] - ε/vocab) for
  // this rank's class columns, 0 for its padding columns and for ignored rows; it may alias logits_local.
  // With R = 1 and vocab_begin = 0 the pair computes cross_entropy.
  virtual void cross_entropy_from_partials(Tensor& losses, Tensor& dlogits_local, const Tensor& gathered,
                                           const Tensor& logits_local, const Tensor& targets, int64_t vocab_begin,
                                           int64_t vocab, double dloss, double label_smoothing) = 0;
  // total[0] += (weight · Σ x) / count, in that order, with Σ x over every element of x (losses, f32 or f64)
  // summed in f64 (the CPU in index order; CUDA in a fixed order, deterministic). total is F64 with one element
  // on device(). In stream order: a training step's loss stays on the device until the step's end.
  virtual void accumulate_sum(Tensor& total, const Tensor& x, double weight, double count) = 0;

  // ---- optimizer ----
  // total[0] += Σ x² over all elements of all tensors (accumulated in at least f32 per block, in f64 across
  // them; f64 throughout on the CPU), in stream order: nothing is read on the host. total is F64 with one
  // element (e.g. a view into a step-statistics tensor) on device(); no tensors adds nothing.
  virtual void accumulate_sum_squares(Tensor& total, const std::vector<Tensor>& tensors) = 0;
  // The same Σ x² returned to the host (waits for the queued work: tests, benchmarks, not a training step).
  double sum_squares(const std::vector<Tensor>& tensors);
  // AdamW with decoupled weight decay on one contiguous tensor:
  //   g = grad · grad_scale; m = β1 m + (1-β1) g; v = β2 v + (1-β2) g²
  //   param -= lr · ( m/(1-β1^step) / (sqrt(v/(1-β2^step)) + eps) + weight_decay · param )
  // param, m, v are f32 (f64 allowed on the CPU); grad may be lower precision. If compute_copy is defined
  // it receives param converted to its dtype (bf16/f16 weights used by the forward).
  virtual void adamw_update(Tensor& param, Tensor& m, Tensor& v, const Tensor& grad, Tensor& compute_copy,
                            const AdamWHyper& hp, double weight_decay) = 0;

  // ---- finiteness (checkpoint safety: trainer/trainer.cc checks the state before writing a checkpoint) ----
  // The number of NaN and ±Inf elements over all `tensors` (float dtypes; CPU: f32, f64, bf16, f16; CUDA: f32,
  // bf16, f16; any sizes, 0 included), counted where the tensors live (CUDA: one kernel over the whole list;
  // only the count crosses to the host). Blocks until the count is known.
  virtual int64_t count_nonfinite(const std::vector<Tensor>& tensors) = 0;
  // ---- end of finiteness ----

  // ==== structural pruning (trainer/pruning) ====
  // Per-position dot products along dimension `axis` of two tensors of one shape: with both viewed as
  // [outer, D, inner] (D = shape[axis], outer the product of the dimensions before it, inner of those after),
  //   out[i] = Σ_{o < outer, n < inner} a[o, i, n]·b[o, i, n]   for i < D   (written).
  // Saliency takes a = weight, b = its gradient (Σ g·w per row or column); weight magnitude a = b = weight.
  // a and b share one float dtype; out is [D]. CPU: a, b f32 or f64, out f32 or f64, summed in double.
  // CUDA: a, b f32, bf16 or f16, out f32, summed in f32 in a fixed order (deterministic).
  virtual void dot_along_axis(Tensor& out, const Tensor& a, const Tensor& b, int axis) = 0;

  // Pruning masks in the form a structure map deletes: positions along one dimension of one parameter at a
  // time. Each entry of `dims` views the elements [offset, offset + numel) of x as [outer, size, inner] and
  //   x[offset + (o·size + c)·inner + n] = 0   wherever keep[flags_at + c] == 0
  // (bitwise: +0 in every float dtype); every other element of x is unchanged. Entries may cover the same
  // elements (a parameter with deleted positions along two dimensions): an element any entry deletes is zeroed.
  // keep is I32 (0 or 1) on this backend's device; x any float dtype it stores (a parameter, gradient or moment
  // arena). Only the flags live on the device (a few values per deleted dimension, not one per parameter), and
  // the work is one pass over the covered elements, writing only the deleted ones. An entry covers at most
  // 2^31 − 1 elements (one parameter).
  virtual void zero_deleted(Tensor& x, const std::vector<DimensionMask>& dims, const Tensor& keep) = 0;

  // Knowledge distillation (Hinton et al. 2015) per row of student and teacher logits [N, Vp] whose first
  // `classes` columns are classes (the rest is padding). With temperature τ, p = softmax(teacher/τ) and
  // q = softmax(student/τ) over the classes:
  //   losses[n] = τ²·KL(p ‖ q) = τ²·Σ_c p_c (log p_c − log q_c)      (written, [N])
  //   dstudent[n, c] = dloss·τ·(q_c − p_c) for c < classes, 0 for padding   (= dloss·∂losses[n]/∂student[n, c])
  // The τ² keeps the gradient's scale independent of τ. dstudent may be undefined (losses only) and may alias
  // student or teacher (each element is read before its gradient is written). The hard-label loss is
  // cross_entropy's, called separately (its dloss carries the 1 − α weight).
  // CPU: f32/f64 logits, losses f32 or f64. CUDA: logits f32, bf16 or f16 (one dtype), losses f32.
  virtual void distillation_loss(Tensor& losses, Tensor& dstudent, const Tensor& student, const Tensor& teacher,
                                 int64_t classes, double temperature, double dloss) = 0;
  // ==== end structural pruning ====
};

// A backend for `device`. CUDA throws loom::Error when the build has no CUDA or no GPU is present.
std::unique_ptr<Backend> make_backend(Device device);
// True when this build has the CUDA backend and a GPU is visible.
bool cuda_available();

}  // namespace loom
