// Argument checks shared by the MPI and NCCL communicators (internal to parallel/; not for other callers).
//
// Every check throws loom::Error through CommOp::fail, whose message names the backend, the op, the rank and
// the group size: "mpi reduce_scatter (rank 1 of 4): in has 10 elements, expected 4 * 3 = 12".
#pragma once
#include <cstdint>
#include <utility>

#include "core/error.h"
#include "core/tensor.h"

namespace loom::comm_detail {

struct CommOp {
  const char* backend;  // "mpi" / "nccl"
  const char* op;       // "all_reduce", ...
  int rank, size;

  template <typename... Args>
  [[noreturn]] void fail(Args&&... args) const {
    loom::fail(backend, " ", op, " (rank ", rank, " of ", size, "): ", std::forward<Args>(args)...);
  }

  // `t` is defined and lives on `device`. `name` is the argument's name in the op ("in", "out", "x").
  void check_tensor(const Tensor& t, const char* name, Device device) const {
    if (!t.defined()) fail(name, " is an undefined tensor");
    if (t.device() != device) fail(name, " is ", t.str(), " but this communicator works on ", device.str());
  }
  void check_same_dtype(const Tensor& out, const Tensor& in) const {
    if (out.dtype() != in.dtype()) fail("out is ", out.str(), " but in is ", in.str(), " (dtypes must match)");
  }
  // `peer` names a rank of the group: the root of a broadcast, or the other side of a send/recv (which must
  // not be this rank, since a blocking send to oneself would wait for a receive that never comes).
  void check_rank_arg(int peer, const char* what, bool may_be_self) const {
    if (peer < 0 || peer >= size) fail(what, " ", peer, " is not a rank of this group (size ", size, ")");
    if (!may_be_self && peer == rank) fail(what, " ", peer, " is this rank itself");
  }
};

// How the memory of two tensors relates: disjoint, exactly the same elements, or anything else.
enum class Overlap { None, Identical, Partial };

inline Overlap memory_overlap(const Tensor& a, const Tensor& b) {
  const char* pa = static_cast<const char*>(a.raw());
  const char* pb = static_cast<const char*>(b.raw());
  if (pa == pb && a.nbytes() == b.nbytes()) return Overlap::Identical;
  const bool disjoint = pa + a.nbytes() <= pb || pb + b.nbytes() <= pa;
  return disjoint ? Overlap::None : Overlap::Partial;
}

// The checks every backend makes on a collective's tensors (the backend then checks the dtype is one it
// carries). Each returns whether the call is in place.

// all_reduce(out, in): equal numel and dtype; in place when out and in are the same elements.
inline bool check_all_reduce_args(const CommOp& op, const Tensor& out, const Tensor& in, Device device) {
  op.check_tensor(out, "out", device);
  op.check_tensor(in, "in", device);
  op.check_same_dtype(out, in);
  if (out.numel() != in.numel()) op.fail("out has ", out.numel(), " elements but in has ", in.numel());
  const Overlap overlap = memory_overlap(out, in);
  if (overlap == Overlap::Partial) op.fail("out and in partly overlap (only exact in-place is allowed)");
  return overlap == Overlap::Identical;
}

// reduce_scatter(out, in): in.numel() == size * out.numel(), no overlap.
inline void check_reduce_scatter_args(const CommOp& op, const Tensor& out, const Tensor& in, Device device) {
  op.check_tensor(out, "out", device);
  op.check_tensor(in, "in", device);
  op.check_same_dtype(out, in);
  if (in.numel() != op.size * out.numel())
    op.fail("in has ", in.numel(), " elements, expected size * out.numel() = ", op.size, " * ", out.numel(), " = ",
            op.size * out.numel());
  if (memory_overlap(out, in) != Overlap::None) op.fail("out overlaps in");
}

// all_gather(out, in): out.numel() == size * in.numel(); in place when in is exactly this rank's chunk of out.
inline bool check_all_gather_args(const CommOp& op, const Tensor& out, const Tensor& in, Device device) {
  op.check_tensor(out, "out", device);
  op.check_tensor(in, "in", device);
  op.check_same_dtype(out, in);
  if (out.numel() != op.size * in.numel())
    op.fail("out has ", out.numel(), " elements, expected size * in.numel() = ", op.size, " * ", in.numel(), " = ",
            op.size * in.numel());
  if (memory_overlap(out, in) == Overlap::None) return false;
  const char* own_chunk = static_cast<const char*>(out.raw()) + op.rank * in.nbytes();
  if (static_cast<const char*>(in.raw()) != own_chunk)
    op.fail("in overlaps out but is not this rank's chunk of it (the only in-place form allowed)");
  return true;
}

}  // namespace loom::comm_detail
