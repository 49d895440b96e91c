#include "parallel/host_collectives.h"

#include "core/error.h"

namespace loom {
namespace {

void check_host(const Communicator& comm, const char* op, const Tensor& t) {
  LOOM_CHECK(t.device().is_cpu(), op, ": expected a host tensor, got ", t.str(), " (", comm.backend_name(),
             " rank ", comm.rank(), " of ", comm.size(), ")");
}

// The staged tensor is filled by a copy on the legacy default stream; the communicator's stream must wait for
// it (and its result must be complete) before the copy back.
Tensor stage_in(Communicator& comm, const Tensor& host) {
  Tensor staged = host.to(comm.device());
  comm.wait_for_stream(nullptr);
  return staged;
}

void stage_out(Communicator& comm, Tensor& host, const Tensor& staged) {
  comm.synchronize();
  host.copy_from(staged);
}

// An in-place collective `op` on the host tensor x: directly on a host communicator, else on a staged copy.
template <typename Op>
void in_place_on_host(Communicator& comm, const char* name, Tensor& x, Op&& op) {
  check_host(comm, name, x);
  if (comm.device().is_cpu()) return op(x);
  Tensor staged = stage_in(comm, x);
  op(staged);
  stage_out(comm, x, staged);
}

}  // namespace

void all_reduce_host(Communicator& comm, Tensor& x, ReduceOp op) {
  in_place_on_host(comm, "all_reduce_host", x, [&](Tensor& t) { comm.all_reduce(t, op); });
}

void broadcast_host(Communicator& comm, Tensor& x, int root) {
  in_place_on_host(comm, "broadcast_host", x, [&](Tensor& t) { comm.broadcast(t, root); });
}

void all_gather_host(Communicator& comm, Tensor& out, const Tensor& in) {
  check_host(comm, "all_gather_host", out);
  check_host(comm, "all_gather_host", in);
  if (comm.device().is_cpu()) return comm.all_gather(out, in);
  Tensor staged_in = stage_in(comm, in);
  Tensor staged_out = Tensor::empty(out.shape(), out.dtype(), comm.device());
  comm.all_gather(staged_out, staged_in);
  stage_out(comm, out, staged_out);
}

}  // namespace loom
