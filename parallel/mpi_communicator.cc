#include "parallel/mpi_communicator.h"

#include <mpi.h>

#include <climits>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "parallel/comm_checks.h"

namespace loom {

struct MpiCommunicator::Handle {
  MPI_Comm comm = MPI_COMM_NULL;
};

namespace {

using comm_detail::CommOp;

std::string mpi_error_text(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  if (MPI_Error_string(code, text, &length) != MPI_SUCCESS) return "MPI error code " + std::to_string(code);
  return std::string(text, length);
}

void check_mpi(const CommOp& op, int code, const char* call) {
  if (code != MPI_SUCCESS) op.fail(call, " failed: ", mpi_error_text(code));
}

bool mpi_finalized() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  return finalized != 0;
}

void finalize_mpi_at_exit() {
  if (!mpi_finalized()) MPI_Finalize();
}

// The MPI type of a host tensor; MPI communicators carry F32 and F64 only (reduced-precision gradients are a
// GPU concern, handled by NCCL).
MPI_Datatype mpi_type(const CommOp& op, const Tensor& t, const char* name) {
  op.check_tensor(t, name, Device::cpu());
  switch (t.dtype()) {
    case DType::F32: return MPI_FLOAT;
    case DType::F64: return MPI_DOUBLE;
    default: op.fail(name, " is ", t.str(), ": MPI communicators support f32 and f64 only");
  }
}

// MPI counts are ints.
int mpi_count(const CommOp& op, int64_t numel, const char* name) {
  if (numel > INT_MAX) op.fail(name, " has ", numel, " elements, more than MPI's count limit ", INT_MAX);
  return static_cast<int>(numel);
}

// x /= size: the averaging half of ReduceOp::Average (MPI has no average op).
void divide_by_group_size(Tensor& x, int size) {
  if (x.dtype() == DType::F32) {
    float* p = x.data<float>();
    for (int64_t i = 0; i < x.numel(); ++i) p[i] /= static_cast<float>(size);
  } else {
    double* p = x.data<double>();
    for (int64_t i = 0; i < x.numel(); ++i) p[i] /= size;
  }
}

// Arguments of one collective, validated: send buffer (MPI_IN_PLACE for the in-place forms), type, and the
// count MPI takes (the whole tensor for all_reduce, one rank's chunk for reduce_scatter and all_gather).
struct MpiArgs {
  const void* send;
  MPI_Datatype type;
  int count;
};

MpiArgs check_all_reduce(const CommOp& op, const Tensor& out, const Tensor& in) {
  const bool in_place = comm_detail::check_all_reduce_args(op, out, in, Device::cpu());
  return {in_place ? MPI_IN_PLACE : in.raw(), mpi_type(op, out, "out"), mpi_count(op, out.numel(), "out")};
}

MpiArgs check_reduce_scatter(const CommOp& op, const Tensor& out, const Tensor& in) {
  comm_detail::check_reduce_scatter_args(op, out, in, Device::cpu());
  mpi_count(op, in.numel(), "in");
  return {in.raw(), mpi_type(op, out, "out"), static_cast<int>(out.numel())};
}

MpiArgs check_all_gather(const CommOp& op, const Tensor& out, const Tensor& in) {
  const bool in_place = comm_detail::check_all_gather_args(op, out, in, Device::cpu());
  mpi_count(op, out.numel(), "out");
  return {in_place ? MPI_IN_PLACE : in.raw(), mpi_type(op, out, "out"), static_cast<int>(in.numel())};
}

// A started non-blocking collective. Holds its tensors so their storage outlives the operation.
class MpiRequest final : public CommRequest {
 public:
  MpiRequest(CommOp op, MPI_Request request, std::vector<Tensor> in_flight, Tensor average_target)
      : op_(op), request_(request), in_flight_(std::move(in_flight)), average_target_(std::move(average_target)) {}

  ~MpiRequest() override {
    if (done_) return;
    try {
      wait();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "loom: error: %s (in an unfinished request's destructor)\n", e.what());
      abort_all_ranks(1);
    }
  }

  void wait() override {
    if (done_) return;
    finish(MPI_Wait(&request_, MPI_STATUS_IGNORE));
  }

  bool test() override {
    if (done_) return true;
    int complete = 0;
    const int code = MPI_Test(&request_, &complete, MPI_STATUS_IGNORE);
    if (code != MPI_SUCCESS || complete) finish(code);
    return done_;
  }

 private:
  void finish(int code) {
    done_ = true;
    in_flight_.clear();
    check_mpi(op_, code, "MPI_Wait");
    if (average_target_.defined()) divide_by_group_size(average_target_, op_.size);
    average_target_ = Tensor();
  }

