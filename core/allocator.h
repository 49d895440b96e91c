// Memory allocators.
//
// Contract: an Allocator hands out blocks of device memory and takes them back. allocate() never returns
// null: it throws loom::Error naming the request on failure. Implementations must be thread-safe.
// The CUDA backend registers its (caching) allocator with register_allocator() when it initialises, so
// core/ has no CUDA dependency.
#pragma once
#include <cstddef>
#include <cstdint>

#include "core/device.h"

namespace loom {

class Allocator {
 public:
  virtual ~Allocator() = default;
  // Returns at least `bytes` bytes aligned to 256 bytes. bytes == 0 returns a valid unique pointer.
  virtual void* allocate(size_t bytes) = 0;
  // Returns a block obtained from allocate() with the same size.
  virtual void deallocate(void* ptr, size_t bytes) = 0;
  // Bytes currently handed out, and the most ever handed out at once (for memory reports).
  virtual size_t bytes_in_use() const = 0;
  virtual size_t peak_bytes_in_use() const = 0;
  // Bytes the device could still give: its free memory plus blocks this allocator keeps cached for reuse
  // (host: MemAvailable); -1 when unknown. For the trainer's check that a run fits before it allocates.
  virtual int64_t available_bytes() const = 0;
};

// The allocator for a device; throws if none is registered for it (e.g. CUDA in a CPU-only build).
Allocator& allocator_for(Device device);
// Installs the allocator for a device type. Ownership stays with the caller, who keeps it alive.
void register_allocator(DeviceType type, Allocator* allocator);

// Copies bytes between any two devices (host<->device through the registered copier, host<->host memcpy).
using CopyFn = void (*)(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes);
void register_device_copy(CopyFn fn);
void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes);

}  // namespace loom
