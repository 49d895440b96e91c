// The CUDA backend's timed GEMM algorithm choice (GemmAlgorithm::Timed, train.gemm_algorithm: timed) against the
// float64 CPU backend and against the heuristic's choice: linear layers forward and backward (bias or not, dw and
// dbias accumulating, so beta = 1), the epilogues (GELU_AUX_BIAS, DGELU, and BGRADB under
// BiasGradient::GemmEpilogue) and their fallbacks, and the plain attention's strided-batched GEMMs, on ragged
// shapes (above 1024, not multiples of 64) and misaligned views whose arenas are NaN-poisoned around the outputs.
// Checks that the timing leaves no trace the caller sees (accumulated outputs hold one product, nothing outside
// an output is written), that each shape is timed once and keeps its algorithm (a repeat is bit-identical, the
// counts do not move), that deterministic mode keeps the heuristic, and that no timing happens while the stream
// is captured into a CUDA graph.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <iostream>
#include <string>
#include <utility>
#include <vector>

#include "tests/gpu/cuda_backend_test_util.h"

namespace loom::testing_cuda {
namespace {

constexpr int64_t kGuard = 7;  // poisoned elements after each output view

struct LayerCase {
  int64_t N, I, M, O;  // x [N, I], w1 [M, I] (linear and fc1 + GELU), w2 [O, M] (the GELU backward's layer)
  int64_t offset;      // elements before every view in its arena (1: misaligned, the epilogues fall back)
  bool bias;
};

// A view of `shape` at element `offset` of a GPU arena that has kGuard more elements after it.
struct ArenaView {
  Tensor arena, view;
  int64_t offset = 0;
};

struct Named {
  std::string name;
  Tensor value;  // host copy
};

class CudaGemmAlgorithmTest : public CudaBackendTest, public ::testing::WithParamInterface<DType> {
 protected:
  void SetUp() override {
    CudaBackendTest::SetUp();
    if (IsSkipped()) return;
    timed_ = make_backend(Device::cuda(0));
    timed_->set_gemm_algorithm(GemmAlgorithm::Timed);
  }

  // An output view, everything NaN.
  static ArenaView poisoned_view(const Shape& shape, DType dt, int64_t offset) {
    ArenaView a;
    a.arena = poisoned({offset + shape_numel(shape) + kGuard}, dt);
    a.view = a.arena.slice_flat(offset, shape);
    a.offset = offset;
    return a;
  }
  // A view holding `host` (an input, or an output that accumulates), NaN around it.
  static ArenaView view_of(const Tensor& host, int64_t offset) {
    ArenaView a = poisoned_view(host.shape(), host.dtype(), offset);
    a.view.copy_from(on_gpu(host));
    return a;
  }
  // The arena elements outside the view are still NaN: the GEMMs (timed candidates included) wrote nothing
  // there.
  static void expect_poison_kept(const ArenaView& a, const std::string& what) {
    const Tensor host = a.arena.to(Device::cpu()).cast(DType::F64);
    const int64_t end = a.offset + a.view.numel();
    int64_t written = 0;
    for (int64_t i = 0; i < host.numel(); ++i)
      if ((i < a.offset || i >= end) && !std::isnan(host.data<double>()[i])) ++written;
    EXPECT_EQ(written, 0) << what << ": elements outside the output were written";
  }

