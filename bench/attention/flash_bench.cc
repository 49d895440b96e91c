// Flash-attention throughput over the same grid as ../shared/baselines/attention.py (tokens = batch·seq and
// hidden = heads·dim held fixed), so the two tables line up cell by cell.
//
// FLOP convention (the peers'): fwd = 4·b·h·s²·d (halved when causal), bwd = 2.5·fwd. Times are medians of
// `--reps` event-timed runs after `--warmup` runs, on random inputs (never zeros). "loom" rows use the atomic
// dQ backward, "loom-det" rows the deterministic one.
//
// usage: loom_flash_bench [--dims 64 128] [--seqlens 512 ... 16384] [--tokens 16384] [--hidden 2048]
//                         [--dtype bf16|f16] [--reps 10] [--warmup 3] [--json FILE]
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bench/bench_timing.h"
#include "core/dtype.h"
#include "core/error.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/flash_attention.h"

namespace {

struct Options {
  std::vector<int> dims = {64, 128};
  std::vector<int> seqlens = {512, 1024, 2048, 4096, 8192, 16384};
  int64_t tokens = 16384, hidden = 2048;
  loom::DType dtype = loom::DType::BF16;
  int reps = 10, warmup = 3;
  std::string json;
};

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto ints = [&](std::vector<int>& v) {
      v.clear();
      while (i + 1 < argc && argv[i + 1][0] != '-') v.push_back(std::stoi(argv[++i]));
    };
    auto next = [&]() -> std::string {
      LOOM_CHECK(i + 1 < argc, "flash_bench: ", a, " needs a value");
      return argv[++i];
    };
    if (a == "--dims") ints(o.dims);
    else if (a == "--seqlens") ints(o.seqlens);
    else if (a == "--tokens") o.tokens = std::stoll(next());
    else if (a == "--hidden") o.hidden = std::stoll(next());
    else if (a == "--dtype") o.dtype = loom::dtype_from_name(next(), "--dtype");
    else if (a == "--reps") o.reps = std::stoi(next());
    else if (a == "--warmup") o.warmup = std::stoi(next());
    else if (a == "--json") o.json = next();
    else loom::fail("flash_bench: unknown argument ", a);
  }
  return o;
}

}  // namespace

int main(int argc, char** argv) try {
  const Options o = parse(argc, argv);
  cudaDeviceProp prop{};
  CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("%s, %d SMs, dtype %s\n", prop.name, prop.multiProcessorCount, loom::dtype_name(o.dtype));
  std::printf("%-9s %4s %6s %6s %6s %6s %6s  TFLOP/s\n", "backend", "d", "causal", "seqlen", "fwd", "bwd", "f+b");

  // All cells share tokens·hidden, so one set of buffers serves the whole grid.
  const size_t qkv_elems = o.tokens * 3 * o.hidden, out_elems = o.tokens * o.hidden;
  std::vector<uint16_t> host(qkv_elems);
  void *qkv, *out, *dout, *dqkv, *ws;
  float* lse;
  CUDA_CHECK(cudaMalloc(&qkv, qkv_elems * 2));
  CUDA_CHECK(cudaMalloc(&dqkv, qkv_elems * 2));
  CUDA_CHECK(cudaMalloc(&out, out_elems * 2));
  CUDA_CHECK(cudaMalloc(&dout, out_elems * 2));
  loom::bench::fill_random(host, o.dtype, 12345);
  CUDA_CHECK(cudaMemcpy(qkv, host.data(), qkv_elems * 2, cudaMemcpyHostToDevice));
  loom::bench::fill_random(host, o.dtype, 777);
  CUDA_CHECK(cudaMemcpy(dout, host.data(), out_elems * 2, cudaMemcpyHostToDevice));
  size_t ws_bytes = 0;
  int64_t max_rows = 0;
  for (int d : o.dims) max_rows = std::max(max_rows, o.tokens * (o.hidden / d));
  {
    loom::AttentionShape s;
    s.batch = 1, s.seq = o.tokens, s.heads = o.hidden / *std::min_element(o.dims.begin(), o.dims.end());
    s.qk_dim = s.v_dim = *std::min_element(o.dims.begin(), o.dims.end());
    ws_bytes = loom::cuda::flash_attention_backward_workspace_bytes(s, false);
  }
  CUDA_CHECK(cudaMalloc(&ws, ws_bytes));
  CUDA_CHECK(cudaMalloc(&lse, max_rows * sizeof(float)));

  nlohmann::json rows = nlohmann::json::array();
  for (const char* backend : {"loom", "loom-det"}) {
    const bool det = std::strcmp(backend, "loom-det") == 0;
    for (int d : o.dims)
      for (bool causal : {false, true})
        for (int s : o.seqlens) {
          loom::AttentionShape a;
          a.batch = std::max<int64_t>(1, o.tokens / s), a.seq = s, a.heads = o.hidden / d;
          a.qk_dim = a.v_dim = d, a.causal = causal, a.scale = 1.0 / std::sqrt(double(d));
          LOOM_CHECK(a.batch * s * a.qkv_width() <= int64_t(qkv_elems), "flash_bench: tokens/seqlen mismatch");
          const double flops = 4.0 * a.batch * a.heads * double(s) * s * d / (causal ? 2 : 1);
          auto fwd = [&] { loom::cuda::flash_attention_forward(a, o.dtype, qkv, out, lse, nullptr); };
          auto fwd_bwd = [&] {
            fwd();
            loom::cuda::flash_attention_backward(a, o.dtype, qkv, out, dout, lse, dqkv, ws, ws_bytes, det, nullptr);
          };
          const double tf = loom::bench::median_ms(fwd, o.warmup, o.reps), tfb = loom::bench::median_ms(fwd_bwd, o.warmup, o.reps);
          const nlohmann::json r = {{"backend", backend}, {"d", d}, {"causal", causal}, {"seqlen", s},
                                    {"batch", a.batch}, {"heads", a.heads}, {"fwd", flops / tf / 1e9},
                                    {"bwd", 2.5 * flops / (tfb - tf) / 1e9}, {"fwd_bwd", 3.5 * flops / tfb / 1e9}};
          rows.push_back(r);
          std::printf("%-9s %4d %6d %6d %6.0f %6.0f %6.0f\n", backend, d, int(causal), s, r["fwd"].get<double>(),
                      r["bwd"].get<double>(), r["fwd_bwd"].get<double>());
          std::fflush(stdout);
        }
  }
  CUDA_CHECK(cudaFree(qkv));
  CUDA_CHECK(cudaFree(dqkv));
  CUDA_CHECK(cudaFree(out));
  CUDA_CHECK(cudaFree(dout));
  CUDA_CHECK(cudaFree(ws));
  CUDA_CHECK(cudaFree(lse));
  if (!o.json.empty()) {
    std::ofstream f(o.json);
    LOOM_CHECK(f.good(), "flash_bench: cannot write ", o.json);
    f << nlohmann::json{{"card", prop.name}, {"rows", rows}}.dump(1) << "\n";
  }
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "flash_bench: %s\n", e.what());
  return 1;
}
