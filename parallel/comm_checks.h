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

// True when `in` is exactly chunk `rank` of `out` (chunks of in.numel() elements): the in-place all-gather.
inline bool is_own_chunk(const Tensor& out, const Tensor& in, int rank) {
  return static_cast<const char*>(in.raw()) == static_cast<const char*>(out.raw()) + rank * in.nbytes();
}

}  // namespace loom::comm_detail
