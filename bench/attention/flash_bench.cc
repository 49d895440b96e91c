// Flash-attention throughput over the same grid as ../shared/baselines/attention.py (tokens = batch·seq and
// hidden = heads·dim held fixed), so the two tables line up cell by cell.
//
// FLOP convention (the peers'): fwd = 4·b·h·s²·d (halved when causal), bwd = 2.5·fwd. Times are medians of
// `--reps` event-timed runs after `--warmup` runs, on random inputs (never zeros); with `--repeat R` each cell is
// timed R times in a row and the medians of the R medians are reported (single cells move by up to ~10 %). "loom" rows use the atomic
// dQ backward, "loom-det" rows the deterministic one.
//
// --pairs QKxV ... instead times the head dims pruning produces ("loom-pruned" rows; atomic dQ): every pair with
// the d64 grid's heads (hidden / 64), counting useful FLOPs only, fwd = 2·b·h·s²·(Dqk + Dv) (halved when
// causal), bwd = 2.5·fwd, and prints each beside d64 at the same cell ("per FLOP vs d64" = its TFLOP/s over
// d64's; 1.0 would mean a pruned head costs exactly its share of FLOPs).
//
// usage: loom_flash_bench [--dims 64 128 | --pairs 32x32 40x64 ...] [--seqlens 512 ... 16384] [--tokens 16384]
//                         [--hidden 2048] [--dtype bf16|f16] [--reps 10] [--warmup 3] [--json FILE]
//                         [--d64-rows 0|128|192] [--no-det] [--repeat 1] [--host-times]
//                         [--fwd-blocks auto,0,sm,...]
// --d64-rows forces the 64x64 pair's forward block height (flash_attention_forward; 0: its own choice by seq);
// --no-det leaves out the "loom-det" rows. --fwd-blocks times each cell under several values of the forward's
// max_blocks, interleaved (in each of the --repeat rounds every value runs once): auto (kFlashBlocksAuto, the
// launcher's choice), 0 (one block per tile), N (at most N persistent blocks) or sm (the card's SM count). The
// first value's rows are "loom" (and "loom-det"), the others "loom@fN" (compare.py tables them apart); default
// auto. --host-times adds, per cell, the host's microseconds to queue one
// forward and one forward + backward (the mean of 20 calls queued back to back, the GPU busy): with one event pair
// and a synchronisation per timed run (as the peers time too), the first kernel of a run waits that long.
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "bench/bench_util.h"
#include "core/dtype.h"
#include "core/error.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/flash_attention.h"

namespace {

struct Options {
  std::vector<int> dims = {64, 128};
  std::vector<std::pair<int, int>> pairs;  // (Dqk, Dv); non-empty: the pruned-dims grid
  std::vector<int> seqlens = {512, 1024, 2048, 4096, 8192, 16384};
  int64_t tokens = 16384, hidden = 2048;
  loom::DType dtype = loom::DType::BF16;
  int reps = 10, warmup = 3, repeat = 1;
  int d64_rows = 0;
  bool det_rows = true, host_times = false;
  std::vector<std::string> fwd_blocks = {"auto"};  // --fwd-blocks, resolved in main
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
    else if (a == "--pairs")
      while (i + 1 < argc && argv[i + 1][0] != '-') {
        const std::string pair = argv[++i];
        const size_t x = pair.find('x');
        LOOM_CHECK(x != std::string::npos, "flash_bench: --pairs takes QKxV, e.g. 32x64; got ", pair);
        o.pairs.emplace_back(std::stoi(pair.substr(0, x)), std::stoi(pair.substr(x + 1)));
      }
    else if (a == "--seqlens") ints(o.seqlens);
    else if (a == "--tokens") o.tokens = std::stoll(next());
    else if (a == "--hidden") o.hidden = std::stoll(next());
    else if (a == "--dtype") o.dtype = loom::dtype_from_name(next(), "--dtype");
    else if (a == "--reps") o.reps = std::stoi(next());
    else if (a == "--warmup") o.warmup = std::stoi(next());
    else if (a == "--repeat") o.repeat = std::stoi(next());
    else if (a == "--json") o.json = next();
    else if (a == "--d64-rows") o.d64_rows = std::stoi(next());
    else if (a == "--no-det") o.det_rows = false;
    else if (a == "--host-times") o.host_times = true;
    else if (a == "--fwd-blocks") {
      o.fwd_blocks.clear();
      const std::string list = next();
      for (size_t at = 0; at <= list.size();) {
        const size_t comma = std::min(list.find(',', at), list.size());
        o.fwd_blocks.push_back(list.substr(at, comma - at));
        at = comma + 1;
      }
    } else loom::fail("flash_bench: unknown argument ", a);
  }
  LOOM_CHECK(o.reps >= 1 && o.repeat >= 1 && o.warmup >= 0,
             "flash_bench: --reps and --repeat must be >= 1, --warmup >= 0");
  return o;
}

