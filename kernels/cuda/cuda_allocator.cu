// The caching CUDA allocator, the host/device copy function and device discovery.
//
// cudaMalloc/cudaFree are slow and cudaFree synchronises the device, so freed blocks are kept in per-device,
// per-size free lists and handed out again for requests of the same rounded size (activation, gradient and
// scratch sizes repeat every step). Reuse is safe in stream order: a block freed on the host while kernels
// on a backend's stream still use it is only handed to work queued later on that same stream, or to
// cudaMemcpy on the legacy default stream, which waits for the (blocking) backend streams. Two backends on
// one device with different streams are not supported by this reasoning (the trainer uses one per device).
#include <cuda_runtime.h>

#include <atomic>
#include <mutex>
#include <set>
#include <unordered_map>
#include <vector>

#include "core/allocator.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_backend.cuh"
#include "kernels/cuda/cuda_ops.cuh"

namespace loom {

namespace cuda {
namespace {

// Small requests round to 512 bytes, large ones to 2 MiB, so buckets stay few and blocks are reused.
size_t round_block_size(size_t bytes) {
  constexpr size_t kSmall = 512, kLarge = size_t{2} << 20;
  if (bytes == 0) return kSmall;
  const size_t q = bytes < (size_t{1} << 20) ? kSmall : kLarge;
  return (bytes + q - 1) / q * q;
}

// Makes `device` current for the scope of a cudaMalloc, restoring the caller's device afterwards.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    LOOM_CUDA_CALL(cudaGetDevice(&previous_));
    if (previous_ != device) LOOM_CUDA_CALL(cudaSetDevice(device));
    device_ = device;
  }
  ~DeviceGuard() {
    if (previous_ != device_) cudaSetDevice(previous_);  // best effort: destructors must not throw
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0, device_ = 0;
};

class CachingCudaAllocator final : public Allocator {
 public:
  // Allocator::allocate() is not told the device. When this process has backends on one device only (the
  // usual one-process-per-GPU setup) blocks go to that device whichever thread asks (a data-loading thread's
  // current device is 0); with backends on several devices they go to the calling thread's current device,
  // which every CudaBackend op sets first.
  void note_backend_device(int device) {
    std::lock_guard<std::mutex> lock(mu_);
    backend_devices_.insert(device);
  }

  void* allocate(size_t bytes) override {
    int device = 0;
    LOOM_CUDA_CALL(cudaGetDevice(&device));
    const size_t size = round_block_size(bytes);
    std::lock_guard<std::mutex> lock(mu_);
    if (backend_devices_.size() == 1) device = *backend_devices_.begin();
    void* ptr = take_cached(device, size);
    if (!ptr) {
      DeviceGuard guard(device);
      ptr = malloc_or_trim(device, size, bytes);
    }
    live_[ptr] = {device, size};
    in_use_ += bytes;
    peak_ = std::max(peak_, in_use_);
    return ptr;
  }

  void deallocate(void* ptr, size_t bytes) override {
    std::lock_guard<std::mutex> lock(mu_);
    const auto it = live_.find(ptr);
    LOOM_CHECK(it != live_.end(), "CUDA allocator: free of unknown pointer ", ptr, " (", bytes, " bytes)");
    cached_[it->second.device][it->second.size].push_back(ptr);
    live_.erase(it);
    in_use_ -= bytes;
  }

  size_t bytes_in_use() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return in_use_;
  }
  size_t peak_bytes_in_use() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return peak_;
  }
  // cudaMemGetInfo's free bytes of the backends' device (the current one when there are several) plus the
  // cached blocks, which a request of another size gets back through malloc_or_trim.
  int64_t available_bytes() const override {
    int device = 0;
    LOOM_CUDA_CALL(cudaGetDevice(&device));
    std::lock_guard<std::mutex> lock(mu_);
    if (backend_devices_.size() == 1) device = *backend_devices_.begin();
    size_t free = 0, total = 0;
    {
      DeviceGuard guard(device);
      LOOM_CUDA_CALL(cudaMemGetInfo(&free, &total));
    }
    size_t cached = 0;
    if (const auto it = cached_.find(device); it != cached_.end())
      for (const auto& [size, ptrs] : it->second) cached += size * ptrs.size();
    return static_cast<int64_t>(free + cached);
  }

