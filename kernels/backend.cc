#include "kernels/backend.h"

#include <chrono>

#include "kernels/cpu/cpu_backend.h"
#if LOOM_HAVE_CUDA_BACKEND
#include "kernels/cuda/cuda_backend.h"
#endif

namespace loom {
namespace {

class HostClockMarker final : public WorkMarker {
 public:
  void record(void*) override {
    at_ = std::chrono::steady_clock::now();
    recorded_ = true;
  }
  double ms_since(const WorkMarker& earlier) const override {
    const auto* e = dynamic_cast<const HostClockMarker*>(&earlier);
    LOOM_CHECK(e && e->recorded_ && recorded_, "WorkMarker::ms_since: both markers must be host-clock markers "
               "and recorded");
    return std::chrono::duration<double, std::milli>(at_ - e->at_).count();
  }

 private:
  std::chrono::steady_clock::time_point at_;
  bool recorded_ = false;
};

}  // namespace

std::unique_ptr<WorkMarker> Backend::make_marker() const { return std::make_unique<HostClockMarker>(); }

void Backend::matmul_residual_forward(Tensor& out, const Tensor& x, const Tensor& w, const Tensor& bias,
                                      const Tensor& residual) {
  // matmul_forward and add check the rest of the contract.
  LOOM_CHECK(out.numel() == 0 || residual.raw() != out.raw(), "matmul_residual_forward: residual ", residual.str(),
             " and out ", out.str(), " must be distinct buffers");
  matmul_forward(out, x, w, bias);
  add(out, out, residual);
}

std::vector<double> Backend::synchronize_and_read(const Tensor& x) {
  LOOM_CHECK(x.dtype() == DType::F64 && x.device() == device(), "synchronize_and_read: ", x.str(),
             " must be f64 on ", device().str());
  synchronize();
  const Tensor host = x.device().is_cpu() ? x : x.to(Device::cpu());
  return std::vector<double>(host.data<double>(), host.data<double>() + host.numel());
}

double Backend::sum_squares(const std::vector<Tensor>& tensors) {
  Tensor total = Tensor::empty({1}, DType::F64, device());
  zero(total);
  accumulate_sum_squares(total, tensors);
  return synchronize_and_read(total)[0];
}

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
