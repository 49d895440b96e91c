// Tensor: a shape, an element type, a device and a reference to contiguous storage.
//
// Contract:
// - Storage is always contiguous row-major; a tensor may be a view at an element offset into a larger
//   storage (used for the parameter/gradient arenas and activation arenas), sharing ownership of it.
// - Copying a Tensor copies the handle, not the data (like std::shared_ptr). Use copy_from() for data.
// - A default-constructed Tensor is "undefined" (defined() == false); ops take undefined tensors to mean
//   "absent" (e.g. no bias).
// - Tensors are not thread-safe for concurrent writes; reading from several threads is fine.
#pragma once
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "core/allocator.h"
#include "core/dtype.h"
#include "core/error.h"

namespace loom {

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& s);
int64_t shape_numel(const Shape& s);

// An owned block of memory on one device. Freed through its allocator when the last tensor drops it.
class Storage {
 public:
  Storage(size_t bytes, Device device);
  // Wraps memory the caller owns (not freed here); used for mmap'ed files and external buffers.
  Storage(void* external, size_t bytes, Device device);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  Device device() const { return device_; }

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
  Device device_;
  bool owned_ = true;
};

class Tensor {
 public:
  Tensor() = default;

  // New uninitialised tensor.
  static Tensor empty(const Shape& shape, DType dtype, Device device = Device::cpu());
  // New tensor filled with zeros.
  static Tensor zeros(const Shape& shape, DType dtype, Device device = Device::cpu());
  // CPU tensor from host values, converted to `dtype` (float types only for float data).
  static Tensor from_vector(const std::vector<float>& values, const Shape& shape, DType dtype = DType::F32);
  static Tensor from_ints(const std::vector<int32_t>& values, const Shape& shape);

  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  int64_t dim(int i) const;  // negative i counts from the end
  int ndim() const { return static_cast<int>(shape_.size()); }
  int64_t numel() const { return numel_; }
  DType dtype() const { return dtype_; }
  Device device() const { return storage_ ? storage_->device() : Device::cpu(); }
  size_t nbytes() const { return static_cast<size_t>(numel_) * dtype_size(dtype_); }
  int64_t offset() const { return offset_; }  // in elements, into the storage
  const std::shared_ptr<Storage>& storage() const { return storage_; }

  void* raw() const;
  // Typed pointer; throws unless T matches dtype (uint16_t serves bf16/f16/u16).
  template <typename T>
  T* data() const;

  // Same storage, new shape with equal numel (one dimension may be -1).
  Tensor view(const Shape& shape) const;
  // Same storage: `shape` elements starting `element_offset` elements into this tensor.
  Tensor slice_flat(int64_t element_offset, const Shape& shape) const;
  // Rows [begin, end) along dimension 0.
  Tensor narrow0(int64_t begin, int64_t end) const;

  // Copies data from `src` (same numel and dtype; any devices).
  void copy_from(const Tensor& src);
  // New tensor on `device` with the same data.
  Tensor to(Device device) const;
  // New CPU tensor converted to dtype (float<->bf16/f16/f64 conversions; ints to ints).
  Tensor cast(DType dtype) const;
  // Fills with zero bytes (any device).
  void zero_();
  // CPU only: sets every element to `value` (NaN poisoning in tests uses this).
  void fill_(double value);
  // CPU only: element i as double (for tests and logging).
  double item(int64_t i = 0) const;
  // CPU only: all elements as float / double vectors.
  std::vector<float> to_vector() const;

  std::string str() const;  // "f32[2, 3] cpu"

 private:
  std::shared_ptr<Storage> storage_;
  Shape shape_;
  int64_t numel_ = 0;
  int64_t offset_ = 0;
  DType dtype_ = DType::F32;
};

}  // namespace loom
