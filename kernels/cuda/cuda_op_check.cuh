// Argument validation for CudaBackend's ops (internal to kernels/cuda). Every check runs on the host before
// anything is queued, and every failure names the op and the offending tensors.
#pragma once
#include <utility>

#include "core/tensor.h"

namespace loom::cuda {

struct OpCheck {
  const char* op;
  Device device;

  template <typename... Args>
  [[noreturn]] void fail_with(Args&&... args) const {
    fail(op, " (", device.str(), "): ", std::forward<Args>(args)...);
  }
  template <typename... Args>
  void require(bool cond, Args&&... args) const {
    if (!cond) fail_with(std::forward<Args>(args)...);
  }
  void on_device(const char* name, const Tensor& t) const {
    require(t.defined(), name, " is undefined");
    require(t.device() == device, name, " ", t.str(), " is not on ", device.str());
  }
  // A defined tensor on this device of dtype F32, BF16 or F16.
  void floating(const char* name, const Tensor& t) const {
    on_device(name, t);
    const DType d = t.dtype();
    require(d == DType::F32 || d == DType::BF16 || d == DType::F16, name, " ", t.str(),
            " must be f32, bf16 or f16");
  }
  void f32(const char* name, const Tensor& t) const {
    on_device(name, t);
    require(t.dtype() == DType::F32, name, " ", t.str(), " must be f32");
  }
  void ints(const char* name, const Tensor& t) const {
    on_device(name, t);
    require(t.dtype() == DType::I32, name, " ", t.str(), " must be i32");
  }
  // `t` is a float tensor with the dtype of `ref`.
  void like(const char* name, const Tensor& t, const char* ref_name, const Tensor& ref) const {
    floating(name, t);
    require(t.dtype() == ref.dtype(), name, " ", t.str(), " must have the dtype of ", ref_name, " ", ref.str());
  }
  void shape(const char* name, const Tensor& t, const Shape& expected) const {
    require(t.shape() == expected, name, " ", t.str(), " must have shape ", shape_str(expected));
  }
  void same_shape(const char* name, const Tensor& t, const char* ref_name, const Tensor& ref) const {
    require(t.shape() == ref.shape(), name, " ", t.str(), " must have the shape of ", ref_name, " ", ref.str());
  }
  // `t` holds `rows` rows of width `width`.
  void rows(const char* name, const Tensor& t, int64_t rows, int64_t width) const {
    require(t.ndim() >= 1 && t.dim(-1) == width && t.numel() == rows * width, name, " ", t.str(), " must be ",
            rows, " rows of width ", width);
  }
};

// Typed pointer for a tensor already checked to hold T (float, bf16 or f16); null for an undefined tensor.
template <typename T>
T* ptr(const Tensor& t) {
  return t.defined() ? static_cast<T*>(t.raw()) : nullptr;
}

}  // namespace loom::cuda