 private:
  struct Block {
    int device;
    size_t size;
  };

  void* take_cached(int device, size_t size) {
    auto& bucket = cached_[device][size];
    if (bucket.empty()) return nullptr;
    void* p = bucket.back();
    bucket.pop_back();
    return p;
  }

  // cudaMalloc; on out-of-memory returns every cached block of the device to CUDA and tries once more.
  void* malloc_or_trim(int device, size_t size, size_t requested) {
    void* p = nullptr;
    cudaError_t err = cudaMalloc(&p, size);
    if (err == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();  // clear the sticky-free error state before retrying
      for (auto& [bucket_size, ptrs] : cached_[device]) {
        for (void* q : ptrs) LOOM_CUDA_CALL(cudaFree(q));
        ptrs.clear();
      }
      err = cudaMalloc(&p, size);
    }
    if (err != cudaSuccess) {
      (void)cudaGetLastError();
      fail("CUDA allocator: cudaMalloc of ", requested, " bytes on cuda:", device, " failed: ",
           cudaGetErrorString(err), " (", in_use_, " bytes in use)");
    }
    return p;
  }

  mutable std::mutex mu_;
  std::unordered_map<void*, Block> live_;
  std::unordered_map<int, std::unordered_map<size_t, std::vector<void*>>> cached_;
  std::set<int> backend_devices_;
  size_t in_use_ = 0, peak_ = 0;
};

// Blocking device-to-host reads of this process (cuda_host_reads()).
std::atomic<int64_t> host_reads{0};

// Copies through unified addressing (cudaMemcpyDefault picks the direction). The CUDA side's device is made
// current so the copy is ordered after the work queued on that device's blocking streams. A copy to the host
// returns when the data is there: a host read.
void copy_device_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes) {
  const int device = dst_device.is_cuda() ? dst_device.index : src_device.index;
  int previous = 0;
  LOOM_CUDA_CALL(cudaGetDevice(&previous));
  if (previous != device) LOOM_CUDA_CALL(cudaSetDevice(device));
  LOOM_CUDA_CALL(cudaMemcpy(dst, src, bytes, cudaMemcpyDefault));
  if (previous != device) LOOM_CUDA_CALL(cudaSetDevice(previous));
  if (src_device.is_cuda() && !dst_device.is_cuda()) host_reads.fetch_add(1, std::memory_order_relaxed);
}

}  // namespace

void wait_for_host_read(cudaStream_t stream) {
  LOOM_CUDA_CALL(cudaStreamSynchronize(stream));
  host_reads.fetch_add(1, std::memory_order_relaxed);
}

void install_cuda_memory_hooks(int device) {
  static CachingCudaAllocator allocator;  // lives for the process: tensors may outlive every backend
  static std::once_flag once;
  std::call_once(once, [] {
    register_allocator(DeviceType::CUDA, &allocator);
    register_device_copy(&copy_device_bytes);
  });
  allocator.note_backend_device(device);
}

ScratchBuffer::ScratchBuffer(size_t bytes) : bytes_(bytes) {
  LOOM_CUDA_CALL(cudaGetDevice(&device_));
  ptr_ = allocator_for(Device::cuda(device_)).allocate(bytes);
}

ScratchBuffer::~ScratchBuffer() { allocator_for(Device::cuda(device_)).deallocate(ptr_, bytes_); }

}  // namespace cuda

int64_t cuda_host_reads() { return cuda::host_reads.load(std::memory_order_relaxed); }

int cuda_device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();  // no driver or no device: not an error for the caller
    return 0;
  }
  return count;
}

std::unique_ptr<Backend> make_cuda_backend(int device) {
  const int count = cuda_device_count();
  if (device < 0 || device >= count)
    fail("CUDA backend: device cuda:", device, " does not exist (", count, " CUDA devices visible)");
  return std::make_unique<cuda::CudaBackend>(device);
}

}  // namespace loom
