#include "core/tensor.h"

#include <cmath>
#include <cstring>
#include <sstream>
#include <type_traits>

namespace loom {

std::string shape_str(const Shape& s) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << "]";
  return os.str();
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) {
    LOOM_CHECK(d >= 0, "negative dimension in shape ", shape_str(s));
    n *= d;
  }
  return n;
}

Storage::Storage(size_t bytes, Device device) : bytes_(bytes), device_(device) {
  data_ = allocator_for(device).allocate(bytes);
}

Storage::Storage(void* external, size_t bytes, Device device)
    : data_(external), bytes_(bytes), device_(device), owned_(false) {}

Storage::~Storage() {
  if (owned_ && data_) allocator_for(device_).deallocate(data_, bytes_);
}

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  Tensor t;
  t.shape_ = shape;
  t.numel_ = shape_numel(shape);
  t.dtype_ = dtype;
  t.storage_ = std::make_shared<Storage>(t.nbytes(), device);
  return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  t.zero_();
  return t;
}

Tensor Tensor::from_vector(const std::vector<float>& values, const Shape& shape, DType dtype) {
  LOOM_CHECK(static_cast<int64_t>(values.size()) == shape_numel(shape), "from_vector: ", values.size(),
             " values for shape ", shape_str(shape));
  Tensor f = empty(shape, DType::F32);
  if (!values.empty()) std::memcpy(f.raw(), values.data(), values.size() * sizeof(float));  // no null source
  return dtype == DType::F32 ? f : f.cast(dtype);
}

Tensor Tensor::from_ints(const std::vector<int32_t>& values, const Shape& shape) {
  LOOM_CHECK(static_cast<int64_t>(values.size()) == shape_numel(shape), "from_ints: ", values.size(),
             " values for shape ", shape_str(shape));
  Tensor t = empty(shape, DType::I32);
  if (!values.empty()) std::memcpy(t.raw(), values.data(), values.size() * sizeof(int32_t));  // no null source
  return t;
}

int64_t Tensor::dim(int i) const {
  const int n = ndim();
  if (i < 0) i += n;
  LOOM_CHECK(i >= 0 && i < n, "dim ", i, " out of range for ", str());
  return shape_[i];
}

void* Tensor::raw() const {
  LOOM_CHECK(defined(), "access to an undefined tensor");
  return static_cast<char*>(storage_->data()) + offset_ * static_cast<int64_t>(dtype_size(dtype_));
}

template <typename T>
T* Tensor::data() const {
  bool ok = false;
  if constexpr (std::is_same_v<T, float>) ok = dtype_ == DType::F32;
  if constexpr (std::is_same_v<T, double>) ok = dtype_ == DType::F64;
  if constexpr (std::is_same_v<T, int32_t>) ok = dtype_ == DType::I32;
  if constexpr (std::is_same_v<T, uint16_t>) ok = dtype_ == DType::BF16 || dtype_ == DType::F16 || dtype_ == DType::U16;
  LOOM_CHECK(ok, "tensor ", str(), " accessed with the wrong element type");
  return static_cast<T*>(raw());
}
template float* Tensor::data<float>() const;
template double* Tensor::data<double>() const;
template int32_t* Tensor::data<int32_t>() const;
template uint16_t* Tensor::data<uint16_t>() const;

Tensor Tensor::view(const Shape& shape) const {
  Shape s = shape;
  int64_t known = 1, infer = -1;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == -1) {
      LOOM_CHECK(infer < 0, "view: more than one -1 in ", shape_str(shape));
      infer = static_cast<int64_t>(i);
    } else {
      known *= s[i];
    }
  }
  if (infer >= 0) {
    LOOM_CHECK(known > 0 && numel_ % known == 0, "view: cannot infer ", shape_str(shape), " from ", str());
    s[infer] = numel_ / known;
  }
  LOOM_CHECK(shape_numel(s) == numel_, "view: ", shape_str(shape), " does not match ", str());
  Tensor t = *this;
  t.shape_ = s;
  return t;
}

Tensor Tensor::slice_flat(int64_t element_offset, const Shape& shape) const {
  const int64_t n = shape_numel(shape);
  LOOM_CHECK(element_offset >= 0 && element_offset + n <= numel_, "slice_flat: [", element_offset, ", +", n,
             ") out of ", str());
  Tensor t = *this;
  t.shape_ = shape;
  t.numel_ = n;
  t.offset_ = offset_ + element_offset;
  return t;
}