  // One case's layers on `backend`; returns the outputs (host copies) and checks the poison around them.
  // Linear: out = x·w1ᵀ + b1, then dx, dw1 += doutᵀ·x, db1 += Σ dout. MLP: h = gelu(x·w1ᵀ + b1) (pre saved), then
  // dpre = (dout2·w2) ∘ gelu'(pre), dw2 += dout2ᵀ·h, db2 += Σ dout2.
  std::vector<Named> run_layers(Backend& backend, const LayerCase& c, const std::vector<Tensor>& in) {
    const Tensor &x = in[0], &w1 = in[1], &b1 = in[2], &dout1 = in[3], &dw1_0 = in[4], &db1_0 = in[5];
    const Tensor &w2 = in[6], &dout2 = in[7], &dw2_0 = in[8], &db2_0 = in[9];
    const DType dt = x.dtype();
    const int64_t off = c.offset;
    const ArenaView gx = view_of(x, off), gw1 = view_of(w1, off), gb1 = view_of(b1, off);
    const ArenaView gdout1 = view_of(dout1, off), gw2 = view_of(w2, off), gdout2 = view_of(dout2, off);
    const Tensor bias1 = c.bias ? gb1.view : Tensor();

    ArenaView out = poisoned_view({c.N, c.M}, dt, off);
    backend.matmul_forward(out.view, gx.view, gw1.view, bias1);
    ArenaView dx = poisoned_view({c.N, c.I}, dt, off), dw1 = view_of(dw1_0, off), db1 = view_of(db1_0, off);
    Tensor db1_view = c.bias ? db1.view : Tensor();
    backend.matmul_backward(dx.view, dw1.view, db1_view, gdout1.view, gx.view, gw1.view);

    ArenaView h = poisoned_view({c.N, c.M}, dt, off), pre = poisoned_view({c.N, c.M}, dt, off);
    backend.matmul_gelu_forward(h.view, pre.view, gx.view, gw1.view, bias1, GeluKind::Tanh);
    ArenaView dpre = poisoned_view({c.N, c.M}, dt, off), dw2 = view_of(dw2_0, off), db2 = view_of(db2_0, off);
    Tensor db2_view = c.bias ? db2.view : Tensor();
    backend.matmul_backward_gelu(dpre.view, dw2.view, db2_view, gdout2.view, h.view, gw2.view, pre.view,
                                 GeluKind::Tanh);

    std::vector<Named> results;
    const std::vector<std::pair<std::string, const ArenaView*>> outputs = {
        {"linear out", &out}, {"linear dx", &dx}, {"linear dw", &dw1}, {"linear dbias", &db1}, {"mlp h", &h},
        {"mlp pre", &pre},    {"mlp dpre", &dpre}, {"mlp dw2", &dw2},  {"mlp dbias2", &db2}};
    for (const auto& [name, view] : outputs) {
      expect_poison_kept(*view, name);
      results.push_back({name, view->view.to(Device::cpu())});
    }
    return results;
  }

  // The float64 CPU results of run_layers' ops; the GELU backward reads `gpu`'s h and pre (as the GPU did).
  std::vector<Named> reference_layers(const LayerCase& c, const std::vector<Tensor>& in, const std::vector<Named>& gpu) {
    const Tensor none;
    const Tensor x = as_f64(in[0]), w1 = as_f64(in[1]), b1 = c.bias ? as_f64(in[2]) : none;
    Tensor out = Tensor::empty({c.N, c.M}, DType::F64), dx = Tensor::empty({c.N, c.I}, DType::F64);
    Tensor dw1 = as_f64(in[4]), db1 = as_f64(in[5]), db1_arg = c.bias ? db1 : Tensor();
    cpu_->matmul_forward(out, x, w1, b1);
    cpu_->matmul_backward(dx, dw1, db1_arg, as_f64(in[3]), x, w1);
    Tensor h = Tensor::empty({c.N, c.M}, DType::F64), pre = Tensor::empty({c.N, c.M}, DType::F64);
    cpu_->matmul_gelu_forward(h, pre, x, w1, b1, GeluKind::Tanh);
    Tensor dpre = Tensor::empty({c.N, c.M}, DType::F64), dw2 = as_f64(in[8]), db2 = as_f64(in[9]);
    Tensor db2_arg = c.bias ? db2 : Tensor();
    cpu_->matmul_backward_gelu(dpre, dw2, db2_arg, as_f64(in[7]), as_f64(gpu[4].value), as_f64(in[6]),
                               as_f64(gpu[5].value), GeluKind::Tanh);
    return {{"linear out", out}, {"linear dx", dx}, {"linear dw", dw1}, {"linear dbias", db1}, {"mlp h", h},
            {"mlp pre", pre},    {"mlp dpre", dpre}, {"mlp dw2", dw2},  {"mlp dbias2", db2}};
  }

  std::vector<Tensor> layer_inputs(const LayerCase& c, DType dt) {
    // Weights scaled so pre spreads over about [-3, 3], where GELU is neither linear nor 0.
    const float s1 = 3.f / std::sqrt(static_cast<float>(c.I)), s2 = 3.f / std::sqrt(static_cast<float>(c.M));
    return {random_host({c.N, c.I}, dt), random_host({c.M, c.I}, dt, -s1, s1), random_host({c.M}, dt),
            random_host({c.N, c.M}, dt), random_host({c.M, c.I}, dt),          random_host({c.M}, dt),
            random_host({c.O, c.M}, dt, -s2, s2), random_host({c.N, c.O}, dt), random_host({c.O, c.M}, dt),
            random_host({c.O}, dt)};
  }

  // Plain attention (strided-batched GEMMs over batch·heads) forward and backward on `backend`.
  std::vector<Named> run_attention(Backend& backend, const AttentionShape& s, const Tensor& qkv, const Tensor& dout) {
    const DType dt = qkv.dtype();
    Tensor out = poisoned({s.batch, s.seq, s.out_width()}, dt);
    Tensor saved = poisoned(backend.attention_saved_shape(s), backend.attention_saved_dtype());
    backend.attention_forward(out, saved, on_gpu(qkv), s);
    Tensor dqkv = poisoned({s.batch, s.seq, s.qkv_width()}, dt);
    backend.attention_backward(dqkv, on_gpu(dout), on_gpu(qkv), out, saved, s);
    return {{"attention out", out.to(Device::cpu())}, {"attention dqkv", dqkv.to(Device::cpu())}};
  }