  CommOp op_;
  MPI_Request request_;
  std::vector<Tensor> in_flight_;
  Tensor average_target_;  // divided by the group size on completion (ReduceOp::Average)
  bool done_ = false;
};

}  // namespace

void init_mpi() {
  if (mpi_finalized()) fail("init_mpi: MPI has already been finalised in this process");
  int initialized = 0;
  MPI_Initialized(&initialized);
  int provided = 0;
  if (initialized) {
    // Someone else (e.g. a test main) initialised MPI and owns its finalisation; check it suits us.
    MPI_Query_thread(&provided);
  } else {
    const int code = MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &provided);
    if (code != MPI_SUCCESS) fail("init_mpi: MPI_Init_thread failed: ", mpi_error_text(code));
    std::atexit(finalize_mpi_at_exit);
  }
  if (provided < MPI_THREAD_SERIALIZED)
    fail("init_mpi: the MPI library provides thread level ", provided, ", below MPI_THREAD_SERIALIZED (",
         MPI_THREAD_SERIALIZED, ")");
  // Errors on the world communicator (MPI_Comm_dup, MPI_Abort's callers) return codes rather than aborting.
  const int code = MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  if (code != MPI_SUCCESS) fail("init_mpi: MPI_Comm_set_errhandler failed: ", mpi_error_text(code));
}

void abort_all_ranks(int exit_code) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (initialized && !mpi_finalized()) MPI_Abort(MPI_COMM_WORLD, exit_code);
  std::exit(exit_code);
}

std::unique_ptr<MpiCommunicator> MpiCommunicator::world() {
  init_mpi();
  auto handle = std::make_unique<Handle>();
  const int code = MPI_Comm_dup(MPI_COMM_WORLD, &handle->comm);
  if (code != MPI_SUCCESS) fail("MpiCommunicator::world: MPI_Comm_dup failed: ", mpi_error_text(code));
  return std::make_unique<MpiCommunicator>(std::move(handle));
}

