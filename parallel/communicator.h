// Communicator: collective and point-to-point communication among the ranks of a group, on loom::Tensor.
//
// Two implementations sit behind it:
// - MpiCommunicator (parallel/mpi_communicator.h): Open MPI, host (CPU) tensors of F32 or F64.
// - NcclCommunicator (parallel/nccl_communicator.h, CUDA builds only): NCCL, device tensors of F32, F64, BF16
//   or F16 on the communicator's GPU.
//
// Contract for every operation:
// - Collective: every rank of the group calls the same operations in the same order with matching dtypes and
//   sizes (and the same root / reduce op). A mismatch that a rank can see locally (a wrong dtype, device,
//   numel relation, root or peer) throws loom::Error before anything is communicated; a mismatch between ranks
//   that only the library notices (e.g. a receive buffer smaller than the message) throws loom::Error from the
//   failing call. Every message names the op, this rank and the group size. After an error on one rank the
//   other ranks may block forever in their matching call: the caller should end the job (abort_all_ranks() in
//   parallel/mpi_communicator.h) rather than carry on.
// - Tensors must be defined and contiguous (all loom tensors are), live on device(), and hold a supported dtype.
//   Sizes are counted in elements (numel); shapes beyond numel are not checked, so a [4, 6] tensor may be
//   reduce-scattered into a [6] one.
// - Completion. MPI: a blocking op returns when it is complete on this rank (outputs written, inputs free to
//   reuse). NCCL: an op is enqueued on the communicator's own CUDA stream, stream(), and returns at once; it
//   is ordered after everything earlier on that stream, and other streams see its result only through
//   record_event() / synchronize(). The caller orders the stream after the producer of its inputs with
//   wait_event().
// - Threads: one thread at a time drives a communicator (MPI is initialised with MPI_THREAD_SERIALIZED).
//   Different communicators (e.g. the data- and tensor-parallel groups of a mesh) may be driven from different
//   threads, one at a time each.
#pragma once
#include <memory>
#include <string>

#include "core/tensor.h"

namespace loom {

// How all_reduce and reduce_scatter combine contributions. Average is the sum divided by size() (in the
// tensor's dtype; NCCL uses ncclAvg).
enum class ReduceOp { Sum, Average };

// Opaque CUDA handles, so this header needs no CUDA include: a cudaEvent_t / cudaStream_t cast to void*.
// nullptr means "none".
using GpuEvent = void*;
using GpuStream = void*;

// An operation started by a start_*() call. Keeps its tensors' storage alive until it is complete.
class CommRequest {
 public:
  // An unfinished request waits for its operation in the destructor (an error there is printed to stderr and
  // aborts the job, since destructors cannot throw): call wait() to see errors as exceptions.
  virtual ~CommRequest() = default;
  // Blocks the calling host thread until the operation is complete on this rank (NCCL: until the GPU has
  // finished it). Throws loom::Error naming the op on failure. Calling it again returns at once.
  virtual void wait() = 0;
  // True when the operation has completed (wait() would return at once); never blocks. Throws on failure.
  virtual bool test() = 0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  // This process's index in the group, in [0, size()).
  virtual int rank() const = 0;
  // Number of ranks in the group (>= 1).
  virtual int size() const = 0;
  // Where tensors must live: Device::cpu() for MPI, the communicator's GPU for NCCL.
  virtual Device device() const = 0;
  // "mpi" or "nccl", for messages and logs.
  virtual std::string backend_name() const = 0;

  // ---- blocking collectives (see the completion rule above for NCCL) ----

