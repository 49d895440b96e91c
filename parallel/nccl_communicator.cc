#include "parallel/nccl_communicator.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <cstdio>
#include <cstdlib>
#include <vector>

#include "parallel/comm_checks.h"

namespace loom {

namespace {

using comm_detail::CommOp;

void check_nccl(const CommOp& op, ncclResult_t result, const char* call) {
  if (result != ncclSuccess) op.fail(call, " failed: ", ncclGetErrorString(result));
}

void check_cuda(const CommOp& op, cudaError_t result, const char* call) {
  if (result == cudaSuccess) return;
  cudaGetLastError();  // consumed here, so a later launch check does not report this error as its own
  op.fail(call, " failed: ", cudaGetErrorString(result));
}

// Makes `device` current for a scope and restores the caller's device after: NCCL and stream/event calls need
// the communicator's GPU current, while the caller may be driving another.
class DeviceScope {
 public:
  DeviceScope(const CommOp& op, int device) {
    check_cuda(op, cudaGetDevice(&previous_), "cudaGetDevice");
    if (previous_ != device) check_cuda(op, cudaSetDevice(device), "cudaSetDevice");
  }
  ~DeviceScope() { cudaSetDevice(previous_); }
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;

 private:
  int previous_ = 0;
};

ncclDataType_t nccl_type(const CommOp& op, const Tensor& t, const char* name) {
  switch (t.dtype()) {
    case DType::F32: return ncclFloat32;
    case DType::F64: return ncclFloat64;
    case DType::BF16: return ncclBfloat16;
    case DType::F16: return ncclFloat16;
    default: op.fail(name, " is ", t.str(), ": NCCL communicators support f32, f64, bf16 and f16");
  }
}

ncclRedOp_t nccl_op(ReduceOp op) { return op == ReduceOp::Average ? ncclAvg : ncclSum; }

}  // namespace

struct NcclCommunicator::State {
  std::unique_ptr<MpiCommunicator> group;  // the same ranks over MPI: bootstrap, barrier, split
  ncclComm_t comm = nullptr;
  cudaStream_t stream = nullptr;
  cudaEvent_t order_event = nullptr;  // wait_for_stream / make_stream_wait (re-recorded each time)
  int device = 0;

  CommOp op(const char* name) const { return {"nccl", name, group->rank(), group->size()}; }

