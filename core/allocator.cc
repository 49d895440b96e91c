#include "core/allocator.h"

#include <atomic>
#include <cstdlib>
#include <cstring>

#include "core/error.h"
#include "core/host_memory.h"

namespace loom {
namespace {

// Host memory from aligned_alloc; 256-byte alignment keeps SIMD and pinned-copy paths happy.
class CpuAllocator final : public Allocator {
 public:
  void* allocate(size_t bytes) override {
    const size_t rounded = ((bytes + 255) / 256) * 256 + 256 * (bytes == 0);
    void* p = std::aligned_alloc(256, rounded);
    if (!p) fail("cpu allocator: out of memory allocating ", bytes, " bytes");
    const size_t now = in_use_ += bytes;
    size_t peak = peak_.load();
    while (now > peak && !peak_.compare_exchange_weak(peak, now)) {
    }
    return p;
  }
  void deallocate(void* ptr, size_t bytes) override {
    std::free(ptr);
    in_use_ -= bytes;
  }
  size_t bytes_in_use() const override { return in_use_; }
  size_t peak_bytes_in_use() const override { return peak_; }
  int64_t available_bytes() const override { return host_available_bytes(); }

 private:
  std::atomic<size_t> in_use_{0}, peak_{0};
};

Allocator* g_cuda_allocator = nullptr;
CopyFn g_device_copy = nullptr;

}  // namespace

Allocator& allocator_for(Device device) {
  static CpuAllocator cpu;
  if (device.is_cpu()) return cpu;
  if (!g_cuda_allocator) fail("no allocator for ", device.str(), ": this build has no CUDA backend or it is not initialised");
  return *g_cuda_allocator;
}

void register_allocator(DeviceType type, Allocator* allocator) {
  LOOM_CHECK(type == DeviceType::CUDA, "only the CUDA allocator can be registered");
  g_cuda_allocator = allocator;
}

void register_device_copy(CopyFn fn) { g_device_copy = fn; }

void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes) {
  if (bytes == 0) return;
  if (dst_device.is_cpu() && src_device.is_cpu()) {
    std::memcpy(dst, src, bytes);
    return;
  }
  if (!g_device_copy) fail("copy between ", src_device.str(), " and ", dst_device.str(), ": no CUDA backend");
  g_device_copy(dst, dst_device, src, src_device, bytes);
}

}  // namespace loom
