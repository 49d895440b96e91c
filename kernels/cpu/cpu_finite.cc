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
  op_contract::float_list(op_check("count_nonfinite"), tensors);
  int64_t count = 0;
  for (const Tensor& t : tensors) {
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
      default:
        count += count_nonfinite_typed<DType::F16>(t.raw(), t.numel());
    }
  }
  return count;
}

}  // namespace loom
