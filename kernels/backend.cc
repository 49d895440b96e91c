#include "kernels/backend.h"

#include "kernels/cpu/cpu_backend.h"
#if LOOM_HAVE_CUDA_BACKEND
#include "kernels/cuda/cuda_backend.h"
#endif

namespace loom {

bool cuda_available() {
#if LOOM_HAVE_CUDA_BACKEND
  return cuda_device_count() > 0;
#else
  return false;
#endif
}

std::unique_ptr<Backend> make_backend(Device device) {
  if (device.is_cpu()) return make_cpu_backend();
#if LOOM_HAVE_CUDA_BACKEND
  if (!cuda_available()) fail("backend for ", device.str(), ": no CUDA GPU is visible");
  return make_cuda_backend(device.index);
#else
  fail("backend for ", device.str(), ": this build has no CUDA backend");
#endif
}

}  // namespace loom
