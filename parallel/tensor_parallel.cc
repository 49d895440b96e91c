#include "parallel/tensor_parallel.h"

#include <algorithm>

namespace loom {
namespace {

// The group when communication is needed, else nullptr (no context, or a group of one).
Communicator* group_of(const TensorParallelContext* tp) { return tp && tp->active() ? tp->group : nullptr; }

// Rows per rank of an [N, C] tensor split across R ranks (`full_numel` elements, `part_numel` per rank).
void check_split(const char* op, const Communicator& g, const Tensor& full, const Tensor& part) {
  LOOM_CHECK(full.numel() == part.numel() * g.size(), op, ": the full tensor ", full.str(), " must hold ", g.size(),
             " rank parts of ", part.str(), " (token rows must divide by the tensor-parallel size)");
}

// Enqueues `op` on g's stream after the backend's queued work, bracketed in the context's timeline; `exposed`
// says whether the computation waits for all of it.
template <typename F>
void enqueue_timed(Backend& be, const TensorParallelContext* tp, Communicator& g, bool exposed, F&& op) {
  g.wait_for_stream(be.native_stream());
  if (tp->timeline) tp->timeline->begin(g);
  op();
  if (tp->timeline) tp->timeline->end(g, exposed);
}

// A boundary the computation waits at: the backend's stream continues only after the operation.
template <typename F>
void communicate(Backend& be, const TensorParallelContext* tp, Communicator& g, F&& op) {
  enqueue_timed(be, tp, g, /*exposed=*/true, op);
  g.make_stream_wait(be.native_stream());
}

// An operation that overlaps the computation queued next (finish_overlapped() closes the stretch). A host
// communicator's operation is complete on return, so there the computation did wait for all of it.
template <typename F>
void start_overlapped(Backend& be, const TensorParallelContext* tp, Communicator& g, F&& op) {
  enqueue_timed(be, tp, g, /*exposed=*/g.stream() == nullptr, op);
}

// The overlapping computation has been queued: later backend work waits for the communication, and the
// timeline counts as exposed only what the communication took beyond the computation.
void finish_overlapped(Backend& be, const TensorParallelContext* tp, Communicator& g) {
  const bool timed = tp->timeline && g.stream();
  if (timed) tp->timeline->mark_compute_end();
  g.make_stream_wait(be.native_stream());
  if (timed) tp->timeline->mark_overlap_end(g);
}

}  // namespace

void all_reduce_over_tensor_group(Backend& be, const TensorParallelContext* tp, Tensor& x) {
  Communicator* g = group_of(tp);
  if (!g) return;
  communicate(be, tp, *g, [&] { g->all_reduce(x, ReduceOp::Sum); });
}

void gather_from_sequence_region_forward(Backend& be, const TensorParallelContext* tp, Tensor& full,
                                         const Tensor& part) {
  Communicator* g = group_of(tp);
  if (!g) {
    full.copy_from(part);
    return;
  }
  check_split("gather_from_sequence_region", *g, full, part);
  communicate(be, tp, *g, [&] { g->all_gather(full, part); });
}

void gather_from_sequence_region_backward(Backend& be, const TensorParallelContext* tp, Tensor& dpart,
                                          const Tensor& dfull, bool replicated_consumer) {
  Communicator* g = group_of(tp);
  if (!g) {
    dpart.copy_from(dfull);
    return;
  }
  check_split("gather_from_sequence_region backward", *g, dfull, dpart);
  if (replicated_consumer) {
    // A copy on the legacy default stream: ordered with the backend's blocking stream both ways.
    dpart.copy_from(dfull.slice_flat(g->rank() * dpart.numel(), {dpart.numel()}));
    return;
  }
  communicate(be, tp, *g, [&] { g->reduce_scatter(dpart, dfull, ReduceOp::Sum); });
}

void reduce_scatter_to_sequence_region_forward(Backend& be, const TensorParallelContext* tp, Tensor& part,
                                               const Tensor& full) {
  Communicator* g = group_of(tp);
  if (!g) {
    part.copy_from(full);
    return;
  }
  check_split("reduce_scatter_to_sequence_region", *g, full, part);
  communicate(be, tp, *g, [&] { g->reduce_scatter(part, full, ReduceOp::Sum); });
}

void reduce_scatter_to_sequence_region_backward(Backend& be, const TensorParallelContext* tp, Tensor& dfull,
                                                const Tensor& dpart) {
  gather_from_sequence_region_forward(be, tp, dfull, dpart);
}

void scatter_to_sequence_region_forward(Backend& be, const TensorParallelContext* tp, Tensor& part,
                                        const Tensor& full) {
  gather_from_sequence_region_backward(be, tp, part, full, /*replicated_consumer=*/true);
}

void scatter_to_sequence_region_backward(Backend& be, const TensorParallelContext* tp, Tensor& dfull,
                                         const Tensor& dpart) {
  gather_from_sequence_region_forward(be, tp, dfull, dpart);
}

void gather_vocab_columns(Backend& be, const TensorParallelContext* tp, Tensor& full, const Tensor& local) {
  Communicator* g = group_of(tp);
  if (!g) {
    full.copy_from(local);
    return;
  }
  const int R = g->size();
  const int64_t N = local.dim(0), Vr = local.dim(1);
  LOOM_CHECK(full.numel() == N * Vr * R, "gather_vocab_columns: ", full.str(), " cannot hold ", R, " parts of ",
             local.str());
  // The all-gather stacks the ranks' [N, V/R] blocks; copy_tokens interleaves them into rows of [R, V/R].
  Tensor stacked = Tensor::empty({R * N * Vr}, full.dtype(), full.device());
  communicate(be, tp, *g, [&] { g->all_gather(stacked, local); });
  Tensor dst = full.view({N, R, Vr});
  for (int r = 0; r < R; ++r)
    be.copy_tokens(dst, r, stacked.slice_flat(r * N * Vr, {N, 1, Vr}), 0, 1, /*accumulate=*/false);
}

void vocab_parallel_cross_entropy(Backend& be, const TensorParallelContext* tp, Tensor& losses, Tensor& dlogits_local,
                                  const Tensor& logits_local, const Tensor& targets, int64_t vocab, double dloss,
                                  double label_smoothing) {
  Communicator* g = group_of(tp);
  if (!g) {
    be.cross_entropy(losses, dlogits_local, logits_local, targets, vocab, dloss, label_smoothing);
    return;
  }
  LOOM_CHECK(logits_local.ndim() >= 1 && logits_local.dim(-1) > 0, "vocab_parallel_cross_entropy: logits_local ",
             logits_local.str(), " must be [N, Vp/R]");
  const int64_t Vr = logits_local.dim(-1), N = logits_local.numel() / Vr;
  const int64_t vocab_begin = g->rank() * Vr;
  // The partials take the losses' dtype: f32, or f64 in float64 gradient checks on the CPU.
  Tensor partials = Tensor::empty({N, 4}, losses.dtype(), logits_local.device());
  Tensor gathered = Tensor::empty({g->size(), N, 4}, losses.dtype(), logits_local.device());
  be.cross_entropy_partials(partials, logits_local, targets, vocab_begin, vocab);
  communicate(be, tp, *g, [&] { g->all_gather(gathered, partials); });
  be.cross_entropy_from_partials(losses, dlogits_local, gathered, logits_local, targets, vocab_begin, vocab, dloss,
                                 label_smoothing);
}

void ColumnParallelLinear::forward(Backend& be, Tensor& y, const Tensor& x, const Tensor& w, const Tensor& b) {
  be.matmul_forward(y, x, w, b);
}

void ColumnParallelLinear::backward(Backend& be, Tensor& dx, Tensor& dw, Tensor& db, const Tensor& dy,
                                    const Tensor& x, const Tensor& w) {
  be.matmul_backward(dx, dw, db, dy, x, w);
}

void ColumnParallelLinear::backward_overlapped(Backend& be, const TensorParallelContext* tp, Tensor& dx_full,
                                               Tensor& dx_part, Tensor& dw, Tensor& db, const Tensor& dy,
                                               const Tensor& x, const Tensor& w) {
  Communicator* g = group_of(tp);
  if (!g) {
    be.matmul_backward(dx_full, dw, db, dy, x, w);
    if (dx_part.defined()) dx_part.copy_from(dx_full);
    return;
  }
  Tensor none;
  be.matmul_backward(dx_full, none, none, dy, x, w);
  if (dx_part.defined()) {
    check_split("gather_from_sequence_region backward", *g, dx_full, dx_part);
    start_overlapped(be, tp, *g, [&] { g->reduce_scatter(dx_part, dx_full, ReduceOp::Sum); });
  } else {
    start_overlapped(be, tp, *g, [&] { g->all_reduce(dx_full, ReduceOp::Sum); });
  }
  be.matmul_backward(none, dw, db, dy, x, w);
  finish_overlapped(be, tp, *g);
}

void RowParallelLinear::forward(Backend& be, const TensorParallelContext* tp, Tensor& y, const Tensor& x,
                                const Tensor& w, const Tensor& b) {
  be.matmul_forward(y, x, w, tensor_rank(tp) == 0 ? b : Tensor());
}

void RowParallelLinear::forward_reduced(Backend& be, const TensorParallelContext* tp, Tensor& y, const Tensor& x,
                                        const Tensor& w, const Tensor& b) {
  Communicator* g = group_of(tp);
  if (!g) {
    forward(be, tp, y, x, w, b);
    return;
  }
  LOOM_CHECK(!tp->sequence_parallel(), "RowParallelLinear::forward_reduced: the sequence-parallel exit scatters "
             "rows by rank; use forward() and reduce_scatter_to_sequence_region_forward()");
  LOOM_CHECK(tp->tiles >= 1, "parallel.comm_tiles must be at least 1, got ", tp->tiles);
  const int64_t O = w.dim(0), I = w.dim(1), N = y.numel() / O;
  LOOM_CHECK(y.numel() == N * O && x.numel() == N * I, "RowParallelLinear::forward_reduced: y ", y.str(), " and x ",
             x.str(), " must hold the same rows of ", O, " and ", I);
  const int64_t tile = (N + tp->tiles - 1) / tp->tiles;
  const Tensor bias = tensor_rank(tp) == 0 ? b : Tensor();
  for (int64_t r0 = 0; r0 < N; r0 += tile) {
    const int64_t rows = std::min(tile, N - r0);
    Tensor y_rows = y.slice_flat(r0 * O, {rows, O});
    be.matmul_forward(y_rows, x.slice_flat(r0 * I, {rows, I}), w, bias);
    start_overlapped(be, tp, *g, [&] { g->all_reduce(y_rows, ReduceOp::Sum); });
  }
  finish_overlapped(be, tp, *g);
}

void RowParallelLinear::forward_reduced_residual(Backend& be, const TensorParallelContext* tp, Tensor& y,
                                                 const Tensor& x, const Tensor& w, const Tensor& b,
                                                 const Tensor& residual) {
  if (!group_of(tp)) {
    be.matmul_residual_forward(y, x, w, b, residual);
    return;
  }
  forward_reduced(be, tp, y, x, w, b);
  be.add(y, residual, y);
}

void RowParallelLinear::backward(Backend& be, Tensor& dx, Tensor& dw, Tensor& db, const Tensor& dy, const Tensor& x,
                                 const Tensor& w) {
  be.matmul_backward(dx, dw, db, dy, x, w);
}

void VocabParallelEmbedding::forward(Backend& be, const TensorParallelContext* tp, Tensor& out, Tensor& table,
                                     const Tensor& ids, const Tensor& w) {
  Communicator* g = group_of(tp);
  if (!g) {
    be.embedding_forward(out, ids, w);
    return;
  }
  LOOM_CHECK(table.numel() == w.numel() * g->size(), "VocabParallelEmbedding: table ", table.str(),
             " cannot hold ", g->size(), " shards of ", w.str());
  communicate(be, tp, *g, [&] { g->all_gather(table, w); });
  be.embedding_forward(out, ids, table);
}

void VocabParallelEmbedding::backward(Backend& be, const TensorParallelContext* tp, Tensor& dw, Tensor& dtable,
                                      const Tensor& dout, const Tensor& ids) {
  Communicator* g = group_of(tp);
  if (!g) {
    be.embedding_backward(dw, dout, ids);
    return;
  }
  be.zero(dtable);
  be.embedding_backward(dtable, dout, ids);
  be.accumulate(dw, dtable.slice_flat(g->rank() * dw.numel(), dw.shape()));
}

}  // namespace loom
