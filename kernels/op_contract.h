// The argument contract of every Backend op (kernels/backend.h states the math), checked once for both
// backends: CpuBackend and CudaBackend call the same function per op before touching any output, and differ
// only in the dtypes they compute in (BackendDtypes) and in the checks only one of them has (alignment, the
// flash-attention rules, 2^31 grid limits), which they add after the shared contract.
//
// Errors: every failure throws loom::Error "<op> (<device>): <tensor name> <tensor> must ...", naming the op,
// the device and the offending tensors; messages are built only on failure. Threads: no state; safe from any
// thread. Ownership: nothing is kept.
#pragma once
#include <initializer_list>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/tensor.h"

namespace loom {

struct AttentionShape;
struct AdamWHyper;
struct DimensionMask;

// How a backend types its tensors.
struct BackendDtypes {
  std::vector<DType> compute;    // activations, weights, their gradients (CPU: f32, f64; CUDA: f32, bf16, f16)
  std::vector<DType> storage;    // any float tensor it reads (convert, sum_squares, count_nonfinite, AdamW grad)
  std::vector<DType> reduction;  // losses, loss partials (CPU: f32 or f64, independent of the input; CUDA: f32)
  std::vector<DType> master;     // AdamW parameters and moments (CPU: f32, f64; CUDA: f32)
  bool stats_follow_input;       // LayerNorm mean/rstd: the input's dtype (CPU) or f32 (CUDA)
  bool ids_checked_on_host;      // token ids and targets range-checked before the op (CPU) or on the device
  // The residual stream (add's out and a; LayerNorm's x and dx) may be f32 beside bf16/f16 compute tensors
  // (train.residual_dtype f32: CUDA), or always has the compute tensors' dtype (CPU).
  bool f32_residual;
};

// The checks one op call makes; every failure names the op, the device and the tensor.
class OpCheck {
 public:
  OpCheck(const char* op, Device device, const BackendDtypes& dtypes) : op_(op), device_(device), dtypes_(dtypes) {}

  const BackendDtypes& dtypes() const { return dtypes_; }
  template <typename... Args>
  [[noreturn]] void fail_with(Args&&... args) const {
    fail(op_, " (", device_.str(), "): ", std::forward<Args>(args)...);
  }
  template <typename... Args>
  void require(bool cond, Args&&... args) const {
    if (!cond) fail_with(std::forward<Args>(args)...);
  }
  // A defined tensor on this backend's device.
  void on_device(const char* name, const Tensor& t) const;
  // On the device, of the compute dtypes / storage dtypes / reduction dtypes / master dtypes, f32, or i32.
  void compute(const char* name, const Tensor& t) const { one_of(name, t, dtypes_.compute); }
  void storage(const char* name, const Tensor& t) const { one_of(name, t, dtypes_.storage); }
  void reduction(const char* name, const Tensor& t) const { one_of(name, t, dtypes_.reduction); }
  void master(const char* name, const Tensor& t) const { one_of(name, t, dtypes_.master); }
  void f32(const char* name, const Tensor& t) const { one_of(name, t, {DType::F32}); }
  void ints(const char* name, const Tensor& t) const { one_of(name, t, {DType::I32}); }
  // A compute tensor with the dtype of `ref`.
  void like(const char* name, const Tensor& t, const char* ref_name, const Tensor& ref) const;
  // A residual-stream tensor beside the compute tensor `ref`: ref's dtype, or f32 where BackendDtypes allows it.
  void residual(const char* name, const Tensor& t, const char* ref_name, const Tensor& ref) const;
  // A per-row statistic of `ref` (LayerNorm mean/rstd): ref's dtype or f32, as BackendDtypes says.
  void statistic(const char* name, const Tensor& t, const char* ref_name, const Tensor& ref) const;
  void shape(const char* name, const Tensor& t, const Shape& expected) const;
  void same_shape(const char* name, const Tensor& t, const char* ref_name, const Tensor& ref) const;
  // `t` holds `rows` rows of width `width`: last dimension `width` and rows·width elements.
  void rows(const char* name, const Tensor& t, int64_t rows, int64_t width) const;
  // ids (i32, host-readable) in [0, limit), or also -1 when allow_ignore. Only where ids_checked_on_host.
  void ids_in_range(const char* name, const Tensor& ids, int64_t limit, bool allow_ignore) const;

 private:
  void one_of(const char* name, const Tensor& t, const std::vector<DType>& allowed) const;

