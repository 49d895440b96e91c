// LayerNorm forward and backward through the CUDA backend (the path the trainer takes), per width, with the
// bytes each must move at least and the bandwidth that implies; bench/kernels/run.sh runs the PyTorch peer
// (layernorm_peer.py) on the same shapes and prints the ratios.
//
// Floors (e = bytes per element; N rows of C):
//   forward  = N·C·e (read x) + N·C·e (write out) + 2·C·e (w, b) + 8·N (mean, rstd)
//   backward = N·C·e (read x) + N·C·e (read dout) + 2·N·C·e (dx: the backend accumulates into it, read and
//              written) + 8·N (mean, rstd) + C·e (w) + 4·C·e (dw, db read and written)
// The backward's partial sums for dw/db (one f32 row pair per block) are above the floor.
// Times are medians of --reps event-timed calls after --warmup calls, on random inputs.
//
// usage: loom_layernorm_bench [--rows 16384] [--widths 768 ... 8192] [--dtype bf16|f16|f32] [--reps 20]
//                             [--warmup 5] [--json FILE]
#include <CLI/CLI.hpp>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <vector>

#include "bench/bench_util.h"
#include "kernels/backend.h"

int main(int argc, char** argv) {
  CLI::App app{"loom_layernorm_bench: LayerNorm forward/backward bandwidth per width"};
  int64_t rows = 16384;
  std::vector<int64_t> widths = {768, 1024, 1280, 1600, 2048, 2560, 4096, 8192};
  std::string dtype_name = "bf16", json_path;
  int reps = 20, warmup = 5;
  app.add_option("--rows", rows, "rows N (tokens)")->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  app.add_option("--widths", widths, "widths C")->check(CLI::Range(int64_t{1}, int64_t{1} << 16));
  app.add_option("--dtype", dtype_name, "bf16, f16 or f32");
  app.add_option("--reps", reps, "timed calls")->check(CLI::Range(1, 1000));
  app.add_option("--warmup", warmup, "untimed calls first")->check(CLI::Range(0, 1000));
  app.add_option("--json", json_path, "write the numbers here");
  CLI11_PARSE(app, argc, argv);
  try {
    const loom::DType dtype = loom::dtype_from_name(dtype_name, "--dtype");
    const auto backend = loom::make_backend(loom::Device::cuda(0));
    const double peak = loom::bench::peak_dram_bytes_per_s(), e = loom::dtype_size(dtype);
    std::printf("%s, peak DRAM %.0f GB/s, dtype %s, %lld rows\n", backend->name().c_str(), peak / 1e9,
                dtype_name.c_str(), static_cast<long long>(rows));
    std::printf("%6s | %8s %7s %6s %5s | %8s %7s %6s %5s\n", "C", "fwd us", "GB/s", "floor", "%pk", "bwd us", "GB/s",
                "floor", "%pk");
    nlohmann::json out_rows = nlohmann::json::array();
    for (const int64_t C : widths) {
      const int64_t N = rows;
      using loom::Tensor;
      const loom::Device gpu = loom::Device::cuda(0);
      using loom::bench::random_on_gpu;
      const Tensor x = random_on_gpu({N, C}, dtype, 1, -2.f, 3.f), dout = random_on_gpu({N, C}, dtype, 2, -1.f, 1.f);
      const Tensor w = random_on_gpu({C}, dtype, 3, 0.5f, 1.5f), b = random_on_gpu({C}, dtype, 4, -1.f, 1.f);
      Tensor out = Tensor::empty({N, C}, dtype, gpu), mean = Tensor::empty({N}, loom::DType::F32, gpu),
             rstd = Tensor::empty({N}, loom::DType::F32, gpu);
      Tensor dx = Tensor::zeros({N, C}, dtype, gpu), dw = Tensor::zeros({C}, dtype, gpu),
             db = Tensor::zeros({C}, dtype, gpu);
      const double fwd_ms = loom::bench::median_ms(
          [&] { backend->layernorm_forward(out, mean, rstd, x, w, b, 1e-5); }, warmup, reps);
      const double bwd_ms = loom::bench::median_ms(
          [&] { backend->layernorm_backward(dx, dw, db, dout, x, w, mean, rstd); }, warmup, reps);
      backend->synchronize();
      const double nc = double(N) * C;
      const double fwd_bytes = 2 * nc * e + 2 * C * e + 8.0 * N;
      const double bwd_bytes = 4 * nc * e + 8.0 * N + 5 * C * e;
      // Per direction: time, achieved GB/s, the floor's time at peak bandwidth, and that as % of the time.
      const double fwd_floor_us = fwd_bytes / peak * 1e6, bwd_floor_us = bwd_bytes / peak * 1e6;
      std::printf("%6lld | %8.1f %7.0f %6.1f %5.1f | %8.1f %7.0f %6.1f %5.1f\n", static_cast<long long>(C),
                  fwd_ms * 1e3, fwd_bytes / fwd_ms / 1e6, fwd_floor_us, fwd_floor_us / fwd_ms / 10, bwd_ms * 1e3,
                  bwd_bytes / bwd_ms / 1e6, bwd_floor_us, bwd_floor_us / bwd_ms / 10);
      std::fflush(stdout);
      out_rows.push_back({{"width", C}, {"rows", N}, {"fwd_us", fwd_ms * 1e3}, {"bwd_us", bwd_ms * 1e3},
                          {"fwd_bytes", fwd_bytes}, {"bwd_bytes", bwd_bytes}});
    }
    loom::bench::write_json(json_path, {{"card", backend->name()}, {"dtype", dtype_name}, {"peak_bytes_per_s", peak},
                                        {"rows", out_rows}});
    return 0;
  } catch (const std::exception& ex) {
    std::fprintf(stderr, "layernorm_bench: %s\n", ex.what());
    return 1;
  }
}
