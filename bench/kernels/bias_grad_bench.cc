// The bias gradient of every linear layer's backward through the CUDA backend, both Backend::set_bias_gradient
// paths, at the shapes of GPT-2 124M (N 16384 = B16×T1024, C 768, 12 blocks), GPT-2 1.3B (N 8192, C 2048,
// 24 blocks) and DeiT-B (N 25216 = 128 images × 197 tokens, C 768, 12 blocks). Per layer of a block (qkv C→3C,
// proj C→C, fc1 C→4C, fc2 4C→C), matmul_backward without dx (the call the backward makes for dw and dbias):
//   dw      the weight-gradient GEMM alone (no bias)
//   colsum  BiasGradient::ColumnSums: the same GEMM without an epilogue, then our column-sum kernel into dbias
//   bgradb  BiasGradient::GemmEpilogue: the GEMM with cuBLASLt's BGRADB epilogue, then an accumulate into dbias
// "cost" is a path's time minus dw's (the bias gradient's share; as in training, the column sums run right after
// the GEMM that read dout, so what of dout is still in L2 is read from there); "kernel" the column sums alone
// (add_position_backward over dout viewed as [N, 1, O] runs the same launcher), cycling through copies of dout
// that together are twice the L2 cache, so each call reads from DRAM; with its bandwidth and the floor: reading
// dout once, N·O·e bytes at the card's peak DRAM bandwidth. Times are medians of --reps event-timed samples of
// --batch back-to-back calls (ms per call), after --warmup samples, on random inputs.
//
// usage: loom_bias_grad_bench [--models gpt2-124m gpt2-1.3b deit-b] [--dtype bf16|f16|f32]
//                             [--gemm-algorithm timed|heuristic] [--reps 20] [--warmup 3] [--batch 10]
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "kernels/backend.h"

