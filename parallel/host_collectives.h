// Collectives on small host tensors (loss sums, control flags, the gradient norm, checkpoint shards) through
// any communicator. An MPI communicator works on host memory directly; an NCCL one gets the tensor staged
// through its GPU and back. Same contracts as the communicator's blocking forms (parallel/communicator.h),
// except that `x`/`out`/`in` are CPU tensors and each call returns with the result in host memory (it blocks
// until the GPU is done). Meant for a few values per step, not for bulk data.
#pragma once
#include "parallel/communicator.h"

namespace loom {

void all_reduce_host(Communicator& comm, Tensor& x, ReduceOp op = ReduceOp::Sum);
void broadcast_host(Communicator& comm, Tensor& x, int root);
void all_gather_host(Communicator& comm, Tensor& out, const Tensor& in);

}  // namespace loom
