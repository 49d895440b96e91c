// MpiCommunicator: the Communicator over Open MPI, for host (CPU) tensors of F32 or F64.
//
// Contract (beyond parallel/communicator.h):
// - MPI is initialised once per process by init_mpi() (called by world() too) and finalised at normal exit.
// - Every MPI call's return code is checked: the communicator uses MPI_ERRORS_RETURN, and a failure throws
//   loom::Error with the op, rank, size and MPI_Error_string's text.
// - Blocking ops complete before returning; start_*() ops use MPI's non-blocking collectives
//   (MPI_Iallreduce, MPI_Ireduce_scatter_block, MPI_Iallgather), which progress inside MPI calls: calling
//   test() now and then (or any MPI op) keeps them moving while the caller computes.
// - wait_event()/record_event() accept only nullptr; wait_for_stream()/make_stream_wait() do nothing; stream()
//   is nullptr; synchronize() returns at once.
#pragma once
#include <memory>

#include "parallel/communicator.h"

namespace loom {

// Initialises MPI for this process (MPI_Init_thread asking for MPI_THREAD_SERIALIZED) unless that is already
// done, and registers MPI_Finalize to run at normal exit (std::exit or return from main). Safe to call any
// number of times, from one thread at a time. Throws loom::Error if MPI was already finalised, if
// initialisation fails, or if the library gives a thread level below MPI_THREAD_SERIALIZED.
void init_mpi();

// Ends every process of the job at once (MPI_Abort on MPI_COMM_WORLD with `exit_code`). Use it on an error
// that not every rank sees: returning from main would wait forever in MPI_Finalize for the ranks still blocked
// in a collective. Calls std::exit(exit_code) when MPI is not initialised.
[[noreturn]] void abort_all_ranks(int exit_code);

class MpiCommunicator final : public Communicator {
 public:
  // A communicator over every process of the job (a duplicate of MPI_COMM_WORLD, so its traffic never mixes
  // with other libraries'), initialising MPI first. A process started without mpirun is a world of one.
  static std::unique_ptr<MpiCommunicator> world();

  ~MpiCommunicator() override;  // frees the MPI communicator (skipped after MPI_Finalize)
  MpiCommunicator(const MpiCommunicator&) = delete;
  MpiCommunicator& operator=(const MpiCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  Device device() const override { return Device::cpu(); }
  std::string backend_name() const override { return "mpi"; }

  void all_reduce(Tensor& x, ReduceOp op = ReduceOp::Sum) override;
  void all_reduce(Tensor& out, const Tensor& in, ReduceOp op = ReduceOp::Sum) override;
  void reduce_scatter(Tensor& out, const Tensor& in, ReduceOp op = ReduceOp::Sum) override;
  void all_gather(Tensor& out, const Tensor& in) override;
  void broadcast(Tensor& x, int root) override;
  void send(const Tensor& x, int peer) override;
  void recv(Tensor& x, int peer) override;
  void barrier() override;

  std::unique_ptr<CommRequest> start_all_reduce(Tensor& x, ReduceOp op = ReduceOp::Sum) override;
  std::unique_ptr<CommRequest> start_reduce_scatter(Tensor& out, const Tensor& in,
                                                    ReduceOp op = ReduceOp::Sum) override;
  std::unique_ptr<CommRequest> start_all_gather(Tensor& out, const Tensor& in) override;

  void wait_event(GpuEvent event) override;
  void record_event(GpuEvent event) override;
  void wait_for_stream(GpuStream) override {}
  void make_stream_wait(GpuStream) override {}
  GpuStream stream() const override { return nullptr; }
  void synchronize() override {}

  std::unique_ptr<Communicator> split(int color, int key) override;
  // split() with the concrete type (NcclCommunicator splits its bootstrap group with it).
  std::unique_ptr<MpiCommunicator> split_mpi(int color, int key);

  // Broadcasts `bytes` raw bytes at `data` from root (host memory; NCCL's unique id travels this way).
  void broadcast_bytes(void* data, size_t bytes, int root);

  // Wraps the MPI_Comm, defined in mpi_communicator.cc: keeps <mpi.h> out of this header (MPI_Comm is a pointer
  // in Open MPI and an int in MPICH, so it cannot be forward-declared portably).
  struct Handle;
  // Takes ownership of `handle`'s MPI communicator (freed in the destructor).
  explicit MpiCommunicator(std::unique_ptr<Handle> handle);

 private:
  std::unique_ptr<Handle> handle_;
  int rank_ = 0, size_ = 1;
};

}  // namespace loom