Tensor Tensor::narrow0(int64_t begin, int64_t end) const {
  LOOM_CHECK(ndim() >= 1 && begin >= 0 && begin <= end && end <= shape_[0], "narrow0: [", begin, ", ", end,
             ") of ", str());
  Shape s = shape_;
  s[0] = end - begin;
  return slice_flat(begin * (shape_[0] ? numel_ / shape_[0] : 0), s);
}

void Tensor::copy_from(const Tensor& src) {
  LOOM_CHECK(src.numel() == numel_ && src.dtype() == dtype_, "copy_from: ", src.str(), " into ", str());
  copy_bytes(raw(), device(), src.raw(), src.device(), nbytes());
}

Tensor Tensor::to(Device device) const {
  Tensor t = empty(shape_, dtype_, device);
  t.copy_from(*this);
  return t;
}

namespace {
// Below this many elements a cast or fill stays on the calling thread (a thread team costs microseconds).
constexpr int64_t kParallelCastElements = int64_t{1} << 18;

double load_as_double(const Tensor& t, int64_t i) {
  const void* p = t.raw();
  switch (t.dtype()) {
    case DType::F32: return static_cast<const float*>(p)[i];
    case DType::F64: return static_cast<const double*>(p)[i];
    case DType::BF16: return bf16_to_float(static_cast<const uint16_t*>(p)[i]);
    case DType::F16: return f16_to_float(static_cast<const uint16_t*>(p)[i]);
    case DType::I32: return static_cast<const int32_t*>(p)[i];
    case DType::U16: return static_cast<const uint16_t*>(p)[i];
  }
  return 0;
}
void store_from_double(Tensor& t, int64_t i, double v) {
  void* p = t.raw();
  switch (t.dtype()) {
    case DType::F32: static_cast<float*>(p)[i] = static_cast<float>(v); break;
    case DType::F64: static_cast<double*>(p)[i] = v; break;
    case DType::BF16: static_cast<uint16_t*>(p)[i] = float_to_bf16(static_cast<float>(v)); break;
    case DType::F16: static_cast<uint16_t*>(p)[i] = float_to_f16(static_cast<float>(v)); break;
    case DType::I32: static_cast<int32_t*>(p)[i] = static_cast<int32_t>(v); break;
    case DType::U16: static_cast<uint16_t*>(p)[i] = static_cast<uint16_t>(v); break;
  }
}
}  // namespace

Tensor Tensor::cast(DType dtype) const {
  LOOM_CHECK(device().is_cpu(), "cast: only CPU tensors, got ", str());
  Tensor out = empty(shape_, dtype);
  if (dtype == dtype_) {
    out.copy_from(*this);
    return out;
  }
  // Element by element through double (exact for every pair of these dtypes), in parallel over large tensors: a
  // model's arenas are cast whole (gigabytes at 1B+ parameters).
#pragma omp parallel for schedule(static) if (numel_ > kParallelCastElements)
  for (int64_t i = 0; i < numel_; ++i) store_from_double(out, i, load_as_double(*this, i));
  return out;
}

void Tensor::zero_() {
  if (numel_ == 0) return;
  if (device().is_cpu()) {
    std::memset(raw(), 0, nbytes());
  } else {
    Tensor z = zeros(shape_, dtype_);
    copy_from(z);
  }
}

void Tensor::fill_(double value) {
  LOOM_CHECK(device().is_cpu(), "fill_: only CPU tensors, got ", str());
#pragma omp parallel for schedule(static) if (numel_ > kParallelCastElements)
  for (int64_t i = 0; i < numel_; ++i) store_from_double(*this, i, value);
}

double Tensor::item(int64_t i) const {
  LOOM_CHECK(device().is_cpu(), "item: only CPU tensors, got ", str());
  LOOM_CHECK(i >= 0 && i < numel_, "item(", i, ") out of ", str());
  return load_as_double(*this, i);
}

std::vector<float> Tensor::to_vector() const {
  Tensor host = device().is_cpu() ? *this : to(Device::cpu());
  std::vector<float> v(static_cast<size_t>(numel_));
  for (int64_t i = 0; i < numel_; ++i) v[i] = static_cast<float>(load_as_double(host, i));
  return v;
}

std::string Tensor::str() const {
  if (!defined()) return "undefined tensor";
  return std::string(dtype_name(dtype_)) + shape_str(shape_) + " " + device().str();
}

}  // namespace loom
