// Tensor (Megatron) and sequence parallelism: the communication at the edges of sharded regions, written as
// named operations with their forward and backward, and the layers named by what they shard.
//
// A tensor-parallel group of R ranks holds every transformer block split by attention heads and MLP neurons:
//
//   x ─ copy_to_tensor_region ─ ColumnParallelLinear (qkv, fc1: this rank's heads / neurons)
//     ─ local attention / GELU ─ RowParallelLinear (proj, fc2: partial sums) ─ reduce_from_tensor_region ─ y
//
// With sequence parallelism the token rows outside those regions (LayerNorms, residual adds) are split across
// the group too: rank r holds rows [r·N/R, (r+1)·N/R) of the N = B·T rows in [B, T] order (for B = 1 exactly a
// split along the sequence; token-wise operations do not care which rows a rank holds). Then the region's entry
// is gather_from_sequence_region and its exit reduce_scatter_to_sequence_region.
//
// Contract for every operation:
// - Collective over the context's group: every rank of the group calls the same operations in the same order
//   with the same sizes. With a null context (or a group of one) every operation is the identity / a copy, so
//   single-process code runs unchanged.
// - Tensors live on the backend's device, which must be the communicator's device; `full` tensors have N rows
//   and `part` tensors N / R rows of the same width (N must divide by R; loom::Error otherwise).
// - Ordering without host synchronisation: the communicator's stream waits for the backend's queued work
//   (Communicator::wait_for_stream) and the backend's stream for the communication (make_stream_wait), so the
//   GPU runs region boundaries in program order while the host keeps queueing (no-ops on the CPU with MPI,
//   where every call completes before it returns). Each operation's time is recorded in the context's
//   CommTimeline, when it has one, as exposed communication (the computation waits for it).
// - Errors throw loom::Error naming the operation; after one, the job should end (see communicator.h).
#pragma once
#include "kernels/backend.h"
#include "parallel/comm_timeline.h"
#include "parallel/communicator.h"

namespace loom {

// Which group a model's tensor-parallel regions use, and whether sequence parallelism is on. Not owned: the
// communicator must outlive every model built with the context.
struct TensorParallelContext {
  Communicator* group = nullptr;  // null: no tensor parallelism
  bool sequence = false;          // Megatron-SP (only meaningful with size() > 1)
  CommTimeline* timeline = nullptr;  // where region operations record their time (optional, not owned)
  int tiles = 1;                     // row tiles of RowParallelLinear::forward_reduced (parallel.comm_tiles)

