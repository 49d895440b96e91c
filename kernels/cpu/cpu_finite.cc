// count_nonfinite for the CPU backend: the reference the CUDA kernel is tested against (tests/gpu).
#include <cmath>
#include <string>

#include "core/error.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/cpu_parallel.h"

namespace loom {
namespace {

// Σ [x_i is NaN or ±Inf] over n elements; integer sums, so the result does not depend on the thread count.
template <DType D>
int64_t count_nonfinite_typed(const void* data, int64_t n) {
  const auto* x = static_cast<const typename cpu::Elem<D>::type*>(data);
  int64_t count = 0;
#pragma omp parallel for schedule(static) reduction(+ : count) if (n > cpu::kParallelMinWork)
  for (int64_t i = 0; i < n; ++i) count += !std::isfinite(cpu::Elem<D>::load(x[i]));
  return count;
}

}  // namespace

int64_t CpuBackend::count_nonfinite(const std::vector<Tensor>& tensors) {
  int64_t count = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const Tensor& t = tensors[i];
    const std::string name = "count_nonfinite: tensor " + std::to_string(i);
    LOOM_CHECK(t.defined(), name, " is undefined");
    LOOM_CHECK(t.device().is_cpu(), name, " ", t.str(), " is not on the CPU");
    switch (t.dtype()) {
      case DType::F32:
        count += count_nonfinite_typed<DType::F32>(t.raw(), t.numel());
        break;
      case DType::F64:
        count += count_nonfinite_typed<DType::F64>(t.raw(), t.numel());
        break;
      case DType::BF16:
        count += count_nonfinite_typed<DType::BF16>(t.raw(), t.numel());
        break;
      case DType::F16:
        count += count_nonfinite_typed<DType::F16>(t.raw(), t.numel());
        break;
      default:
        fail(name, " ", t.str(), " must be a float tensor");
    }
  }
  return count;
}

}  // namespace loom