  std::unique_ptr<Backend> timed_;
};

const LayerCase kCases[] = {{1037, 1100, 1032, 1030, 0, true},
                            {1037, 1100, 1032, 1030, 1, true},
                            {300, 96, 200, 72, 0, false},
                            {5, 3, 16, 7, 1, false}};

std::string case_name(const LayerCase& c) {
  return " N=" + std::to_string(c.N) + " I=" + std::to_string(c.I) + " M=" + std::to_string(c.M) +
         " O=" + std::to_string(c.O) + " offset=" + std::to_string(c.offset) + (c.bias ? " (bias)" : " (no bias)");
}

TEST_P(CudaGemmAlgorithmTest, TimedChoiceMatchesCpuAndHeuristicAndIsCachedPerShape) {
  const DType dt = GetParam();
  // 16-bit GEMMs with K above ~1000 may take split-K algorithms whose partial sums are reduced in the output
  // dtype (cuBLASLt's default, which PyTorch's bf16/f16 matmuls also allow): measured on an H100, a few
  // elements in a million of the 1037x1100x1030 cases reached 1.1x the one-rounding tolerance, so 2x it.
  const double tol = dt == DType::F32 ? tolerance(dt) : 2 * tolerance(dt);
  // As in cuda_backend_mlp_gelu_test.cc: the epilogues' GELU has undocumented internal precision, and the
  // unfused path rounds twice; attention rounds P and dS to the activation dtype.
  const double gelu_tol = 2 * tol;
  const double attention_tol = dt == DType::F32 ? 1e-5 : 3 * tolerance(dt);
  const AttentionShape s{.batch = 2, .seq = 70, .heads = 3, .qk_dim = 16, .v_dim = 8, .causal = true, .scale = 0.25};
  const Tensor qkv = random_host({s.batch, s.seq, s.qkv_width()}, dt, -2.f, 2.f);
  const Tensor dout = random_host({s.batch, s.seq, s.out_width()}, dt);
  // The bias gradient by the BGRADB epilogue, so that it is timed too (beta = 1 and an epilogue output); the
  // default path's dw GEMM is the no-bias cases' one, and its column sums are cuda_bias_gradient_test.cc's.
  timed_->set_bias_gradient(BiasGradient::GemmEpilogue);
  gpu_->set_bias_gradient(BiasGradient::GemmEpilogue);

  std::vector<std::vector<Tensor>> inputs;
  std::vector<std::vector<Named>> first_timed;
  for (const LayerCase& c : kCases) {
    const std::string tag = case_name(c);
    inputs.push_back(layer_inputs(c, dt));
    const std::vector<Named> timed = run_layers(*timed_, c, inputs.back());
    const std::vector<Named> heuristic = run_layers(*gpu_, c, inputs.back());
    const std::vector<Named> reference = reference_layers(c, inputs.back(), timed);
    for (size_t i = 0; i < timed.size(); ++i) {
      if (!c.bias && timed[i].name.find("dbias") != std::string::npos) continue;  // not computed
      const bool gelu = timed[i].name == "mlp h" || timed[i].name == "mlp dpre";
      expect_close(timed[i].value, reference[i].value, gelu ? gelu_tol : tol, "timed " + timed[i].name + tag);
      // The heuristic's algorithm and the timed one sum in different orders: equal within the same bound.
      expect_close(timed[i].value, heuristic[i].value, gelu ? gelu_tol : tol,
                   "timed vs heuristic " + timed[i].name + tag);
    }
    first_timed.push_back(timed);
  }
  std::vector<Named> attention = run_attention(*timed_, s, qkv, dout);
  Tensor out_ref = Tensor::empty({s.batch, s.seq, s.out_width()}, DType::F64);
  Tensor saved_ref = Tensor::empty({s.batch, s.heads, s.seq, s.seq}, DType::F64);
  Tensor dqkv_ref = Tensor::empty({s.batch, s.seq, s.qkv_width()}, DType::F64);
  cpu_->attention_forward(out_ref, saved_ref, as_f64(qkv), s);
  cpu_->attention_backward(dqkv_ref, as_f64(dout), as_f64(qkv), out_ref, saved_ref, s);
  expect_close(attention[0].value, out_ref, attention_tol, "timed attention out");
  expect_close(attention[1].value, dqkv_ref, attention_tol, "timed attention dqkv");
  const std::vector<Named> attention_heuristic = run_attention(*gpu_, s, qkv, dout);
  for (size_t i = 0; i < attention.size(); ++i)
    expect_close(attention[i].value, attention_heuristic[i].value, attention_tol, "timed vs heuristic " +
                 attention[i].name);

  const GemmAlgorithmStats first = timed_->gemm_algorithm_stats();
  EXPECT_GT(first.shapes, 0);
  EXPECT_GT(first.timed, 0) << "no shape had two candidates to time";
  EXPECT_LE(first.timed, first.shapes);
  EXPECT_LE(first.replaced, first.timed);
  const GemmAlgorithmStats heuristic = gpu_->gemm_algorithm_stats();
  EXPECT_GT(heuristic.shapes, 0);
  EXPECT_EQ(heuristic.timed, 0);
  std::cout << "timed " << first.timed << " of " << first.shapes << " GEMM shapes (" << dtype_name(dt)
            << "); a candidate replaced the heuristic's first answer in " << first.replaced << std::endl;

  // Every shape is cached: a repeat times nothing and keeps each shape's algorithm, so it is bit-identical.
  for (size_t k = 0; k < std::size(kCases); ++k) {
    const std::vector<Named> again = run_layers(*timed_, kCases[k], inputs[k]);
    for (size_t i = 0; i < again.size(); ++i)
      expect_bitwise_equal(again[i].value, first_timed[k][i].value, again[i].name + case_name(kCases[k]));
  }
  const std::vector<Named> attention_again = run_attention(*timed_, s, qkv, dout);
  for (size_t i = 0; i < attention.size(); ++i)
    expect_bitwise_equal(attention_again[i].value, attention[i].value, attention[i].name);
  const GemmAlgorithmStats repeat = timed_->gemm_algorithm_stats();
  EXPECT_EQ(repeat.shapes, first.shapes);
  EXPECT_EQ(repeat.timed, first.timed);
  EXPECT_EQ(repeat.replaced, first.replaced);
}

TEST_P(CudaGemmAlgorithmTest, DeterministicModeKeepsTheHeuristic) {
  const DType dt = GetParam();
  const LayerCase c{300, 96, 200, 72, 0, true};
  const std::vector<Tensor> in = layer_inputs(c, dt);
  timed_->set_deterministic(true);  // after set_gemm_algorithm(Timed): the heuristic all the same
  const std::vector<Named> deterministic = run_layers(*timed_, c, in);
  const std::vector<Named> heuristic = run_layers(*gpu_, c, in);
  EXPECT_GT(timed_->gemm_algorithm_stats().shapes, 0);
  EXPECT_EQ(timed_->gemm_algorithm_stats().timed, 0);
  for (size_t i = 0; i < heuristic.size(); ++i)  // the same algorithms: the same bits
    expect_bitwise_equal(deterministic[i].value, heuristic[i].value, heuristic[i].name);
}

TEST_P(CudaGemmAlgorithmTest, NoTimingWhileTheStreamIsCaptured) {
  const DType dt = GetParam();
  const int64_t N = 515, I = 1040, O = 1090;
  const Tensor x_host = random_host({N, I}, dt), w_host = random_host({O, I}, dt);
  const Tensor x = on_gpu(x_host), w = on_gpu(w_host);
  Tensor out = poisoned({N, O}, dt);
  auto stream = static_cast<cudaStream_t>(timed_->native_stream());
  timed_->synchronize();
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed), cudaSuccess);
  timed_->matmul_forward(out, x, w, Tensor());  // no bias: nothing to allocate while capturing
  cudaGraph_t graph = nullptr;
  ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
  EXPECT_EQ(timed_->gemm_algorithm_stats().shapes, 1);
  EXPECT_EQ(timed_->gemm_algorithm_stats().timed, 0) << "timed while capturing";
  cudaGraphExec_t exec = nullptr;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
  timed_->synchronize();
  EXPECT_EQ(cudaGraphExecDestroy(exec), cudaSuccess);
  EXPECT_EQ(cudaGraphDestroy(graph), cudaSuccess);
  Tensor ref = Tensor::empty({N, O}, DType::F64);
  cpu_->matmul_forward(ref, as_f64(x_host), as_f64(w_host), Tensor());
  const double tol = dt == DType::F32 ? tolerance(dt) : 2 * tolerance(dt);  // K = 1040: see above
  expect_close(out, ref, tol, "matmul_forward from a captured graph");
  // The shape keeps the heuristic's answer outside the capture too: nothing more is timed.
  timed_->matmul_forward(out, x, w, Tensor());
  timed_->synchronize();
  EXPECT_EQ(timed_->gemm_algorithm_stats().timed, 0);
  expect_close(out, ref, tol, "matmul_forward after the capture");
}

INSTANTIATE_TEST_SUITE_P(Dtypes, CudaGemmAlgorithmTest, ::testing::Values(DType::F32, DType::BF16),
                         dtype_param_name);

}  // namespace
}  // namespace loom::testing_cuda
