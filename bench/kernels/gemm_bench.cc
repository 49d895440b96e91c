// The GEMMs of a GPT block and head through the CUDA backend (the path the trainer takes), with cuBLASLt's
// heuristic algorithm and with the timed choice (train.gemm_algorithm), per model width: forward (bias epilogue;
// fc1 with the GELU_AUX_BIAS epilogue) and backward (dx, and dw += with the BGRADB epilogue; fc2's dx with
// DGELU). Times are medians of --reps event-timed calls after --warmup calls (the timed backend's first call
// does its timing there), on random inputs; TFLOP/s counts 2·N·I·O per GEMM.
//
// usage: loom_gemm_bench [--tokens 8192] [--widths 768 ... 2560] [--vocab 50304] [--dtype bf16|f16|f32]
//                        [--reps 20] [--warmup 3]
#include <CLI/CLI.hpp>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "kernels/backend.h"

namespace {

using loom::Backend;
using loom::Tensor;

struct Linear {
  std::string name;
  int64_t in, out;
  bool gelu_after;   // fc1: the forward takes the GELU epilogue
  bool gelu_before;  // fc2: the backward's dx takes the DGELU epilogue (its input came out of a GELU)
  bool bias;
};

// Forward and backward milliseconds of one linear layer of N rows on `backend`.
std::pair<double, double> time_linear(Backend& backend, const Linear& l, int64_t N, loom::DType dt, int warmup,
                                      int reps) {
  using loom::bench::random_on_gpu;
  const loom::Device gpu = loom::Device::cuda(0);
  const Tensor x = random_on_gpu({N, l.in}, dt, 1, -1.f, 1.f), w = random_on_gpu({l.out, l.in}, dt, 2, -0.05f, 0.05f);
  const Tensor bias = l.bias ? random_on_gpu({l.out}, dt, 3, -1.f, 1.f) : Tensor();
  const Tensor dout = random_on_gpu({N, l.out}, dt, 4, -1.f, 1.f);
  const Tensor pre_in = random_on_gpu({N, l.in}, dt, 5, -3.f, 3.f);  // fc2's input before GELU
  Tensor out = Tensor::empty({N, l.out}, dt, gpu), pre = Tensor::empty({N, l.out}, dt, gpu);
  Tensor dx = Tensor::empty({N, l.in}, dt, gpu), dw = Tensor::zeros({l.out, l.in}, dt, gpu);
  Tensor db = l.bias ? Tensor::zeros({l.out}, dt, gpu) : Tensor();
  const std::function<void()> forward = [&] {
    if (l.gelu_after)
      backend.matmul_gelu_forward(out, pre, x, w, bias, loom::GeluKind::Tanh);
    else
      backend.matmul_forward(out, x, w, bias);
  };
  const std::function<void()> backward = [&] {
    if (l.gelu_before)
      backend.matmul_backward_gelu(dx, dw, db, dout, x, w, pre_in, loom::GeluKind::Tanh);
    else
      backend.matmul_backward(dx, dw, db, dout, x, w);
  };
  const double fwd = loom::bench::median_ms(forward, warmup, reps);
  const double bwd = loom::bench::median_ms(backward, warmup, reps);
  backend.synchronize();
  return {fwd, bwd};
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"loom_gemm_bench: a GPT's GEMMs with cuBLASLt's heuristic algorithm and the timed choice"};
  int64_t tokens = 8192, vocab = 50304;
  std::vector<int64_t> widths = {768, 1024, 1280, 1600, 2048, 2560};
  std::string dtype_name = "bf16";
  int reps = 20, warmup = 3;
  app.add_option("--tokens", tokens, "rows N (batch × sequence)")->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  app.add_option("--widths", widths, "model widths C (MLP 4C)")->check(CLI::Range(int64_t{8}, int64_t{1} << 16));
  app.add_option("--vocab", vocab, "padded vocabulary (the head; 0: no head)")->check(CLI::Range(int64_t{0}, int64_t{1} << 20));
  app.add_option("--dtype", dtype_name, "bf16, f16 or f32");
  app.add_option("--reps", reps, "timed calls")->check(CLI::Range(1, 1000));
  app.add_option("--warmup", warmup, "untimed calls first (at least 1: the timed choice happens there)")
      ->check(CLI::Range(1, 1000));
  CLI11_PARSE(app, argc, argv);
  try {
    const loom::DType dtype = loom::dtype_from_name(dtype_name, "--dtype");
    const auto heuristic = loom::make_backend(loom::Device::cuda(0));
    const auto timed = loom::make_backend(loom::Device::cuda(0));
    timed->set_gemm_algorithm(loom::GemmAlgorithm::Timed);
    std::printf("%s, dtype %s, N = %lld rows; ms per call (heuristic / timed) and timed's TFLOP/s\n",
                heuristic->name().c_str(), dtype_name.c_str(), static_cast<long long>(tokens));
    std::printf("%6s %-5s %6s %6s | %8s %8s %6s %6s | %8s %8s %6s %6s\n", "C", "layer", "in", "out", "fwd heur",
                "fwd timed", "ratio", "TF/s", "bwd heur", "bwd timed", "ratio", "TF/s");
    double total_heuristic = 0, total_timed = 0;
    for (const int64_t C : widths) {
      std::vector<Linear> layers = {{"qkv", C, 3 * C, false, false, true},
                                    {"proj", C, C, false, false, true},
                                    {"fc1", C, 4 * C, true, false, true},
                                    {"fc2", 4 * C, C, false, true, true}};
      if (vocab > 0) layers.push_back({"head", C, vocab, false, false, false});
      for (const Linear& l : layers) {
        const auto [hf, hb] = time_linear(*heuristic, l, tokens, dtype, warmup, reps);
        const auto [tf, tb] = time_linear(*timed, l, tokens, dtype, warmup, reps);
        const double flops = 2.0 * static_cast<double>(tokens) * static_cast<double>(l.in) * static_cast<double>(l.out);
        std::printf("%6lld %-5s %6lld %6lld | %8.3f %8.3f %6.3f %6.0f | %8.3f %8.3f %6.3f %6.0f\n",
                    static_cast<long long>(C), l.name.c_str(), static_cast<long long>(l.in),
                    static_cast<long long>(l.out), hf, tf, hf / tf, flops / tf / 1e9, hb, tb, hb / tb,
                    2 * flops / tb / 1e9);
        std::fflush(stdout);
        total_heuristic += hf + hb;
        total_timed += tf + tb;
      }
    }
    const loom::GemmAlgorithmStats stats = timed->gemm_algorithm_stats();
    std::printf("sum of all rows: heuristic %.3f ms, timed %.3f ms (%.3fx); timed %lld of %lld GEMM shapes, a "
                "candidate replaced the heuristic's first answer in %lld\n",
                total_heuristic, total_timed, total_heuristic / total_timed, static_cast<long long>(stats.timed),
                static_cast<long long>(stats.shapes), static_cast<long long>(stats.replaced));
    return 0;
  } catch (const std::exception& ex) {
    std::fprintf(stderr, "gemm_bench: %s\n", ex.what());
    return 1;
  }
}
