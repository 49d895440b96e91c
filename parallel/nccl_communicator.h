// NcclCommunicator: the Communicator over NCCL, for device tensors of F32, F64, BF16 or F16 on one GPU.
// Built only in CUDA builds where NCCL is found (LOOM_HAVE_NCCL is then defined for users of loom_trainer).
//
// Contract (beyond parallel/communicator.h):
// - One rank per GPU; the communicator is bound to GPU device_index() and all tensors must live there.
// - Every op is enqueued on the communicator's own CUDA stream (stream(), created non-blocking, so it does
//   not synchronise with the legacy default stream) and returns without waiting for the GPU. Its inputs must
//   be ready before the op is enqueued (order stream() after their producer with wait_event()), and its
//   tensors must stay alive, unmodified, until it completes on the GPU (record_event() + a wait on another
//   stream, a request's wait(), or synchronize()): the blocking ops keep no reference to their tensors.
// - Creation and split() are collective and bootstrap over MPI: rank 0 makes the NCCL unique id and
//   broadcasts it over an MPI communicator of the same ranks (kept for barrier() and split()).
// - NVLink multicast (NVLS) stays off: NCCL_NVLS_ENABLE=0 is set in the environment, when unset, before the
//   first NCCL communicator is made (loom-mpirun exports it too). The shared GPU machines require this.
// - Every ncclResult_t and cudaError_t is checked: failures throw loom::Error naming the op, rank, size and
//   NCCL's / CUDA's message. Asynchronous NCCL errors (a peer died, a network failure) surface from
//   synchronize(), barrier() and requests' wait()/test().
#pragma once
#include <memory>

#include "parallel/communicator.h"
#include "parallel/mpi_communicator.h"

namespace loom {

class NcclCommunicator final : public Communicator {
 public:
  // Collective over `bootstrap`: an NCCL communicator over the same ranks in the same order, on GPU
  // `device_index` (usually ProcessEnvironment::local_rank), which becomes the calling thread's current device
  // (one GPU per process). `bootstrap` may be destroyed afterwards.
  // Throws loom::Error when the GPU does not exist or NCCL initialisation fails.
  static std::unique_ptr<NcclCommunicator> create(MpiCommunicator& bootstrap, int device_index);

  ~NcclCommunicator() override;  // waits for queued ops, then destroys the NCCL communicator and stream
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const override;
  int size() const override;
  Device device() const override;
  std::string backend_name() const override { return "nccl"; }
  int device_index() const;

  void all_reduce(Tensor& x, ReduceOp op = ReduceOp::Sum) override;
  void all_reduce(Tensor& out, const Tensor& in, ReduceOp op = ReduceOp::Sum) override;
  void reduce_scatter(Tensor& out, const Tensor& in, ReduceOp op = ReduceOp::Sum) override;
  void all_gather(Tensor& out, const Tensor& in) override;
  void broadcast(Tensor& x, int root) override;
  void send(const Tensor& x, int peer) override;
  void recv(Tensor& x, int peer) override;
  // Waits for this rank's queued ops (synchronize()), then an MPI barrier over the same ranks.
  void barrier() override;

  // Enqueue like the blocking forms; the request keeps the tensors alive and its wait() blocks the host until
  // the GPU has finished the op (cudaEventSynchronize on an event recorded after it).
  std::unique_ptr<CommRequest> start_all_reduce(Tensor& x, ReduceOp op = ReduceOp::Sum) override;
  std::unique_ptr<CommRequest> start_reduce_scatter(Tensor& out, const Tensor& in,
                                                    ReduceOp op = ReduceOp::Sum) override;
  std::unique_ptr<CommRequest> start_all_gather(Tensor& out, const Tensor& in) override;

  // cudaStreamWaitEvent(stream(), event) / cudaEventRecord(event, stream()). Null events throw.
  void wait_event(GpuEvent event) override;
  void record_event(GpuEvent event) override;
  // Through an event of the communicator's own (cudaEventRecord + cudaStreamWaitEvent).
  void wait_for_stream(GpuStream producer) override;
  void make_stream_wait(GpuStream consumer) override;
  GpuStream stream() const override;
  void synchronize() override;

  // MPI_Comm_split of the bootstrap group, then a new NCCL communicator per group on the same GPU.
  std::unique_ptr<Communicator> split(int color, int key) override;

  struct State;  // NCCL communicator, stream, bootstrap group; defined in nccl_communicator.cc
  explicit NcclCommunicator(std::unique_ptr<State> state);

 private:
  std::unique_ptr<State> state_;
};

}  // namespace loom