MpiCommunicator::MpiCommunicator(std::unique_ptr<Handle> handle) : handle_(std::move(handle)) {
  LOOM_CHECK(handle_ && handle_->comm != MPI_COMM_NULL, "MpiCommunicator needs a valid MPI communicator");
  auto check = [](int code, const char* call) {
    if (code != MPI_SUCCESS) fail("MpiCommunicator: ", call, " failed: ", mpi_error_text(code));
  };
  check(MPI_Comm_set_errhandler(handle_->comm, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
  check(MPI_Comm_rank(handle_->comm, &rank_), "MPI_Comm_rank");
  check(MPI_Comm_size(handle_->comm, &size_), "MPI_Comm_size");
}

MpiCommunicator::~MpiCommunicator() {
  // After MPI_Finalize (a communicator that outlives main's return) there is nothing left to free.
  if (mpi_finalized()) return;
  const int code = MPI_Comm_free(&handle_->comm);
  if (code != MPI_SUCCESS)
    std::fprintf(stderr, "loom: warning: MPI_Comm_free failed on rank %d: %s\n", rank_, mpi_error_text(code).c_str());
}

void MpiCommunicator::all_reduce(Tensor& x, ReduceOp op) { all_reduce(x, x, op); }

void MpiCommunicator::all_reduce(Tensor& out, const Tensor& in, ReduceOp op) {
  const CommOp c{"mpi", "all_reduce", rank_, size_};
  const MpiArgs r = check_all_reduce(c, out, in);
  check_mpi(c, MPI_Allreduce(r.send, out.raw(), r.count, r.type, MPI_SUM, handle_->comm), "MPI_Allreduce");
  if (op == ReduceOp::Average) divide_by_group_size(out, size_);
}

void MpiCommunicator::reduce_scatter(Tensor& out, const Tensor& in, ReduceOp op) {
  const CommOp c{"mpi", "reduce_scatter", rank_, size_};
  const MpiArgs r = check_reduce_scatter(c, out, in);
  check_mpi(c, MPI_Reduce_scatter_block(r.send, out.raw(), r.count, r.type, MPI_SUM, handle_->comm),
            "MPI_Reduce_scatter_block");
  if (op == ReduceOp::Average) divide_by_group_size(out, size_);
}

void MpiCommunicator::all_gather(Tensor& out, const Tensor& in) {
  const CommOp c{"mpi", "all_gather", rank_, size_};
  const MpiArgs r = check_all_gather(c, out, in);
  check_mpi(c, MPI_Allgather(r.send, r.count, r.type, out.raw(), r.count, r.type, handle_->comm), "MPI_Allgather");
}

void MpiCommunicator::broadcast(Tensor& x, int root) {
  const CommOp c{"mpi", "broadcast", rank_, size_};
  const MPI_Datatype type = mpi_type(c, x, "x");
  c.check_rank_arg(root, "root", true);
  check_mpi(c, MPI_Bcast(x.raw(), mpi_count(c, x.numel(), "x"), type, root, handle_->comm), "MPI_Bcast");
}

void MpiCommunicator::broadcast_bytes(void* data, size_t bytes, int root) {
  const CommOp c{"mpi", "broadcast_bytes", rank_, size_};
  c.check_rank_arg(root, "root", true);
  if (bytes > INT_MAX) c.fail(bytes, " bytes is more than MPI's count limit");
  check_mpi(c, MPI_Bcast(data, static_cast<int>(bytes), MPI_BYTE, root, handle_->comm), "MPI_Bcast");
}

void MpiCommunicator::send(const Tensor& x, int peer) {
  const CommOp c{"mpi", "send", rank_, size_};
  const MPI_Datatype type = mpi_type(c, x, "x");
  c.check_rank_arg(peer, "peer", false);
  check_mpi(c, MPI_Send(x.raw(), mpi_count(c, x.numel(), "x"), type, peer, 0, handle_->comm), "MPI_Send");
}

void MpiCommunicator::recv(Tensor& x, int peer) {
  const CommOp c{"mpi", "recv", rank_, size_};
  const MPI_Datatype type = mpi_type(c, x, "x");
  c.check_rank_arg(peer, "peer", false);
  MPI_Status status;
  const int count = mpi_count(c, x.numel(), "x");
  check_mpi(c, MPI_Recv(x.raw(), count, type, peer, 0, handle_->comm, &status), "MPI_Recv");
  int received = 0;
  check_mpi(c, MPI_Get_count(&status, type, &received), "MPI_Get_count");
  if (received != count) c.fail("received ", received, " elements from rank ", peer, " into x of ", count);
}

void MpiCommunicator::barrier() {
  check_mpi({"mpi", "barrier", rank_, size_}, MPI_Barrier(handle_->comm), "MPI_Barrier");
}

std::unique_ptr<CommRequest> MpiCommunicator::start_all_reduce(Tensor& x, ReduceOp op) {
  const CommOp c{"mpi", "start_all_reduce", rank_, size_};
  const MpiArgs r = check_all_reduce(c, x, x);
  MPI_Request request;
  check_mpi(c, MPI_Iallreduce(r.send, x.raw(), r.count, r.type, MPI_SUM, handle_->comm, &request), "MPI_Iallreduce");
  return std::make_unique<MpiRequest>(c, request, std::vector<Tensor>{x}, op == ReduceOp::Average ? x : Tensor());
}

std::unique_ptr<CommRequest> MpiCommunicator::start_reduce_scatter(Tensor& out, const Tensor& in, ReduceOp op) {
  const CommOp c{"mpi", "start_reduce_scatter", rank_, size_};
  const MpiArgs r = check_reduce_scatter(c, out, in);
  MPI_Request request;
  check_mpi(c, MPI_Ireduce_scatter_block(r.send, out.raw(), r.count, r.type, MPI_SUM, handle_->comm, &request),
            "MPI_Ireduce_scatter_block");
  return std::make_unique<MpiRequest>(c, request, std::vector<Tensor>{out, in},
                                      op == ReduceOp::Average ? out : Tensor());
}

std::unique_ptr<CommRequest> MpiCommunicator::start_all_gather(Tensor& out, const Tensor& in) {
  const CommOp c{"mpi", "start_all_gather", rank_, size_};
  const MpiArgs r = check_all_gather(c, out, in);
  MPI_Request request;
  check_mpi(c, MPI_Iallgather(r.send, r.count, r.type, out.raw(), r.count, r.type, handle_->comm, &request),
            "MPI_Iallgather");
  return std::make_unique<MpiRequest>(c, request, std::vector<Tensor>{out, in}, Tensor());
}

void MpiCommunicator::wait_event(GpuEvent event) {
  if (event) CommOp{"mpi", "wait_event", rank_, size_}.fail("an MPI communicator has no GPU stream to order");
}

void MpiCommunicator::record_event(GpuEvent event) {
  if (event) CommOp{"mpi", "record_event", rank_, size_}.fail("an MPI communicator has no GPU stream to record on");
}

std::unique_ptr<Communicator> MpiCommunicator::split(int color, int key) { return split_mpi(color, key); }

std::unique_ptr<MpiCommunicator> MpiCommunicator::split_mpi(int color, int key) {
  const CommOp c{"mpi", "split", rank_, size_};
  if (color < 0) c.fail("color ", color, " is negative");
  auto handle = std::make_unique<Handle>();
  check_mpi(c, MPI_Comm_split(handle_->comm, color, key, &handle->comm), "MPI_Comm_split");
  return std::make_unique<MpiCommunicator>(std::move(handle));
}

}  // namespace loom
