// The CPU reference backend: f32 (and f64, for float64 gradient checks), straightforward loops parallelised
// with OpenMP, OpenBLAS GEMMs. It defines what every other backend must compute.
//
// Contract (in addition to kernels/backend.h):
// - Float tensors may be F32 or F64; all float tensors of one call share one dtype, except: cross_entropy's
//   losses may be F32 or F64 whatever the logits are, and so may the partials of the vocabulary-parallel pair
//   (there gathered and losses share the partials' dtype); convert/sum_squares/adamw's grad and compute_copy
//   also take BF16/F16. ids and targets are I32. Anything else throws loom::Error naming the op and the tensors.
// - What layernorm saves (mean, rstd) and what attention saves (the probabilities [B, H, T, T]) have the dtype
//   of the activations: F32 in training, F64 in gradient checks (attention_saved_dtype() reports F32).
// - Deterministic: outputs are bit-identical run to run, and do not depend on the OpenMP thread count
//   except through OpenBLAS, which is deterministic for a fixed thread count.
// - Not thread-safe: one thread drives a backend (its kernels use OpenMP internally).
#pragma once
#include <memory>

#include "kernels/backend.h"
#include "kernels/op_contract.h"

namespace loom {

class CpuBackend final : public Backend {
 public:
  Device device() const override { return Device::cpu(); }
  std::string name() const override { return "cpu"; }
  // The dtypes this backend takes (the contract above), and the argument checks of one call of `op`.
  static const BackendDtypes& dtypes();
  OpCheck op_check(const char* op) const { return OpCheck(op, device(), dtypes()); }

  void zero(Tensor& x) override;
  void add(Tensor& out, const Tensor& a, const Tensor& b) override;
  void accumulate(Tensor& dst, const Tensor& src) override;
  void scale(Tensor& x, double s) override;
  void convert(Tensor& dst, const Tensor& src) override;

  void embedding_forward(Tensor& out, const Tensor& ids, const Tensor& table) override;
  void embedding_backward(Tensor& dtable, const Tensor& dout, const Tensor& ids) override;
  void add_position_forward(Tensor& x, const Tensor& pos) override;
  void add_position_backward(Tensor& dpos, const Tensor& dx) override;
  void copy_tokens(Tensor& dst, int64_t dst_start, const Tensor& src, int64_t src_start, int64_t count,
                   bool accumulate) override;

  void layernorm_forward(Tensor& out, Tensor& mean, Tensor& rstd, const Tensor& x, const Tensor& w, const Tensor& b,
                         double eps, int64_t channels = 0) override;
  void layernorm_backward(Tensor& dx, Tensor& dw, Tensor& db, const Tensor& dout, const Tensor& x, const Tensor& w,
                          const Tensor& mean, const Tensor& rstd, int64_t channels = 0) override;

  void matmul_forward(Tensor& out, const Tensor& x, const Tensor& w, const Tensor& bias) override;
  void matmul_backward(Tensor& dx, Tensor& dw, Tensor& dbias, const Tensor& dout, const Tensor& x,
                       const Tensor& w) override;

  void gelu_forward(Tensor& out, const Tensor& x, GeluKind kind) override;
  void gelu_backward(Tensor& dx, const Tensor& dout, const Tensor& x, GeluKind kind) override;

  Shape attention_saved_shape(const AttentionShape& s) const override;
  DType attention_saved_dtype() const override { return DType::F32; }
  void attention_forward(Tensor& out, Tensor& saved, const Tensor& qkv, const AttentionShape& s) override;
  void attention_backward(Tensor& dqkv, const Tensor& dout, const Tensor& qkv, const Tensor& out, const Tensor& saved,
                          const AttentionShape& s) override;

  void cross_entropy(Tensor& losses, Tensor& dlogits, const Tensor& logits, const Tensor& targets, int64_t vocab,
                     double dloss, double label_smoothing) override;
  void cross_entropy_partials(Tensor& partials, const Tensor& logits_local, const Tensor& targets, int64_t vocab_begin,
                              int64_t vocab) override;
  void cross_entropy_from_partials(Tensor& losses, Tensor& dlogits_local, const Tensor& gathered,
                                   const Tensor& logits_local, const Tensor& targets, int64_t vocab_begin,
                                   int64_t vocab, double dloss, double label_smoothing) override;
  void accumulate_sum(Tensor& total, const Tensor& x, double weight, double count) override;

  void accumulate_sum_squares(Tensor& total, const std::vector<Tensor>& tensors) override;
  void adamw_update(Tensor& param, Tensor& m, Tensor& v, const Tensor& grad, Tensor& compute_copy, const AdamWHyper& hp,
                    double weight_decay) override;

  // Finiteness (kernels/cpu/cpu_finite.cc).
  int64_t count_nonfinite(const std::vector<Tensor>& tensors) override;

  // ==== structural pruning (cpu_pruning.cc) ====
  void dot_along_axis(Tensor& out, const Tensor& a, const Tensor& b, int axis) override;
  void zero_deleted(Tensor& x, const std::vector<DimensionMask>& dims, const Tensor& keep) override;
  void distillation_loss(Tensor& losses, Tensor& dstudent, const Tensor& student, const Tensor& teacher,
                         int64_t classes, double temperature, double dloss) override;
  // ==== end structural pruning ====
};

std::unique_ptr<Backend> make_cpu_backend();

}  // namespace loom
