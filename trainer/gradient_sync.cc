#include "trainer/gradient_sync.h"

#include <algorithm>
#include <cmath>
#include <unordered_set>

#include "parallel/host_collectives.h"
#include "kernels/step_stats.h"

namespace loom {
namespace {

bool has_prefix(const std::string& name, const std::string& prefix) {
  return name.compare(0, prefix.size(), prefix) == 0;
}

}  // namespace

GradientSync::GradientSync(ParameterStore& params, Backend& backend, Communicator* data,
                           const TensorParallelContext* tp, int64_t bucket_bytes, bool zero1)
    : params_(params), backend_(backend), data_(data && data->size() > 1 ? data : nullptr), tp_(tp), zero1_(zero1) {
  LOOM_CHECK(bucket_bytes > 0, "parallel.bucket_mb must be positive");
  const auto& entries = params.layout().entries();
  const int64_t elem = static_cast<int64_t>(dtype_size(params.grads().dtype()));
  bucket_of_entry_.assign(entries.size(), -1);
  entry_ready_.assign(entries.size(), false);
  // Reverse arena order: the first bucket ends at the arena's end; each holds whole parameters.
  for (size_t k = entries.size(); k-- > 0;) {
    if (buckets_.empty() || (buckets_.back().end - buckets_.back().begin) * elem >= bucket_bytes) {
      Bucket b;
      b.begin = b.end = entries[k].offset + entries[k].numel;
      buckets_.push_back(b);
    }
    Bucket& b = buckets_.back();
    b.begin = entries[k].offset;
    ++b.entries;
    bucket_of_entry_[k] = static_cast<int>(buckets_.size() - 1);
  }
  const int64_t total = params.layout().total();
  if (!zero1_) {
    owned_.push_back({0, total, 0});
    shard_size_ = total;
    return;
  }
  const int D = data_ ? data_->size() : 1, d = data_ ? data_->rank() : 0;
  for (Bucket& bucket : buckets_) {
    const int64_t n = bucket.end - bucket.begin;
    bucket.piece = (n + D - 1) / D;
    bucket.offset = shard_size_;
    shard_size_ += bucket.piece;
    bucket.staging = Tensor::zeros({bucket.piece * D}, params.grads().dtype(), backend.device());
    const int64_t lo = std::min(n, d * bucket.piece), hi = std::min(n, lo + bucket.piece);
    owned_.push_back({bucket.begin + lo, hi - lo, bucket.offset});
  }
  shard_grads_ = Tensor::zeros({shard_size_}, params.grads().dtype(), backend.device());
}

void GradientSync::arm(bool reduce) {
  armed_ = reduce;
  if (!reduce) return;
  std::fill(entry_ready_.begin(), entry_ready_.end(), false);
  for (Bucket& b : buckets_) {
    b.ready = 0;
    b.started = false;
  }
}

void GradientSync::start(Bucket& b) {
  b.started = true;
  Tensor slice = params_.grads().slice_flat(b.begin, {b.end - b.begin});
  if (!zero1_) {
    // The bucket's gradients are queued on the backend's stream; the reduction waits for them there, not on
    // the host, so the backward keeps running.
    if (data_)
      start_reduction(backend_.native_stream(), [&] { return data_->start_all_reduce(slice, ReduceOp::Average); });
    return;
  }
  // Sequence-parallel partial gradients must be summed over the tensor group before leaving the bucket.
  reduce_partial_over_tensor(b.begin, b.end);
  b.staging.slice_flat(0, {slice.numel()}).copy_from(slice);
  Tensor mine = shard_grads_.slice_flat(b.offset, {b.piece});
  if (!data_) {
    mine.copy_from(b.staging);
    return;
  }
  // The staging copy runs on the legacy default stream (after the backend's queued work): wait for that.
  start_reduction(nullptr, [&] { return data_->start_reduce_scatter(mine, b.staging, ReduceOp::Average); });
}

void GradientSync::start_reduction(GpuStream producer, const std::function<std::unique_ptr<CommRequest>()>& start) {
  data_->wait_for_stream(producer);
  if (timeline_) timeline_->begin(*data_);
  requests_.push_back(start());
  if (timeline_) timeline_->end(*data_, /*exposed=*/false);
}

void GradientSync::reduce_partial_over_tensor(int64_t begin, int64_t end) {
  if (!tp_ || !tp_->active()) return;
  for (const auto& e : params_.layout().entries())
    if (e.spec.sharding.grad_partial_over_tensor && e.offset >= begin && e.offset + e.numel <= end) {
      Tensor g = params_.grads().slice_flat(e.offset, {e.numel});
      all_reduce_over_tensor_group(backend_, tp_, g);
    }
}

void GradientSync::on_grads_ready(const std::string& prefix) {
  if (!armed_) return;
  const auto& entries = params_.layout().entries();
  for (size_t k = 0; k < entries.size(); ++k) {
    if (entry_ready_[k] || !has_prefix(entries[k].spec.name, prefix)) continue;
    entry_ready_[k] = true;
    Bucket& b = buckets_[bucket_of_entry_[k]];
    if (++b.ready == b.entries && !b.started) start(b);
  }
}

size_t GradientSync::started_buckets() const {
  return static_cast<size_t>(
      std::count_if(buckets_.begin(), buckets_.end(), [](const Bucket& b) { return b.started; }));
}

void GradientSync::finish() {
  on_grads_ready("");
  const bool timed = timeline_ && !requests_.empty();  // requests exist only with a data group
  if (timed) timeline_->mark_compute_end();
  for (auto& r : requests_) r->wait();
  if (data_) data_->synchronize();
  if (timed) timeline_->mark_overlap_end(*data_);
  requests_.clear();
  armed_ = false;
  // Sequence parallelism: LayerNorm gradients from this rank's token rows only; sum over the tensor group
  // (ZeRO-1 did it per bucket before the reduce-scatter).
  if (!zero1_) reduce_partial_over_tensor(0, params_.layout().total());
}

void GradientSync::add_squares_by_kind(const Tensor& grads, int64_t begin, int64_t n, Tensor& sharded,
                                       Tensor& replicated) {
  const int64_t end = begin + n;
  std::vector<Tensor> sharded_parts, replicated_parts;
  for (const auto& e : params_.layout().entries()) {
    const int64_t lo = std::max(begin, e.offset), hi = std::min(end, e.offset + e.numel);
    if (lo >= hi) continue;
    Tensor part = grads.slice_flat(lo - begin, {hi - lo});
    (e.spec.sharding.sharded() ? sharded_parts : replicated_parts).push_back(part);
  }
  backend_.accumulate_sum_squares(sharded, sharded_parts);
  backend_.accumulate_sum_squares(replicated, replicated_parts);
}

void GradientSync::reduce_step_stats(Tensor& stats) {
  LOOM_CHECK(stats.dtype() == DType::F64 && stats.numel() == kStepStatsSize && stats.device() == backend_.device(),
             "reduce_step_stats: ", stats.str(), " must be f64 [", static_cast<int>(kStepStatsSize), "] on ",
             backend_.device().str());
  Tensor squares = stats.slice_flat(kStepSquaresSharded, {2});
  Tensor sharded = stats.slice_flat(kStepSquaresSharded, {1}), replicated = stats.slice_flat(kStepSquaresReplicated, {1});
  backend_.zero(squares);
  for (const ArenaRange& r : owned_) {
    const Tensor& g = zero1_ ? shard_grads_.slice_flat(r.offset, {r.length}) : params_.grads();
    add_squares_by_kind(g, r.begin, r.length, sharded, replicated);
  }
  if (data_) {
    // The loss is summed over the data ranks; with ZeRO-1 each data rank also holds one shard's squares.
    Tensor summed = zero1_ ? stats : stats.slice_flat(kStepLoss, {1});
    data_->wait_for_stream(backend_.native_stream());
    data_->all_reduce(summed, ReduceOp::Sum);
    data_->make_stream_wait(backend_.native_stream());
  }
  // Replicated parameters are equal on every tensor rank: sum only the sharded part over the group.
  if (tp_ && tp_->active()) all_reduce_over_tensor_group(backend_, tp_, sharded);
}

double GradientSync::grad_norm() {
  Tensor stats = Tensor::empty({kStepStatsSize}, DType::F64, backend_.device());
  backend_.zero(stats);
  reduce_step_stats(stats);
  return step_grad_norm(backend_.synchronize_and_read(stats).data());
}

Tensor GradientSync::all_gather_shards(const Tensor& shard) {
  LOOM_CHECK(zero1_ && shard.numel() == shard_size_, "all_gather_shards: ", shard.str(), " is not a ZeRO-1 shard of ",
             shard_size_, " elements");
  const int D = data_ ? data_->size() : 1;
  Tensor out = Tensor::empty({params_.layout().total()}, shard.dtype(), shard.device());
  // All buckets are gathered first (the shard was written by backend kernels or legacy-stream copies: the
  // communicator waits for both), then copied out once the communicator's stream is done.
  if (data_) data_->wait_for_stream(nullptr);
  std::vector<Tensor> gathered;
  for (const Bucket& b : buckets_) {
    gathered.push_back(Tensor::empty({b.piece * D}, shard.dtype(), shard.device()));
    const Tensor mine = shard.slice_flat(b.offset, {b.piece});
    if (data_)
      data_->all_gather(gathered.back(), mine);
    else
      gathered.back().copy_from(mine);
  }
  if (data_) data_->synchronize();
  for (size_t i = 0; i < buckets_.size(); ++i) {
    const Bucket& b = buckets_[i];
    out.slice_flat(b.begin, {b.end - b.begin}).copy_from(gathered[i].slice_flat(0, {b.end - b.begin}));
  }
  return out;
}

void GradientSync::all_gather_parameters() {
  if (!zero1_) return;
  backend_.synchronize();
  Tensor& master = params_.master();
  Tensor shard = Tensor::zeros({shard_size_}, master.dtype(), master.device());
  for (const ArenaRange& r : owned_)
    if (r.length > 0) shard.slice_flat(r.offset, {r.length}).copy_from(master.slice_flat(r.begin, {r.length}));
  master.copy_from(all_gather_shards(shard));
  params_.sync_compute_from_master();
}

NamedTensors full_tensors_from_arena(const ParameterLayout& layout, const Tensor& arena,
                                     const TensorParallelContext* tp, const std::string& name_prefix) {
  const Tensor host = arena.device().is_cpu() ? arena : arena.to(Device::cpu());
  const int R = tensor_size(tp);
  NamedTensors out;
  for (const auto& e : layout.entries()) {
    Tensor local = Tensor::empty(e.spec.shape, host.dtype());
    local.copy_from(host.slice_flat(e.offset, e.spec.shape));
    if (e.spec.sharding.sharded() && R > 1) {
      Tensor parts = Tensor::empty({e.numel * R}, host.dtype());
      all_gather_host(*tp->group, parts, local);
      local = full_from_shards(e.spec, parts, R);
    }
    out.emplace_back(name_prefix + e.spec.name, local);
  }
  return out;
}

Tensor arena_from_full_tensors(const ParameterLayout& layout, const NamedTensors& tensors,
                               const TensorParallelContext* tp, const std::string& name_prefix, DType dtype,
                               const std::string& source) {
  Tensor arena = Tensor::empty({layout.total()}, dtype);
  std::unordered_set<std::string> seen;
  for (const auto& [full_name, t] : tensors) {
    if (!has_prefix(full_name, name_prefix)) continue;
    const std::string name = full_name.substr(name_prefix.size());
    if (!layout.contains(name)) fail(source, ": unexpected tensor '", full_name, "' (the model has no such parameter)");
    const ParamEntry& e = layout.entry(name);
    const Shape want = full_shape(e.spec, tensor_size(tp));
    if (t.shape() != want)
      fail(source, ": tensor '", full_name, "' has shape ", shape_str(t.shape()), " but the model expects ",
           shape_str(want));
    const Tensor host = t.device().is_cpu() ? t : t.to(Device::cpu());
    arena.slice_flat(e.offset, e.spec.shape)
        .copy_from(shard_of_full(e.spec, host, tensor_rank(tp), tensor_size(tp)).cast(dtype));
    seen.insert(name);
  }
  for (const auto& e : layout.entries())
    if (!seen.count(e.spec.name)) fail(source, ": missing tensor '", name_prefix, e.spec.name, "'");
  return arena;
}

}  // namespace loom