  // x = op over all ranks of x, element-wise, in place. Every rank passes the same numel.
  virtual void all_reduce(Tensor& x, ReduceOp op = ReduceOp::Sum) = 0;
  // out = op over all ranks of in. out and in have equal numel and dtype; out may be the same tensor as in.
  virtual void all_reduce(Tensor& out, const Tensor& in, ReduceOp op = ReduceOp::Sum) = 0;
  // in.numel() == size() * out.numel(): rank r receives chunk r of the reduction, i.e.
  // out[i] = op over ranks of in[r * out.numel() + i]. out must not overlap in.
  virtual void reduce_scatter(Tensor& out, const Tensor& in, ReduceOp op = ReduceOp::Sum) = 0;
  // out.numel() == size() * in.numel(): out[r * in.numel() + i] = rank r's in[i]. in may be the chunk of out
  // this rank owns (out.slice_flat(rank() * n, ...)): the in-place form used by ZeRO; no other overlap.
  virtual void all_gather(Tensor& out, const Tensor& in) = 0;
  // x = root's x on every rank. root in [0, size()).
  virtual void broadcast(Tensor& x, int root) = 0;
  // Sends x to rank `peer` (!= rank()), which must post a matching recv() with the same numel and dtype.
  // MPI: may block until the peer receives (large messages), so two ranks that both send first deadlock: order
  // the calls (e.g. even ranks send first) or use a start_*() op. NCCL: enqueued like any op; a send and its
  // matching recv must not both wait on the other's stream.
  virtual void send(const Tensor& x, int peer) = 0;
  // Receives into x from rank `peer` (!= rank()). MPI throws if the message is not exactly x.numel()
  // elements; NCCL cannot detect a length mismatch (the result is then undefined), so sizes must agree.
  virtual void recv(Tensor& x, int peer) = 0;
  // Returns when every rank has entered barrier() (NCCL: also waits for this rank's queued GPU work).
  virtual void barrier() = 0;

  // ---- non-blocking collectives (the overlap of gradient reduction with the backward) ----
  // Same contracts as the blocking forms; the operation runs while the caller continues, and its tensors must
  // not be touched until the request's wait() returns (NCCL: or until a stream waits on an event recorded after
  // it). Requests of one communicator complete in the order they were started; at most a few dozen should be
  // outstanding at once.
  virtual std::unique_ptr<CommRequest> start_all_reduce(Tensor& x, ReduceOp op = ReduceOp::Sum) = 0;
  virtual std::unique_ptr<CommRequest> start_reduce_scatter(Tensor& out, const Tensor& in,
                                                            ReduceOp op = ReduceOp::Sum) = 0;
  virtual std::unique_ptr<CommRequest> start_all_gather(Tensor& out, const Tensor& in) = 0;

  // ---- stream ordering (NCCL) ----
  // The typical overlap step, with `grads_ready` recorded by the compute stream after bucket k's gradients:
  //   comm.wait_event(grads_ready); comm.all_reduce(bucket_k); comm.record_event(bucket_k_reduced);
  // and later the compute (optimizer) stream waits on bucket_k_reduced.
  // The MPI communicator has no stream: it accepts nullptr for both (a no-op, so code written for both
  // backends runs unchanged on the CPU) and throws for a real event.

  // Later operations on stream() start only after `event` (recorded on any stream of this GPU) has completed.
  // Does not block the host. The event may be re-recorded by its owner once this call returns.
  virtual void wait_event(GpuEvent event) = 0;
  // Records `event` (created by the caller on this GPU) on stream() after every operation enqueued so far.
  virtual void record_event(GpuEvent event) = 0;
  // Later operations on stream() start only after the work queued so far on `producer`, a CUDA stream of this
  // GPU (e.g. Backend::native_stream()); nullptr names the legacy default stream, whose marker also covers the
  // earlier work of every blocking stream and Tensor copies. Does not block the host. MPI: a no-op (host work
  // is complete when its calls return).
  virtual void wait_for_stream(GpuStream producer) = 0;
  // Work queued later on `consumer` (a CUDA stream of this GPU; nullptr = the legacy default stream) starts
  // only after every operation enqueued so far on stream(). Does not block the host. MPI: a no-op.
  virtual void make_stream_wait(GpuStream consumer) = 0;
  // The CUDA stream operations are enqueued on (owned by the communicator); nullptr for MPI.
  virtual GpuStream stream() const = 0;
  // Blocks the host until every operation enqueued so far has completed (MPI: returns at once).
  virtual void synchronize() = 0;

  // ---- sub-groups ----
  // Collective over this group: ranks passing the same color form a new group, ordered by (key, rank()).
  // color must be >= 0. The result is a communicator of the same kind (NCCL ones on the same GPU) and is
  // independent of this one (either may be destroyed first).
  virtual std::unique_ptr<Communicator> split(int color, int key) = 0;
};

}  // namespace loom