  ~State() {
    // Destructors cannot throw: failures here are reported and otherwise ignored.
    auto report = [&](const char* what, const char* text) {
      std::fprintf(stderr, "loom: warning: nccl communicator (rank %d): %s failed: %s\n", group->rank(), what, text);
    };
    int previous = 0;
    cudaGetDevice(&previous);
    cudaSetDevice(device);
    if (stream) {
      if (cudaError_t e = cudaStreamSynchronize(stream); e != cudaSuccess)
        report("cudaStreamSynchronize", cudaGetErrorString(e));
    }
    if (comm) {
      if (ncclResult_t r = ncclCommDestroy(comm); r != ncclSuccess) report("ncclCommDestroy", ncclGetErrorString(r));
    }
    if (order_event) cudaEventDestroy(order_event);
    if (stream) {
      if (cudaError_t e = cudaStreamDestroy(stream); e != cudaSuccess) report("cudaStreamDestroy", cudaGetErrorString(e));
    }
    cudaSetDevice(previous);
  }
};

namespace {

// Collective over `group`: the NCCL communicator over its ranks, bootstrapped through it.
std::unique_ptr<NcclCommunicator::State> make_state(std::unique_ptr<MpiCommunicator> group, int device) {
  auto state = std::make_unique<NcclCommunicator::State>();
  state->group = std::move(group);
  state->device = device;
  const CommOp op = state->op("create");
  int devices = 0;
  check_cuda(op, cudaGetDeviceCount(&devices), "cudaGetDeviceCount");
  if (device < 0 || device >= devices) op.fail("GPU ", device, " does not exist (", devices, " visible)");
  // NVLink multicast must stay off on the shared GPU machines; overwrite = 0 keeps an explicit setting.
  setenv("NCCL_NVLS_ENABLE", "0", /*overwrite=*/0);

  ncclUniqueId id{};
  if (state->group->rank() == 0) check_nccl(op, ncclGetUniqueId(&id), "ncclGetUniqueId");
  state->group->broadcast_bytes(&id, sizeof(id), 0);

  DeviceScope scope(op, device);
  check_cuda(op, cudaStreamCreateWithFlags(&state->stream, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
  check_cuda(op, cudaEventCreateWithFlags(&state->order_event, cudaEventDisableTiming), "cudaEventCreateWithFlags");
  check_nccl(op, ncclCommInitRank(&state->comm, state->group->size(), id, state->group->rank()), "ncclCommInitRank");
  return state;
}

// Throws if NCCL has recorded an asynchronous failure on `comm` (e.g. a peer or the network failed).
void check_async_error(const CommOp& op, ncclComm_t comm) {
  ncclResult_t async = ncclSuccess;
  check_nccl(op, ncclCommGetAsyncError(comm, &async), "ncclCommGetAsyncError");
  check_nccl(op, async, "an asynchronous NCCL operation");
}

// A started op: an event recorded on the communicator's stream after it, and its tensors, kept alive until
// the event has completed.
class NcclRequest final : public CommRequest {
 public:
  NcclRequest(CommOp op, int device, ncclComm_t comm, cudaStream_t stream, std::vector<Tensor> in_flight)
      : op_(op), device_(device), comm_(comm), in_flight_(std::move(in_flight)) {
    DeviceScope scope(op_, device_);
    check_cuda(op_, cudaEventCreateWithFlags(&done_event_, cudaEventDisableTiming), "cudaEventCreateWithFlags");
    check_cuda(op_, cudaEventRecord(done_event_, stream), "cudaEventRecord");
  }

  ~NcclRequest() override {
    if (!done_) {
      try {
        wait();
      } catch (const std::exception& e) {
        std::fprintf(stderr, "loom: error: %s (in an unfinished request's destructor)\n", e.what());
        abort_all_ranks(1);
      }
    }
    cudaEventDestroy(done_event_);
  }

  void wait() override {
    if (done_) return;
    DeviceScope scope(op_, device_);
    const cudaError_t result = cudaEventSynchronize(done_event_);
    finish();
    check_cuda(op_, result, "cudaEventSynchronize");
    check_async_error(op_, comm_);
  }

  bool test() override {
    if (done_) return true;
    DeviceScope scope(op_, device_);
    const cudaError_t result = cudaEventQuery(done_event_);
    if (result == cudaErrorNotReady) {
      check_async_error(op_, comm_);  // a failed peer would otherwise leave the caller polling forever
      return false;
    }
    finish();
    check_cuda(op_, result, "cudaEventQuery");
    return true;
  }

 private:
  void finish() {
    done_ = true;
    in_flight_.clear();
  }

  CommOp op_;
  int device_;
  ncclComm_t comm_;
  std::vector<Tensor> in_flight_;
  cudaEvent_t done_event_ = nullptr;
  bool done_ = false;
};

}  // namespace

std::unique_ptr<NcclCommunicator> NcclCommunicator::create(MpiCommunicator& bootstrap, int device_index) {
  // The process's GPU from now on: restoring a previous device (0 by default) would make every rank create a
  // context on GPU 0 as well.
  const CommOp op{"nccl", "create", bootstrap.rank(), bootstrap.size()};
  check_cuda(op, cudaSetDevice(device_index), "cudaSetDevice (GPU index from the local rank)");
  // A private copy of the ranks, so `bootstrap` may go away and our MPI traffic never mixes with its.
  return std::make_unique<NcclCommunicator>(make_state(bootstrap.split_mpi(0, bootstrap.rank()), device_index));
}

NcclCommunicator::NcclCommunicator(std::unique_ptr<State> state) : state_(std::move(state)) {}
NcclCommunicator::~NcclCommunicator() = default;

int NcclCommunicator::rank() const { return state_->group->rank(); }
int NcclCommunicator::size() const { return state_->group->size(); }
Device NcclCommunicator::device() const { return Device::cuda(state_->device); }
int NcclCommunicator::device_index() const { return state_->device; }
GpuStream NcclCommunicator::stream() const { return state_->stream; }

void NcclCommunicator::all_reduce(Tensor& x, ReduceOp op) { all_reduce(x, x, op); }

void NcclCommunicator::all_reduce(Tensor& out, const Tensor& in, ReduceOp op) {
  const CommOp c = state_->op("all_reduce");
  comm_detail::check_all_reduce_args(c, out, in, device());
  const ncclDataType_t type = nccl_type(c, out, "out");
  DeviceScope scope(c, state_->device);
  check_nccl(c, ncclAllReduce(in.raw(), out.raw(), out.numel(), type, nccl_op(op), state_->comm, state_->stream),
             "ncclAllReduce");
}

void NcclCommunicator::reduce_scatter(Tensor& out, const Tensor& in, ReduceOp op) {
  const CommOp c = state_->op("reduce_scatter");
  comm_detail::check_reduce_scatter_args(c, out, in, device());
  const ncclDataType_t type = nccl_type(c, out, "out");
  DeviceScope scope(c, state_->device);
  check_nccl(c,
             ncclReduceScatter(in.raw(), out.raw(), out.numel(), type, nccl_op(op), state_->comm, state_->stream),
             "ncclReduceScatter");
}

void NcclCommunicator::all_gather(Tensor& out, const Tensor& in) {
  const CommOp c = state_->op("all_gather");
  // NCCL's in-place form is exactly ours: sendbuff == recvbuff + rank * sendcount.
  comm_detail::check_all_gather_args(c, out, in, device());
  const ncclDataType_t type = nccl_type(c, out, "out");
  DeviceScope scope(c, state_->device);
  check_nccl(c, ncclAllGather(in.raw(), out.raw(), in.numel(), type, state_->comm, state_->stream), "ncclAllGather");
}

void NcclCommunicator::broadcast(Tensor& x, int root) {
  const CommOp c = state_->op("broadcast");
  c.check_tensor(x, "x", device());
  const ncclDataType_t type = nccl_type(c, x, "x");
  c.check_rank_arg(root, "root", true);
  DeviceScope scope(c, state_->device);
  check_nccl(c, ncclBroadcast(x.raw(), x.raw(), x.numel(), type, root, state_->comm, state_->stream), "ncclBroadcast");
}

void NcclCommunicator::send(const Tensor& x, int peer) {
  const CommOp c = state_->op("send");
  c.check_tensor(x, "x", device());
  const ncclDataType_t type = nccl_type(c, x, "x");
  c.check_rank_arg(peer, "peer", false);
  DeviceScope scope(c, state_->device);
  check_nccl(c, ncclSend(x.raw(), x.numel(), type, peer, state_->comm, state_->stream), "ncclSend");
}

void NcclCommunicator::recv(Tensor& x, int peer) {
  const CommOp c = state_->op("recv");
  c.check_tensor(x, "x", device());
  const ncclDataType_t type = nccl_type(c, x, "x");
  c.check_rank_arg(peer, "peer", false);
  DeviceScope scope(c, state_->device);
  check_nccl(c, ncclRecv(x.raw(), x.numel(), type, peer, state_->comm, state_->stream), "ncclRecv");
}

void NcclCommunicator::barrier() {
  synchronize();
  state_->group->barrier();
}

std::unique_ptr<CommRequest> NcclCommunicator::start_all_reduce(Tensor& x, ReduceOp op) {
  all_reduce(x, x, op);
  return std::make_unique<NcclRequest>(state_->op("start_all_reduce"), state_->device, state_->comm, state_->stream,
                                       std::vector<Tensor>{x});
}

std::unique_ptr<CommRequest> NcclCommunicator::start_reduce_scatter(Tensor& out, const Tensor& in, ReduceOp op) {
  reduce_scatter(out, in, op);
  return std::make_unique<NcclRequest>(state_->op("start_reduce_scatter"), state_->device, state_->comm,
                                       state_->stream, std::vector<Tensor>{out, in});
}

std::unique_ptr<CommRequest> NcclCommunicator::start_all_gather(Tensor& out, const Tensor& in) {
  all_gather(out, in);
  return std::make_unique<NcclRequest>(state_->op("start_all_gather"), state_->device, state_->comm, state_->stream,
                                       std::vector<Tensor>{out, in});
}

void NcclCommunicator::wait_event(GpuEvent event) {
  const CommOp c = state_->op("wait_event");
  if (!event) c.fail("the event is null");
  DeviceScope scope(c, state_->device);
  check_cuda(c, cudaStreamWaitEvent(state_->stream, static_cast<cudaEvent_t>(event), 0), "cudaStreamWaitEvent");
}

void NcclCommunicator::record_event(GpuEvent event) {
  const CommOp c = state_->op("record_event");
  if (!event) c.fail("the event is null");
  DeviceScope scope(c, state_->device);
  check_cuda(c, cudaEventRecord(static_cast<cudaEvent_t>(event), state_->stream), "cudaEventRecord");
}

// A stream wait captures the event's state when it is enqueued, so one event serves every call in turn.
void NcclCommunicator::wait_for_stream(GpuStream producer) {
  const CommOp c = state_->op("wait_for_stream");
  DeviceScope scope(c, state_->device);
  check_cuda(c, cudaEventRecord(state_->order_event, static_cast<cudaStream_t>(producer)), "cudaEventRecord");
  check_cuda(c, cudaStreamWaitEvent(state_->stream, state_->order_event, 0), "cudaStreamWaitEvent");
}

void NcclCommunicator::make_stream_wait(GpuStream consumer) {
  const CommOp c = state_->op("make_stream_wait");
  DeviceScope scope(c, state_->device);
  check_cuda(c, cudaEventRecord(state_->order_event, state_->stream), "cudaEventRecord");
  check_cuda(c, cudaStreamWaitEvent(static_cast<cudaStream_t>(consumer), state_->order_event, 0),
             "cudaStreamWaitEvent");
}

void NcclCommunicator::synchronize() {
  const CommOp c = state_->op("synchronize");
  DeviceScope scope(c, state_->device);
  check_cuda(c, cudaStreamSynchronize(state_->stream), "cudaStreamSynchronize");
  check_async_error(c, state_->comm);
}

std::unique_ptr<Communicator> NcclCommunicator::split(int color, int key) {
  return std::make_unique<NcclCommunicator>(make_state(state_->group->split_mpi(color, key), state_->device));
}

}  // namespace loom
