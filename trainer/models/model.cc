#include "trainer/models/model.h"

namespace loom {

DType reduction_dtype(DType compute) { return compute == DType::F64 ? DType::F64 : DType::F32; }

double sum_on_host(const Tensor& t) {
  const Tensor host = t.device().is_cpu() ? t : t.to(Device::cpu());
  double total = 0;
  for (int64_t i = 0; i < host.numel(); ++i) total += host.item(i);
  return total;
}

double Model::forward_backward(const Batch& batch, double loss_scale) {
  Backend& be = backend();
  Tensor loss = Tensor::empty({1}, DType::F64, be.device());
  be.zero(loss);
  forward_backward_into(batch, loss_scale, loss, 1.0);
  return be.synchronize_and_read(loss)[0];
}

}  // namespace loom
