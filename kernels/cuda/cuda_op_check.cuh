// Argument checks for CudaBackend's ops (internal to kernels/cuda): the shared contract of kernels/op_contract.h
// with this backend's dtypes, run on the host before anything is queued, plus typed device pointers.
#pragma once
#include "core/tensor.h"
#include "kernels/op_contract.h"

namespace loom::cuda {

// Typed pointer for a tensor already checked to hold T (float, bf16 or f16); null for an undefined tensor.
template <typename T>
T* ptr(const Tensor& t) {
  return t.defined() ? static_cast<T*>(t.raw()) : nullptr;
}

}  // namespace loom::cuda
