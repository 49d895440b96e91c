// Data-parallel gradient synchronisation and the layout-aware pieces of an optimizer step: gradient buckets
// reduced while the backward runs, the ZeRO-1 reduce-scatter, the global gradient norm under tensor
// parallelism, and conversions between this rank's parameter arena and full, layout-independent tensors.
//
// Buckets: the parameter arena is cut into contiguous buckets of about parallel.bucket_mb, walking the entries
// in REVERSE arena order (the backward produces the last blocks' gradients first). The model announces
// finished gradients through Model::set_grad_ready_hook(); a bucket whose parameters are all final starts a
// non-blocking all-reduce (Average over the data group) at once, so communication overlaps the rest of the
// backward; finish() waits for all of them before the optimizer. Only the last micro-step of an accumulation
// reduces (arm(true)); earlier micro-steps just accumulate locally.
//
// On NCCL a bucket's start makes the communicator's stream wait for the backend's queued work
// (Communicator::wait_for_stream) instead of synchronising the host, so the backward keeps running on the GPU
// while earlier buckets are reduced on the communicator's stream; finish() waits for the reductions on the
// host (a request must be complete before it is dropped). The gradient norm stays on the device
// (reduce_step_stats), where AdamW reads it. With a CommTimeline each bucket's time is recorded, and the
// part after the backward's end as exposed communication.
//
// ZeRO-1: a complete bucket starts a non-blocking reduce-scatter instead (the bucket padded to a multiple of
// the data size D, so data rank d receives the averaged gradients of the bucket's d-th 1/D); the optimizer
// updates only this rank's pieces of every bucket (owned_ranges(), moments sized to them) and
// all_gather_parameters() rebuilds the full arena bucket by bucket.
//
// Thread-safety: driven by the training thread, like the model. Every call is collective over the groups it
// uses (data group, tensor group) and must be made in the same order on every rank.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/safetensors.h"
#include "kernels/backend.h"
#include "parallel/communicator.h"
#include "parallel/tensor_parallel.h"
#include "trainer/optimizer.h"
#include "trainer/parameters.h"

namespace loom {

class GradientSync {
 public:
  // `data` (not owned, may be null = one data rank) and `tp` (may be null) must outlive this object.
  // bucket_bytes > 0. Throws loom::Error on a non-positive bucket size.
  GradientSync(ParameterStore& params, Backend& backend, Communicator* data, const TensorParallelContext* tp,
               int64_t bucket_bytes, bool zero1);

  // Called at each micro-step's start: `reduce` is true on the last micro-step of a step (the one whose
  // gradients are complete), which then launches bucket reductions from on_grads_ready().
  void arm(bool reduce);
  // Where bucket reductions record their time (optional; not owned, must outlive this object).
  void set_timeline(CommTimeline* timeline) { timeline_ = timeline; }
  // The model's grad-ready hook (see Model::set_grad_ready_hook): "" means every remaining parameter.
  void on_grads_ready(const std::string& prefix);
  // Completes the step's reduction: launches what is left, waits for every request, then sums the
  // sequence-parallel partial gradients over the tensor group. Afterwards grads() (or zero_shard_grads() with
  // ZeRO-1) holds gradients averaged over the global batch.
  void finish();

  // Completes a step's statistics (kernels/step_stats.h) on the device, without a host read: writes the
  // squared gradient norm's two parts (each sharded parameter's shards counted once across the tensor group,
  // each replicated parameter once; over the data group with ZeRO-1) and sums the loss that the micro-steps
  // accumulated in stats[kStepLoss] over the data group. Collective (data and tensor groups); the results are
  // identical on every rank and ordered before the backend's later work (NCCL streams wait on each other).
  void reduce_step_stats(Tensor& stats);
  // Global L2 norm of the averaged gradients (as reduce_step_stats counts it), read on the host (waits).
  double grad_norm();

  bool zero1() const { return zero1_; }
  // The arena ranges this rank's optimizer updates, with their offsets into shard_size()-element buffers
  // (moments, shard_grads()). Without ZeRO-1: the whole arena at offset 0.
  const std::vector<ArenaRange>& owned_ranges() const { return owned_; }
  int64_t shard_size() const { return shard_size_; }
  // ZeRO-1: the averaged gradients of owned_ranges(), at their offsets (valid after finish()).
  const Tensor& shard_grads() const { return shard_grads_; }
  // ZeRO-1: every data rank's updated master pieces -> the whole master arena (and its compute copy).
  void all_gather_parameters();
  // ZeRO-1: an arena-sized tensor from every data rank's shard_size() buffer (e.g. optimizer moments).
  Tensor all_gather_shards(const Tensor& shard);

  // Number of buckets, and how many of them have started reducing in this step (for tests and logs).
  size_t bucket_count() const { return buckets_.size(); }
  size_t started_buckets() const;

 private:
  struct Bucket {
    int64_t begin = 0, end = 0;  // arena elements
    int entries = 0, ready = 0;
    bool started = false;
    // ZeRO-1: each data rank's piece has `piece` elements (the last ones padded); this rank's sits at `offset`
    // of the shard buffers; `staging` is the padded copy of the bucket's gradients that is reduce-scattered.
    int64_t piece = 0, offset = 0;
    Tensor staging;
  };
  void start(Bucket& b);
  // Makes the data group's stream wait for `producer`'s queued work, then starts and keeps a reduction (timed
  // as overlapped communication).
  void start_reduction(GpuStream producer, const std::function<std::unique_ptr<CommRequest>()>& start);
  // Sums the sequence-parallel partial gradients of the parameters inside arena range [begin, end).
  void reduce_partial_over_tensor(int64_t begin, int64_t end);
  // Adds Σ g² of the sharded and of the replicated parameters' gradients in arena range [begin, begin + n),
  // held in `grads` from element 0, to the device scalars `sharded` and `replicated`.
  void add_squares_by_kind(const Tensor& grads, int64_t begin, int64_t n, Tensor& sharded, Tensor& replicated);

  ParameterStore& params_;
  Backend& backend_;
  Communicator* data_;
  const TensorParallelContext* tp_;
  bool zero1_;
  CommTimeline* timeline_ = nullptr;
  bool armed_ = false;
  std::vector<Bucket> buckets_;
  std::vector<int> bucket_of_entry_;  // by index into layout().entries()
  std::vector<bool> entry_ready_;
  std::vector<std::unique_ptr<CommRequest>> requests_;
  std::vector<ArenaRange> owned_;
  int64_t shard_size_ = 0;
  Tensor shard_grads_;
};

// Full tensors under the single-process names from this rank's arena tensor `arena` (weights or moments laid
// out like params' arena; any device), gathering tensor-parallel shards over tp's group (collective there).
// Names are `name_prefix` + parameter name. Returns CPU tensors in arena dtype.
NamedTensors full_tensors_from_arena(const ParameterLayout& layout, const Tensor& arena,
                                     const TensorParallelContext* tp, const std::string& name_prefix);
// The reverse: this rank's arena (host, `dtype`) from full tensors named `name_prefix` + parameter name. Every
// parameter must be present with its full shape and no other name may carry the prefix; loom::Error names
// `source` and the tensor otherwise.
Tensor arena_from_full_tensors(const ParameterLayout& layout, const NamedTensors& tensors,
                               const TensorParallelContext* tp, const std::string& name_prefix, DType dtype,
                               const std::string& source);

}  // namespace loom