  int size() const { return group ? group->size() : 1; }
  int rank() const { return group ? group->rank() : 0; }
  bool active() const { return size() > 1; }
  bool sequence_parallel() const { return sequence && active(); }
};

// Size 1 for a null context.
inline int tensor_size(const TensorParallelContext* tp) { return tp ? tp->size() : 1; }
inline int tensor_rank(const TensorParallelContext* tp) { return tp ? tp->rank() : 0; }
inline bool sequence_parallel(const TensorParallelContext* tp) { return tp && tp->sequence_parallel(); }

// ---- region boundaries (forward / backward pairs) ----

// Entry of a tensor region without sequence parallelism, copy_to_tensor_region. Forward: identity (the input is
// replicated). Backward: dx = Σ_ranks dx (each rank's partial gradient through its own shard), fused with the
// column-parallel layer's backward: ColumnParallelLinear::backward_overlapped.
//
// Exit of a tensor region without sequence parallelism, reduce_from_tensor_region. Forward: y = Σ_ranks y (the
// row-parallel layer's partial sums), fused with that layer: RowParallelLinear::forward_reduced. Backward:
// identity.

// Entry of a tensor region with sequence parallelism. Forward: full = concat_ranks(part) (all-gather).
// Backward: dpart = this rank's rows of Σ_ranks dfull (reduce-scatter), when the region's gradient is partial
// per rank (a column-parallel consumer); with a replicated consumer (`replicated_consumer`, e.g. ViT's final norm
// and head) every rank holds the whole gradient and dpart is simply its rows.
void gather_from_sequence_region_forward(Backend& be, const TensorParallelContext* tp, Tensor& full,
                                         const Tensor& part);
void gather_from_sequence_region_backward(Backend& be, const TensorParallelContext* tp, Tensor& dpart,
                                          const Tensor& dfull, bool replicated_consumer);

// Exit of a tensor region with sequence parallelism. Forward: part = this rank's rows of Σ_ranks full
// (reduce-scatter). Backward: dfull = concat_ranks(dpart) (all-gather).
void reduce_scatter_to_sequence_region_forward(Backend& be, const TensorParallelContext* tp, Tensor& part,
                                               const Tensor& full);
void reduce_scatter_to_sequence_region_backward(Backend& be, const TensorParallelContext* tp, Tensor& dfull,
                                                const Tensor& dpart);

// Entry of the sequence-parallel part of a model from replicated activations (after the embeddings).
// Forward: part = this rank's rows of full. Backward: dfull = concat_ranks(dpart) (all-gather).
void scatter_to_sequence_region_forward(Backend& be, const TensorParallelContext* tp, Tensor& part,
                                        const Tensor& full);
void scatter_to_sequence_region_backward(Backend& be, const TensorParallelContext* tp, Tensor& dfull,
                                         const Tensor& dpart);

// Σ over the tensor group, in place, for gradients each rank computed from its part of the tokens.
void all_reduce_over_tensor_group(Backend& be, const TensorParallelContext* tp, Tensor& x);

// Vocabulary-parallel logits: local [N, V/R] (this rank's vocabulary rows) -> full [N, V] on every rank. For
// the few rows a sampler needs; the loss uses vocab_parallel_cross_entropy, which never gathers the logits.
void gather_vocab_columns(Backend& be, const TensorParallelContext* tp, Tensor& full, const Tensor& local);

// Softmax cross-entropy over logits whose columns are split across the group (Megatron's vocabulary-parallel
// cross-entropy): logits_local [N, Vp/R] holds rank r's global columns [r·Vp/R, (r+1)·Vp/R) of the padded
// vocabulary, of which only columns < vocab are classes. Computes what Backend::cross_entropy computes on the
// full logits: losses [N] (f32; the CPU also takes f64; identical on every rank) and, if dlogits_local
// is defined, this rank's columns of dloss·(softmax - target distribution) (dlogits_local may alias
// logits_local). Each rank reduces its columns to per-row partials (Backend::cross_entropy_partials), the group
// all-gathers them (N·4 numbers per rank, in the losses' dtype), and each rank finishes with
// Backend::cross_entropy_from_partials.
// With a null context or a group of one it is Backend::cross_entropy.
void vocab_parallel_cross_entropy(Backend& be, const TensorParallelContext* tp, Tensor& losses, Tensor& dlogits_local,
                                  const Tensor& logits_local, const Tensor& targets, int64_t vocab, double dloss,
                                  double label_smoothing);

// ---- layers named by what they shard (weights [out, in] as in backend.h) ----

// y[N, O/R] = x[N, I] · W_rᵀ + b_r: this rank's output features (heads, neurons, vocabulary rows).
// The backward writes dx (partial: the caller sums it at the region entry) and accumulates dW_r, db_r.
struct ColumnParallelLinear {
  static void forward(Backend& be, Tensor& y, const Tensor& x, const Tensor& w, const Tensor& b);
  static void backward(Backend& be, Tensor& dx, Tensor& dw, Tensor& db, const Tensor& dy, const Tensor& x,
                       const Tensor& w);
  // The backward at a region entry, with the entry's reduction overlapped with the weight-gradient GEMM
  // (Megatron's asynchronous tensor-parallel all-reduce): dx_full = dy · W_r first; then, on the communicator's
  // stream, Σ_ranks dx_full in place (copy_to_tensor_region's backward; dx_part undefined) or this rank's rows of
  // it into dx_part (gather_from_sequence_region's backward under SP), while dW_r += dyᵀ x and db_r += Σ dy run
  // on the backend's. The result equals backward() followed by that region operation.
  static void backward_overlapped(Backend& be, const TensorParallelContext* tp, Tensor& dx_full, Tensor& dx_part,
                                  Tensor& dw, Tensor& db, const Tensor& dy, const Tensor& x, const Tensor& w);
};

// y[N, O] partial = x_r[N, I/R] · W_rᵀ (+ b on tensor rank 0 only, so the bias is added once when the partial
// sums are reduced). The backward gets the replicated dy: every rank computes the same db (the replicated bias
// stays identical everywhere) and its own dW_r and dx_r.
struct RowParallelLinear {
  static void forward(Backend& be, const TensorParallelContext* tp, Tensor& y, const Tensor& x, const Tensor& w,
                      const Tensor& b);
  // forward() and the region exit reduce_from_tensor_region (y = Σ_ranks y) tile by tile (Tiling-AllReduce): the
  // N token rows are cut into tp->tiles pieces; each piece's partial sums are all-reduced on the communicator's
  // stream as soon as its GEMM is queued, so the reduction of piece k overlaps the GEMM of piece k + 1. Without
  // sequence parallelism (whose exit scatters rows by rank instead).
  static void forward_reduced(Backend& be, const TensorParallelContext* tp, Tensor& y, const Tensor& x,
                              const Tensor& w, const Tensor& b);
  // y = residual + forward_reduced's y: the region exit joining the residual stream (residual like y, a distinct
  // buffer). Single-process, one GEMM that adds the residual (Backend::matmul_residual_forward); else the
  // reduced sum, then the add. Without sequence parallelism, as forward_reduced.
  static void forward_reduced_residual(Backend& be, const TensorParallelContext* tp, Tensor& y, const Tensor& x,
                                       const Tensor& w, const Tensor& b, const Tensor& residual);
  static void backward(Backend& be, Tensor& dx, Tensor& dw, Tensor& db, const Tensor& dy, const Tensor& x,
                       const Tensor& w);
};

// Token embedding whose table rows (the vocabulary, dimension 0) are split across the group.
// Forward: table = concat_ranks(w_r) into `table` [V, C] (a per-model scratch), then out[n] = table[ids[n]].
// Backward: dtable = Σ_n onehot(ids[n]) dout[n] into `dtable` (scratch [V, C]); dW_r += this rank's rows of it.
// dout is replicated, so no reduction is needed. (A masked local lookup plus an all-reduce would avoid the
// gathered table; the backend has no masked-lookup kernel yet.)
struct VocabParallelEmbedding {
  static void forward(Backend& be, const TensorParallelContext* tp, Tensor& out, Tensor& table, const Tensor& ids,
                      const Tensor& w);
  static void backward(Backend& be, const TensorParallelContext* tp, Tensor& dw, Tensor& dtable, const Tensor& dout,
                       const Tensor& ids);
};

}  // namespace loom
