// Fused cross-entropy (loss and gradient in one pass, Backend::cross_entropy, the path the trainer takes) at
// the GPT-2 vocabulary, with the bytes it must move at least and the bandwidth that implies;
// bench/kernels/run.sh runs the PyTorch peer (cross_entropy_peer.py) on the same shape and prints the ratios.
//
// Floor (e = bytes per element; N rows of Vp padded columns): N·Vp·e (read the logits once) + N·Vp·e (write the
// gradient once) + 8·N (targets, losses). The gradient goes to its own buffer here (the trainer writes it over
// the logits; the traffic is the same), so every call sees the same logits.
// Times are medians of --reps event-timed calls after --warmup calls, on random logits in [-6, 6).
//
// usage: loom_cross_entropy_bench [--rows 16384] [--vocab 50257] [--padded 50304] [--dtype bf16|f16|f32]
//                                 [--reps 20] [--warmup 5] [--json FILE]
#include <CLI/CLI.hpp>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <vector>

#include "bench/bench_util.h"
#include "kernels/backend.h"

int main(int argc, char** argv) {
  CLI::App app{"loom_cross_entropy_bench: fused cross-entropy bandwidth"};
  int64_t rows = 16384, vocab = 50257, padded = 50304;
  std::string dtype_name = "bf16", json_path;
  int reps = 20, warmup = 5;
  app.add_option("--rows", rows, "rows N (tokens)")->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  app.add_option("--vocab", vocab, "classes")->check(CLI::Range(int64_t{1}, int64_t{1} << 24));
  app.add_option("--padded", padded, "columns of the logits (>= vocab)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 24));
  app.add_option("--dtype", dtype_name, "bf16, f16 or f32");
  app.add_option("--reps", reps, "timed calls")->check(CLI::Range(1, 1000));
  app.add_option("--warmup", warmup, "untimed calls first")->check(CLI::Range(0, 1000));
  app.add_option("--json", json_path, "write the numbers here");
  CLI11_PARSE(app, argc, argv);
  try {
    LOOM_CHECK(padded >= vocab, "cross_entropy_bench: --padded ", padded, " is below --vocab ", vocab);
    const loom::DType dtype = loom::dtype_from_name(dtype_name, "--dtype");
    const auto backend = loom::make_backend(loom::Device::cuda(0));
    const double peak = loom::bench::peak_dram_bytes_per_s(), e = loom::dtype_size(dtype);
    using loom::Tensor;
    const loom::Device gpu = loom::Device::cuda(0);
    const Tensor logits = loom::bench::random_on_gpu({rows, padded}, dtype, 1, -6.f, 6.f);
    std::vector<int32_t> t(static_cast<size_t>(rows));
    uint64_t x = 12345;
    for (auto& v : t) x = x * 6364136223846793005ull + 1442695040888963407ull, v = int32_t((x >> 33) % vocab);
    const Tensor targets = Tensor::from_ints(t, {rows}).to(gpu);
    Tensor losses = Tensor::empty({rows}, loom::DType::F32, gpu), dlogits = Tensor::empty({rows, padded}, dtype, gpu);
    const double ms = loom::bench::median_ms(
        [&] { backend->cross_entropy(losses, dlogits, logits, targets, vocab, 1.0 / double(rows), 0.0); }, warmup,
        reps);
    backend->synchronize();
    const double bytes = 2.0 * double(rows) * padded * e + 8.0 * rows, floor_us = bytes / peak * 1e6;
    std::printf("%s, peak DRAM %.0f GB/s, dtype %s\n", backend->name().c_str(), peak / 1e9, dtype_name.c_str());
    std::printf("cross_entropy N=%lld Vp=%lld: %.1f us, %.0f GB/s, floor %.1f us (%.1f%% of the time)\n",
                static_cast<long long>(rows), static_cast<long long>(padded), ms * 1e3, bytes / ms / 1e6, floor_us,
                floor_us / ms / 10);
    loom::bench::write_json(json_path, {{"card", backend->name()}, {"dtype", dtype_name}, {"peak_bytes_per_s", peak},
                                        {"rows", rows}, {"padded", padded}, {"vocab", vocab}, {"us", ms * 1e3},
                                        {"bytes", bytes}});
    return 0;
  } catch (const std::exception& ex) {
    std::fprintf(stderr, "cross_entropy_bench: %s\n", ex.what());
    return 1;
  }
}