  const char* op_;
  Device device_;
  const BackendDtypes& dtypes_;
};

// One function per op; each checks every argument of the op as kernels/backend.h states it and returns the
// sizes the op's dispatch needs. Names as in Backend.
namespace op_contract {

struct Rows {  // N rows of C channels (K of them counted by LayerNorm's statistics)
  int64_t N = 0, C = 0, K = 0;
};
struct Linear {  // x [N, I], w [O, I]
  int64_t N = 0, I = 0, O = 0;
};

void elementwise(const OpCheck& check, std::initializer_list<std::pair<const char*, const Tensor*>> tensors);
// out = a + b: b a compute tensor, a a residual-stream tensor beside it (OpCheck::residual), out like a; one shape.
void add(const OpCheck& check, const Tensor& out, const Tensor& a, const Tensor& b);
void convert(const OpCheck& check, const Tensor& dst, const Tensor& src);
// embedding_forward (rows = out) and embedding_backward (rows = dout, table = dtable). Returns N.
int64_t embedding(const OpCheck& check, const char* rows_name, const Tensor& rows, const Tensor& ids,
                  const char* table_name, const Tensor& table);
// add_position_forward (x, pos) and backward (dx, dpos).
void add_position(const OpCheck& check, const char* x_name, const Tensor& x, const char* pos_name, const Tensor& pos);
void copy_tokens(const OpCheck& check, const Tensor& dst, int64_t dst_start, const Tensor& src, int64_t src_start,
                 int64_t count);
// LayerNorm: out/dout, w, b, dw, db compute tensors of one dtype; x and dx residual-stream tensors beside them
// (OpCheck::residual); mean and rstd statistics of x.
Rows layernorm_forward(const OpCheck& check, const Tensor& out, const Tensor& mean, const Tensor& rstd,
                       const Tensor& x, const Tensor& w, const Tensor& b, double eps, int64_t channels);
Rows layernorm_backward(const OpCheck& check, const Tensor& dx, const Tensor& dw, const Tensor& db,
                        const Tensor& dout, const Tensor& x, const Tensor& w, const Tensor& mean, const Tensor& rstd,
                        int64_t channels);
Linear matmul_forward(const OpCheck& check, const Tensor& out, const Tensor& x, const Tensor& w, const Tensor& bias);
Linear matmul_backward(const OpCheck& check, const Tensor& dx, const Tensor& dw, const Tensor& dbias,
                       const Tensor& dout, const Tensor& x, const Tensor& w);
// matmul_residual_forward: matmul_forward's, and residual like out, a distinct buffer (same start address is
// what is checked: the model's tensors are whole buffers or disjoint views).
Linear matmul_residual_forward(const OpCheck& check, const Tensor& out, const Tensor& x, const Tensor& w,
                               const Tensor& bias, const Tensor& residual);
// matmul_gelu_forward: w [M, I], pre and out [N, M], all distinct. Returns {N, I, O = M}.
Linear matmul_gelu_forward(const OpCheck& check, const Tensor& out, const Tensor& pre, const Tensor& x,
                           const Tensor& w, const Tensor& bias);
// matmul_backward_gelu: x = gelu(pre) [N, M], w [O, M]; dpre distinct from pre, x, dout. Returns {N, I = M, O}.
Linear matmul_backward_gelu(const OpCheck& check, const Tensor& dpre, const Tensor& dw, const Tensor& dbias,
                            const Tensor& dout, const Tensor& x, const Tensor& w, const Tensor& pre);
// `saved` must have `saved_shape` and `saved_dtype` (the backend's choice for this shape and dtype).
void attention_forward(const OpCheck& check, const Tensor& out, const Tensor& saved, const Tensor& qkv,
                       const AttentionShape& s, const Shape& saved_shape, DType saved_dtype);
void attention_backward(const OpCheck& check, const Tensor& dqkv, const Tensor& dout, const Tensor& qkv,
                        const Tensor& out, const Tensor& saved, const AttentionShape& s, const Shape& saved_shape,
                        DType saved_dtype);
// Returns N (rows of logits).
int64_t cross_entropy(const OpCheck& check, const Tensor& losses, const Tensor& dlogits, const Tensor& logits,
                      const Tensor& targets, int64_t vocab, double label_smoothing);
int64_t cross_entropy_partials(const OpCheck& check, const Tensor& partials, const Tensor& logits_local,
                               const Tensor& targets, int64_t vocab_begin, int64_t vocab);
int64_t cross_entropy_from_partials(const OpCheck& check, const Tensor& losses, const Tensor& dlogits_local,
                                    const Tensor& gathered, const Tensor& logits_local, const Tensor& targets,
                                    int64_t vocab_begin, int64_t vocab, double label_smoothing);
// sum_squares and count_nonfinite: every tensor a storage float.
void float_list(const OpCheck& check, const std::vector<Tensor>& tensors);
// accumulate_sum and accumulate_sum_squares: `total` one F64 element on the device.
void scalar_total(const OpCheck& check, const Tensor& total);
// accumulate_sum: a reduction-dtype x and a positive count.
void accumulate_sum(const OpCheck& check, const Tensor& total, const Tensor& x, double count);
// Also checks hp.step_stats (F64 [kStepStatsSize] on the device, when defined) and hp.max_grad_norm >= 0.
void adamw_update(const OpCheck& check, const Tensor& param, const Tensor& m, const Tensor& v, const Tensor& grad,
                  const Tensor& compute_copy, const AdamWHyper& hp);
// Returns {outer, D, inner}: the tensors viewed as [outer, D, inner] around `axis`.
struct Axis {
  int64_t outer = 1, D = 0, inner = 1;
};
Axis dot_along_axis(const OpCheck& check, const Tensor& out, const Tensor& a, const Tensor& b, int axis);
// Each entry inside x and keep, numel a multiple of size·inner and below 2^31.
void zero_deleted(const OpCheck& check, const Tensor& x, const std::vector<DimensionMask>& dims, const Tensor& keep);
// Returns N (rows of student).
int64_t distillation_loss(const OpCheck& check, const Tensor& losses, const Tensor& dstudent, const Tensor& student,
                          const Tensor& teacher, int64_t classes, double temperature);

}  // namespace op_contract
}  // namespace loom