// Median milliseconds of the forward and of forward + backward for one shape.
// One launch schedule of --fwd-blocks: the forward's max_blocks argument.
struct Schedule {
  int fwd_blocks = loom::cuda::kFlashBlocksAuto;
  std::string backend(const char* base) const {
    const bool chosen = fwd_blocks == loom::cuda::kFlashBlocksAuto;
    return std::string(base) + "@f" + (chosen ? "auto" : std::to_string(fwd_blocks));
  }
};

struct Timing {
  double fwd_ms, fwd_bwd_ms;
  double fwd_host_us = 0, fwd_bwd_host_us = 0;  // --host-times
};

// Mean host microseconds of one fn() call, 20 calls queued back to back (fn only queues work).
double host_us(const std::function<void()>& fn) {
  constexpr int kCalls = 20;
  CUDA_CHECK(cudaDeviceSynchronize());
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < kCalls; ++i) fn();
  const auto t1 = std::chrono::steady_clock::now();
  CUDA_CHECK(cudaDeviceSynchronize());
  return std::chrono::duration<double, std::micro>(t1 - t0).count() / kCalls;
}
struct Buffers {
  void *qkv, *out, *dout, *dqkv, *ws;
  float* lse;
  size_t ws_bytes;
};
// Timings of one shape under each schedule, the schedules interleaved within each of the --repeat rounds.
std::vector<Timing> time_shape(const loom::AttentionShape& a, const Options& o, const Buffers& buf, bool det,
                               const std::vector<Schedule>& schedules) {
  auto fwd = [&](const Schedule& sc) {
    loom::cuda::flash_attention_forward(a, o.dtype, buf.qkv, buf.out, buf.lse, nullptr, o.d64_rows, sc.fwd_blocks);
  };
  auto fwd_bwd = [&](const Schedule& sc) {
    fwd(sc);
    loom::cuda::flash_attention_backward(a, o.dtype, buf.qkv, buf.out, buf.dout, buf.lse, buf.dqkv, buf.ws,
                                         buf.ws_bytes, det, nullptr);
  };
  std::vector<std::vector<double>> f(schedules.size()), fb(schedules.size());
  for (int r = 0; r < o.repeat; ++r)
    for (size_t i = 0; i < schedules.size(); ++i) {
      f[i].push_back(loom::bench::median_ms([&] { fwd(schedules[i]); }, o.warmup, o.reps));
      fb[i].push_back(loom::bench::median_ms([&] { fwd_bwd(schedules[i]); }, o.warmup, o.reps));
    }
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
  };
  std::vector<Timing> out;
  for (size_t i = 0; i < schedules.size(); ++i) {
    Timing t{median(f[i]), median(fb[i])};
    if (o.host_times) {
      t.fwd_host_us = host_us([&] { fwd(schedules[i]); });
      t.fwd_bwd_host_us = host_us([&] { fwd_bwd(schedules[i]); });
    }
    out.push_back(t);
  }
  return out;
}

loom::AttentionShape shape_for(const Options& o, int64_t heads, int dqk, int dv, int s, bool causal) {
  loom::AttentionShape a;
  a.batch = std::max<int64_t>(1, o.tokens / s), a.seq = s, a.heads = heads;
  a.qk_dim = dqk, a.v_dim = dv, a.causal = causal, a.scale = 1.0 / std::sqrt(double(dqk));
  LOOM_CHECK(a.batch * s <= o.tokens, "flash_bench: seqlen ", s, " exceeds --tokens ", o.tokens);
  return a;
}

}  // namespace