namespace {

using loom::Backend;
using loom::BiasGradient;
using loom::Tensor;

struct Model {
  int64_t tokens, width, blocks;
};

const std::map<std::string, Model>& models() {
  static const std::map<std::string, Model> m = {
      {"gpt2-124m", {16 * 1024, 768, 12}}, {"gpt2-1.3b", {8 * 1024, 2048, 24}}, {"deit-b", {128 * 197, 768, 12}}};
  return m;
}

struct Times {
  double dw, colsum, bgradb, kernel;
};

Times time_layer(Backend& backend, int64_t N, int64_t I, int64_t O, loom::DType dt, int warmup, int reps,
                 int batch) {
  using loom::bench::random_on_gpu;
  const loom::Device gpu = loom::Device::cuda(0);
  const Tensor x = random_on_gpu({N, I}, dt, 1, -1.f, 1.f), w = random_on_gpu({O, I}, dt, 2, -0.05f, 0.05f);
  // Gradient-sized values: dw and dbias accumulate hundreds of calls and must stay finite in f16.
  const Tensor dout = random_on_gpu({N, O}, dt, 3, -1e-3f, 1e-3f);
  Tensor dw = Tensor::zeros({O, I}, dt, gpu), dbias = Tensor::zeros({O}, dt, gpu), no_dx, no_bias;
  Tensor dpos = Tensor::zeros({1, O}, dt, gpu);
  int device = 0, l2_bytes = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  CUDA_CHECK(cudaDeviceGetAttribute(&l2_bytes, cudaDevAttrL2CacheSize, device));
  const int64_t copies = std::max<int64_t>(1, (2 * int64_t{l2_bytes} + dout.nbytes() - 1) / dout.nbytes());
  std::vector<Tensor> douts_as_positions;  // [N, 1, O]: T = 1 position, so dpos[0, :] += Σ_n dout[n, :]
  for (int64_t i = 0; i < copies; ++i) {
    Tensor copy = Tensor::empty({N, 1, O}, dt, gpu);
    copy.copy_from(dout.view({N, 1, O}));
    douts_as_positions.push_back(copy);
  }
  size_t next_copy = 0;
  const auto per_call = [&](const std::function<void()>& call) {
    const std::function<void()> sample = [&] {
      for (int i = 0; i < batch; ++i) call();
    };
    return loom::bench::median_ms(sample, warmup, reps) / batch;
  };
  Times t{};
  t.dw = per_call([&] { backend.matmul_backward(no_dx, dw, no_bias, dout, x, w); });
  backend.set_bias_gradient(BiasGradient::ColumnSums);
  t.colsum = per_call([&] { backend.matmul_backward(no_dx, dw, dbias, dout, x, w); });
  backend.set_bias_gradient(BiasGradient::GemmEpilogue);
  t.bgradb = per_call([&] { backend.matmul_backward(no_dx, dw, dbias, dout, x, w); });
  t.kernel = per_call([&] {
    backend.add_position_backward(dpos, douts_as_positions[next_copy]);
    next_copy = (next_copy + 1) % douts_as_positions.size();
  });
  backend.synchronize();
  return t;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"loom_bias_grad_bench: a linear layer's bias gradient, our column sums against cuBLASLt's BGRADB"};
  std::vector<std::string> names = {"gpt2-124m", "gpt2-1.3b", "deit-b"};
  std::string dtype_name = "bf16", algorithm = "timed";
  int reps = 20, warmup = 3, batch = 10;
  app.add_option("--models", names, "model shapes")->check(CLI::IsMember({"gpt2-124m", "gpt2-1.3b", "deit-b"}));
  app.add_option("--dtype", dtype_name, "bf16, f16 or f32");
  app.add_option("--gemm-algorithm", algorithm, "timed (train.gemm_algorithm's default) or heuristic")
      ->check(CLI::IsMember({"timed", "heuristic"}));
  app.add_option("--reps", reps, "timed samples")->check(CLI::Range(1, 1000));
  app.add_option("--warmup", warmup, "untimed samples first (at least 1: the timed GEMM choice happens there)")
      ->check(CLI::Range(1, 1000));
  app.add_option("--batch", batch, "back-to-back calls per sample")->check(CLI::Range(1, 1000));
  CLI11_PARSE(app, argc, argv);
  try {
    const loom::DType dtype = loom::dtype_from_name(dtype_name, "--dtype");
    const double elem_bytes = static_cast<double>(loom::dtype_size(dtype));
    const auto backend = loom::make_backend(loom::Device::cuda(0));
    backend->set_gemm_algorithm(algorithm == "timed" ? loom::GemmAlgorithm::Timed : loom::GemmAlgorithm::Heuristic);
    const double peak = loom::bench::peak_dram_bytes_per_s();
    std::printf("%s, dtype %s, GEMM algorithm %s, peak DRAM %.0f GB/s; ms per call\n", backend->name().c_str(),
                dtype_name.c_str(), algorithm.c_str(), peak / 1e9);
    std::printf("%-9s %-5s %6s %5s %5s | %8s %8s %8s %7s | %8s %8s %7s | %8s %8s %6s\n", "model", "layer", "N",
                "I", "O", "dw", "colsum", "bgradb", "bg/cs", "cs cost", "bg cost", "bg/cs", "kernel", "floor",
                "GB/s");
    for (const std::string& name : names) {
      const Model& m = models().at(name);
      const int64_t C = m.width;
      struct Layer {
        const char* name;
        int64_t in, out;
      };
      double step_colsum = 0, step_bgradb = 0, step_dw = 0, step_floor = 0;
      for (const Layer& l : {Layer{"qkv", C, 3 * C}, Layer{"proj", C, C}, Layer{"fc1", C, 4 * C},
                             Layer{"fc2", 4 * C, C}}) {
        const Times t = time_layer(*backend, m.tokens, l.in, l.out, dtype, warmup, reps, batch);
        const double bytes = static_cast<double>(m.tokens) * static_cast<double>(l.out) * elem_bytes;
        const double floor_ms = bytes / peak * 1e3;
        const double cs_cost = t.colsum - t.dw, bg_cost = t.bgradb - t.dw;
        std::printf("%-9s %-5s %6lld %5lld %5lld | %8.4f %8.4f %8.4f %7.3f | %8.4f %8.4f %7.3f | %8.4f %8.4f %6.0f\n",
                    name.c_str(), l.name, static_cast<long long>(m.tokens), static_cast<long long>(l.in),
                    static_cast<long long>(l.out), t.dw, t.colsum, t.bgradb, t.bgradb / t.colsum, cs_cost, bg_cost,
                    bg_cost / cs_cost, t.kernel, floor_ms, bytes / (t.kernel * 1e-3) / 1e9);
        std::fflush(stdout);
        step_dw += t.dw * m.blocks;
        step_colsum += t.colsum * m.blocks;
        step_bgradb += t.bgradb * m.blocks;
        step_floor += floor_ms * m.blocks;
      }
      std::printf("%s per step (%lld blocks): dw+dbias colsum %.3f ms, bgradb %.3f ms (%.3fx); bias gradient "
                  "colsum %.3f ms, bgradb %.3f ms, floor %.3f ms\n",
                  name.c_str(), static_cast<long long>(m.blocks), step_colsum, step_bgradb, step_bgradb / step_colsum,
                  step_colsum - step_dw, step_bgradb - step_dw, step_floor);
    }
    return 0;
  } catch (const std::exception& ex) {
    std::fprintf(stderr, "bias_grad_bench: %s\n", ex.what());
    return 1;
  }
}
