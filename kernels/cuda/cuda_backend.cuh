// CudaBackend: the class behind make_cuda_backend() (internal to kernels/cuda; see cuda_backend.h for the
// contract). Its methods are defined across cuda_backend.cu (validation, memory, elementwise, loss,
// optimizer), cuda_matmul.cu and cuda_attention.cu.
#pragma once
#include <cuda_runtime.h>

#include <memory>
#include <string>

#include "kernels/backend.h"
#include "kernels/op_contract.h"
#include "kernels/cuda/cuda_gemm.cuh"

namespace loom::cuda {

// For the tanh GELU: "" when a linear layer + GELU of output width `width` can take the cuBLASLt GELU epilogues
// (given 16-byte aligned buffers), else what runs instead and why. The erf form never takes them (cuBLASLt's GELU
// is the tanh form) and gets "": that is not a width's fault, so slow_paths does not report it.
std::string gelu_epilogue_rule(GeluKind kind, DType dtype, int64_t width);

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int device);
  ~CudaBackend() override;

  Device device() const override { return Device::cuda(device_); }
  std::string name() const override { return name_; }
  // The dtypes this backend takes (f32, bf16, f16 activations; f32 statistics, losses, master weights; ids
  // checked on the device), and the argument checks of one call of `op` (kernels/op_contract.h).
  static const BackendDtypes& dtypes();
  OpCheck op_check(const char* op) const { return OpCheck(op, device(), dtypes()); }
  void synchronize() override;
  // One pinned copy and one wait (with the invalid-input flag's copy): one read for cuda_host_reads().
  std::vector<double> synchronize_and_read(const Tensor& x) override;
  // The stream all of this backend's work is queued on (for kernels added from other files).
  cudaStream_t stream() const { return stream_; }
  void* native_stream() const override { return stream_; }
  // A CUDA event (with timing) on this backend's device.
  std::unique_ptr<WorkMarker> make_marker() const override;
  // Flash attention (bf16/f16, head dims kernels/cuda/flash_attention.h supports), the vectorised LayerNorm
  // (cuda_ops.cuh: layernorm_vectorised_rule) and the GELU GEMM epilogues (tanh GELU, bf16/f16, mlp_dim % 8).
  std::vector<SlowPath> slow_paths(const BlockKernelShape& shape, DType dtype) const override;

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

  void layernorm_forward(Tensor& out, Tensor& mean, Tensor& rstd, const Tensor& x, const Tensor& w,
                         const Tensor& b, double eps, int64_t channels = 0) override;
  void layernorm_backward(Tensor& dx, Tensor& dw, Tensor& db, const Tensor& dout, const Tensor& x,
                          const Tensor& w, const Tensor& mean, const Tensor& rstd, int64_t channels = 0) override;

  void matmul_forward(Tensor& out, const Tensor& x, const Tensor& w, const Tensor& bias) override;
  void matmul_residual_forward(Tensor& out, const Tensor& x, const Tensor& w, const Tensor& bias,
                               const Tensor& residual) override;
  void matmul_backward(Tensor& dx, Tensor& dw, Tensor& dbias, const Tensor& dout, const Tensor& x,
                       const Tensor& w) override;
  void matmul_gelu_forward(Tensor& out, Tensor& pre, const Tensor& x, const Tensor& w, const Tensor& bias,
                           GeluKind kind) override;
  void matmul_backward_gelu(Tensor& dpre, Tensor& dw, Tensor& dbias, const Tensor& dout, const Tensor& x,
                            const Tensor& w, const Tensor& pre, GeluKind kind) override;

  void gelu_forward(Tensor& out, const Tensor& x, GeluKind kind) override;
  void gelu_backward(Tensor& dx, const Tensor& dout, const Tensor& x, GeluKind kind) override;

  // The plain (materialised) attention saves the probabilities [B, H, T, T] in f32; flash attention (bf16/f16
  // activations, head dims it supports) saves the row logsumexp [B, H, T] in f32. A saved tensor of 3
  // dimensions selects the flash kernels.
  Shape attention_saved_shape(const AttentionShape& s) const override { return {s.batch, s.heads, s.seq, s.seq}; }
  Shape attention_saved_shape(const AttentionShape& s, DType dtype) const override;
  void set_deterministic(bool deterministic) override;
  // Timed applies only outside deterministic mode (a timed choice may differ between two runs).
  void set_gemm_algorithm(GemmAlgorithm algorithm) override;
  GemmAlgorithmStats gemm_algorithm_stats() const override { return gemm_->stats(); }
  void set_bias_gradient(BiasGradient choice) override { bias_gradient_ = choice; }
  DType attention_saved_dtype() const override { return DType::F32; }
  void attention_forward(Tensor& out, Tensor& saved, const Tensor& qkv, const AttentionShape& s) override;
  void attention_backward(Tensor& dqkv, const Tensor& dout, const Tensor& qkv, const Tensor& out,
                          const Tensor& saved, const AttentionShape& s) override;

  void cross_entropy(Tensor& losses, Tensor& dlogits, const Tensor& logits, const Tensor& targets,
                     int64_t vocab, double dloss, double label_smoothing) override;
  // partials, gathered and losses are f32.
  void cross_entropy_partials(Tensor& partials, const Tensor& logits_local, const Tensor& targets,
                              int64_t vocab_begin, int64_t vocab) override;
  void cross_entropy_from_partials(Tensor& losses, Tensor& dlogits_local, const Tensor& gathered,
                                   const Tensor& logits_local, const Tensor& targets, int64_t vocab_begin,
                                   int64_t vocab, double dloss, double label_smoothing) override;
  // x f32 (the losses).
  void accumulate_sum(Tensor& total, const Tensor& x, double weight, double count) override;

  void accumulate_sum_squares(Tensor& total, const std::vector<Tensor>& tensors) override;
  void adamw_update(Tensor& param, Tensor& m, Tensor& v, const Tensor& grad, Tensor& compute_copy,
                    const AdamWHyper& hp, double weight_decay) override;

  // Finiteness (cuda_finite.cu).
  int64_t count_nonfinite(const std::vector<Tensor>& tensors) override;

  // ==== structural pruning (cuda_pruning.cu) ====
  void dot_along_axis(Tensor& out, const Tensor& a, const Tensor& b, int axis) override;
  void zero_deleted(Tensor& x, const std::vector<DimensionMask>& dims, const Tensor& keep) override;
  void distillation_loss(Tensor& losses, Tensor& dstudent, const Tensor& student, const Tensor& teacher,
                         int64_t classes, double temperature, double dloss) override;
  // ==== end structural pruning ====

 private:
  // Makes this backend's device current for the calling thread (allocations and launches go to it).
  void activate() const;
  void check_error_flag();
  // matmul_forward's GEMM, with `residual` (null: none) as its C; the shapes are checked.
  void linear_forward(Tensor& out, const Tensor& x, const Tensor& w, const Tensor& bias, const void* residual,
                      int64_t N, int64_t I, int64_t O);

  int device_ = 0;
  std::string name_;
  cudaStream_t stream_ = nullptr;
  int* error_flag_ = nullptr;        // device int, bits of ErrorBit
  int* error_flag_host_ = nullptr;   // pinned copy read by synchronize()
  double* read_buffer_ = nullptr;    // pinned, for synchronize_and_read()
  int64_t read_capacity_ = 0;        // doubles in read_buffer_
  std::unique_ptr<Gemm> gemm_;
  bool deterministic_ = false;
  GemmAlgorithm gemm_algorithm_ = GemmAlgorithm::Heuristic;  // as set; gemm_ gets Heuristic when deterministic_
  BiasGradient bias_gradient_ = BiasGradient::ColumnSums;
};

// Blocks the host until `stream` has done its queued work, which ends with device-to-host copies the caller
// needs: the one way this backend waits for device data (synchronize(), count_nonfinite()), counted, with the
// Tensor copies to the host, by cuda_host_reads() (cuda_allocator.cu).
void wait_for_host_read(cudaStream_t stream);

// Installs the caching allocator and the copy function on first use, and tells the allocator that a backend
// runs on `device` (cuda_allocator.cu).
void install_cuda_memory_hooks(int device);

}  // namespace loom::cuda