int main(int argc, char** argv) try {
  const Options o = parse(argc, argv);
  cudaDeviceProp prop{};
  CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("%s, %d SMs, dtype %s\n", prop.name, prop.multiProcessorCount, loom::dtype_name(o.dtype));
  std::vector<Schedule> schedules;
  for (const std::string& v : o.fwd_blocks) {
    const int n = v == "auto" ? loom::cuda::kFlashBlocksAuto : v == "sm" ? prop.multiProcessorCount : std::stoi(v);
    LOOM_CHECK(n >= 0 || n == loom::cuda::kFlashBlocksAuto, "flash_bench: --fwd-blocks values are auto, sm or >= 0; got ",
               v);
    schedules.push_back({n});
  }

  // Every shape of the grid: (heads, Dqk, Dv); one set of buffers, sized for the widest, serves them all.
  struct Dims {
    int64_t heads;
    int dqk, dv;
  };
  std::vector<Dims> grid;
  const int64_t pruned_heads = o.hidden / 64;
  if (o.pairs.empty()) {
    for (int d : o.dims) grid.push_back({o.hidden / d, d, d});
  } else {
    grid.push_back({pruned_heads, 64, 64});  // the reference
    for (const auto& [dqk, dv] : o.pairs) grid.push_back({pruned_heads, dqk, dv});
  }
  size_t qkv_elems = 0, out_elems = 0, ws_bytes = 0;
  int64_t max_rows = 0;
  for (const Dims& g : grid) {
    const loom::AttentionShape a = shape_for(o, g.heads, g.dqk, g.dv, static_cast<int>(o.tokens), false);
    qkv_elems = std::max<size_t>(qkv_elems, o.tokens * a.qkv_width());
    out_elems = std::max<size_t>(out_elems, o.tokens * a.out_width());
    ws_bytes = std::max(ws_bytes, loom::cuda::flash_attention_backward_workspace_bytes(a, false));
    max_rows = std::max(max_rows, o.tokens * g.heads);
  }
  Buffers buf{};
  buf.ws_bytes = ws_bytes;
  std::vector<uint16_t> host(qkv_elems);
  CUDA_CHECK(cudaMalloc(&buf.qkv, qkv_elems * 2));
  CUDA_CHECK(cudaMalloc(&buf.dqkv, qkv_elems * 2));
  CUDA_CHECK(cudaMalloc(&buf.out, out_elems * 2));
  CUDA_CHECK(cudaMalloc(&buf.dout, out_elems * 2));
  loom::bench::fill_random(host, o.dtype, 12345);
  CUDA_CHECK(cudaMemcpy(buf.qkv, host.data(), qkv_elems * 2, cudaMemcpyHostToDevice));
  loom::bench::fill_random(host, o.dtype, 777);
  CUDA_CHECK(cudaMemcpy(buf.dout, host.data(), out_elems * 2, cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaMalloc(&buf.ws, ws_bytes));
  CUDA_CHECK(cudaMalloc(&buf.lse, max_rows * sizeof(float)));

  nlohmann::json rows = nlohmann::json::array();
  if (o.pairs.empty()) {
    std::printf("%-16s %4s %6s %6s %6s %6s %6s  TFLOP/s\n", "backend", "d", "causal", "seqlen", "fwd", "bwd", "f+b");
    for (const char* base : {"loom", "loom-det"}) {
      const bool det = std::strcmp(base, "loom-det") == 0;
      if (det && !o.det_rows) continue;
      // The deterministic backward has no persistent mode: its rows use the first schedule only.
      const std::vector<Schedule> cell_schedules = det ? std::vector<Schedule>{schedules.front()} : schedules;
      for (const Dims& g : grid)
        for (bool causal : {false, true})
          for (int s : o.seqlens) {
            const loom::AttentionShape a = shape_for(o, g.heads, g.dqk, g.dv, s, causal);
            const double flops = 4.0 * a.batch * a.heads * double(s) * s * g.dqk / (causal ? 2 : 1);
            const std::vector<Timing> times = time_shape(a, o, buf, det, cell_schedules);
            for (size_t i = 0; i < times.size(); ++i) {
              const Timing& t = times[i];
              const std::string backend = i == 0 ? std::string(base) : cell_schedules[i].backend(base);
              nlohmann::json r = {{"backend", backend}, {"d", g.dqk}, {"causal", causal}, {"seqlen", s},
                                  {"batch", a.batch}, {"heads", a.heads}, {"fwd", flops / t.fwd_ms / 1e9},
                                  {"bwd", 2.5 * flops / (t.fwd_bwd_ms - t.fwd_ms) / 1e9},
                                  {"fwd_bwd", 3.5 * flops / t.fwd_bwd_ms / 1e9},
                                  {"fwd_blocks", cell_schedules[i].fwd_blocks}};
              if (o.host_times) r["fwd_host_us"] = t.fwd_host_us, r["fwd_bwd_host_us"] = t.fwd_bwd_host_us;
              std::printf("%-16s %4d %6d %6d %6.0f %6.0f %6.0f", backend.c_str(), g.dqk, int(causal), s,
                          r["fwd"].get<double>(), r["bwd"].get<double>(), r["fwd_bwd"].get<double>());
              if (o.host_times)
                std::printf("   host us to queue: fwd %.1f, fwd+bwd %.1f (GPU ms: %.3f, %.3f)", t.fwd_host_us,
                            t.fwd_bwd_host_us, t.fwd_ms, t.fwd_bwd_ms);
              std::printf("\n");
              std::fflush(stdout);
              rows.push_back(std::move(r));
            }
          }
    }
  } else {
    std::printf("pruned head dims, %lld heads, TFLOP/s of useful FLOPs; per FLOP vs d64 = TFLOP/s / d64's\n",
                static_cast<long long>(pruned_heads));
    std::printf("%7s %6s %6s | %6s %6s %6s | %8s %8s\n", "qk x v", "causal", "seqlen", "fwd", "bwd", "f+b",
                "fwd/d64", "f+b/d64");
    for (bool causal : {false, true})
      for (int s : o.seqlens) {
        double ref_fwd = 0, ref_fb = 0;
        for (const Dims& g : grid) {
          const loom::AttentionShape a = shape_for(o, g.heads, g.dqk, g.dv, s, causal);
          const double flops = 2.0 * a.batch * a.heads * double(s) * s * (g.dqk + g.dv) / (causal ? 2 : 1);
          const Timing t = time_shape(a, o, buf, false, {schedules.front()}).front();
          const double fwd = flops / t.fwd_ms / 1e9, fb = 3.5 * flops / t.fwd_bwd_ms / 1e9;
          const double bwd = 2.5 * flops / (t.fwd_bwd_ms - t.fwd_ms) / 1e9;
          if (&g == &grid.front()) ref_fwd = fwd, ref_fb = fb;
          rows.push_back({{"backend", "loom-pruned"}, {"dqk", g.dqk}, {"dv", g.dv}, {"causal", causal},
                          {"seqlen", s}, {"batch", a.batch}, {"heads", a.heads}, {"fwd", fwd}, {"bwd", bwd},
                          {"fwd_bwd", fb}, {"fwd_vs_d64", fwd / ref_fwd}, {"fwd_bwd_vs_d64", fb / ref_fb}});
          std::printf("%3dx%-3d %6d %6d | %6.0f %6.0f %6.0f | %8.2f %8.2f\n", g.dqk, g.dv, int(causal), s, fwd, bwd,
                      fb, fwd / ref_fwd, fb / ref_fb);
          std::fflush(stdout);
        }
      }
  }
  CUDA_CHECK(cudaFree(buf.qkv));
  CUDA_CHECK(cudaFree(buf.dqkv));
  CUDA_CHECK(cudaFree(buf.out));
  CUDA_CHECK(cudaFree(buf.dout));
  CUDA_CHECK(cudaFree(buf.ws));
  CUDA_CHECK(cudaFree(buf.lse));
  loom::bench::write_json(o.json, {{"card", prop.name}, {"d64_query_rows", o.d64_rows}, {"rows", rows}});
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "flash_bench: %s\n", e.what());
  return 1;
}
