#include "trainer/models/model.h"

namespace loom {

DType reduction_dtype(DType compute) { return compute == DType::F64 ? DType::F64 : DType::F32; }

double sum_on_host(const Tensor& t) {
  const Tensor host = t.device().is_cpu() ? t : t.to(Device::cpu());
  double total = 0;
  for (int64_t i = 0; i < host.numel(); ++i) total += host.item(i);
  return total;
}

}  // namespace loom
