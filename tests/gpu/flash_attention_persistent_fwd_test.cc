// The warp-specialised flash-attention forward in its persistent mode (flash_attention_forward's max_blocks > 0:
// fewer blocks than tiles, each walking several): O and lse against a float64 reference on grids of 1, 2, 3 and
// more blocks than tiles, for every tile pair of that kernel (64x64 with 128- and 192-row blocks, 128x128, 64x128,
// 128x64), causal and not, bf16 and f16, ragged lengths, batch and heads > 1 — so that blocks walk different
// numbers of tiles of different lengths and the K/V ring, the Q barriers and the ping-pong turns wrap across
// tiles at every parity; and O and lse bit-identical to the grid of one block per tile.
//
// Acceptance rule (tests/gpu/flash_attention_test.cc's, forward part): max |O - O_ref| at most 2x the error of the
// same attention computed naively in the 16-bit type (scores, P and O rounded to 16 bits, float32 accumulation)
// plus 1e-4 of the largest |O_ref| plus 1e-5; lse within 1e-4 relative. Inputs are fresh random each run (the seed
// is printed on failure); outputs are poisoned with NaN before every launch. Without a CUDA GPU the tests that
// need one skip with "no CUDA GPU visible".
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <iterator>
#include <random>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/flash_attention.h"
#include "tests/gpu/flash_attention_test_util.h"

namespace loom {
namespace {

using flash_test::DeviceBuffer;
using flash_test::from_half_bits;
using flash_test::to_half_bits;

double round16(double f, DType t) { return from_half_bits(to_half_bits(float(f), t), t); }

// A tile pair of the warp-specialised forward: head dims (equal to the tile widths) and the 64x64 pair's block
// height (flash_attention_forward's d64_query_rows; 0 for the other pairs, which ignore it).
struct Pair {
  int64_t dqk, dv;
  int d64_query_rows;
  const char* name;
};
constexpr Pair kPairs[] = {{64, 64, 128, "d64_rows128"}, {64, 64, 192, "d64_rows192"}, {128, 128, 0, "d128"},
                           {64, 128, 0, "qk64_v128"},     {128, 64, 0, "qk128_v64"}};

AttentionShape shape_of(const Pair& pair, int64_t batch, int64_t seq, int64_t heads, bool causal) {
  AttentionShape s;
  s.batch = batch, s.seq = seq, s.heads = heads, s.qk_dim = pair.dqk, s.v_dim = pair.dv, s.causal = causal;
  s.scale = 1.0 / std::sqrt(double(pair.dqk));
  return s;
}

// Random 16-bit qkv ([B, T, qkv_width], standard normal).
std::vector<uint16_t> random_qkv(const AttentionShape& s, DType dtype, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::vector<uint16_t> qkv(s.batch * s.seq * s.qkv_width());
  for (auto& x : qkv) x = to_half_bits(normal(rng), dtype);
  return qkv;
}

// One head's forward references: the exact output and lse (float64), and the naive 16-bit output.
struct HeadRef {
  std::vector<double> o, lse, naive_o;
};

HeadRef reference(const std::vector<uint16_t>& qkv, const AttentionShape& s, DType dtype, int64_t b, int64_t h) {
  const int64_t T = s.seq, D = s.qk_dim, Dv = s.v_dim, H = s.heads, W = s.qkv_width();
  auto q = [&](int64_t t, int64_t d) { return from_half_bits(qkv[(b * T + t) * W + h * D + d], dtype); };
  auto k = [&](int64_t t, int64_t d) { return from_half_bits(qkv[(b * T + t) * W + (H + h) * D + d], dtype); };
  auto v = [&](int64_t t, int64_t d) { return from_half_bits(qkv[(b * T + t) * W + 2 * H * D + h * Dv + d], dtype); };
  HeadRef r;
  r.o.assign(T * Dv, 0), r.lse.assign(T, 0), r.naive_o.assign(T * Dv, 0);
  std::vector<double> exact(T), naive(T);
  for (int64_t i = 0; i < T; ++i) {
    const int64_t nj = s.causal ? i + 1 : T;
    double mx = -INFINITY, mx16 = -INFINITY;
    for (int64_t j = 0; j < nj; ++j) {
      double dot = 0;
      float dotf = 0;
      for (int64_t d = 0; d < D; ++d) dot += double(q(i, d)) * k(j, d), dotf += q(i, d) * k(j, d);
      exact[j] = dot * s.scale;
      naive[j] = round16(round16(dotf, dtype) * float(s.scale), dtype);
      mx = std::max(mx, exact[j]), mx16 = std::max(mx16, naive[j]);
    }
    double sum = 0, sum16 = 0;
    for (int64_t j = 0; j < nj; ++j) sum += std::exp(exact[j] - mx), sum16 += std::exp(naive[j] - mx16);
    r.lse[i] = mx + std::log(sum);
    for (int64_t j = 0; j < nj; ++j)
      exact[j] = std::exp(exact[j] - mx) / sum, naive[j] = round16(std::exp(naive[j] - mx16) / sum16, dtype);
    for (int64_t d = 0; d < Dv; ++d) {
      double o = 0;
      float of = 0;
      for (int64_t j = 0; j < nj; ++j) o += exact[j] * v(j, d), of += float(naive[j]) * v(j, d);
      r.o[i * Dv + d] = o, r.naive_o[i * Dv + d] = round16(of, dtype);
    }
  }
  return r;
}

// The references of every (batch, head), computed in parallel.
std::vector<HeadRef> references(const std::vector<uint16_t>& qkv, const AttentionShape& s, DType dtype) {
  const int64_t pairs = s.batch * s.heads;
  std::vector<HeadRef> refs(pairs);
  std::vector<std::thread> pool;
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(pairs, std::thread::hardware_concurrency()));
  for (int64_t w = 0; w < threads; ++w)
    pool.emplace_back([&, w] {
      for (int64_t bh = w; bh < pairs; bh += threads) refs[bh] = reference(qkv, s, dtype, bh / s.heads, bh % s.heads);
    });
  for (auto& t : pool) t.join();
  return refs;
}

// The forward's outputs for one grid: out [B, T, H·Dv] (16-bit) and lse [B, H, T].
struct Outputs {
  std::vector<uint16_t> out;
  std::vector<float> lse;
};

Outputs run_forward(const AttentionShape& s, DType dtype, const DeviceBuffer& qkv, int d64_query_rows,
                    int max_blocks) {
  DeviceBuffer out(s.batch * s.seq * s.out_width() * 2), lse(s.batch * s.heads * s.seq * 4);
  out.poison(), lse.poison();
  cuda::flash_attention_forward(s, dtype, qkv.ptr, out.ptr, static_cast<float*>(lse.ptr), nullptr, d64_query_rows,
                                max_blocks);
  CUDA_CHECK(cudaDeviceSynchronize());
  Outputs r{std::vector<uint16_t>(out.bytes / 2), std::vector<float>(lse.bytes / 4)};
  CUDA_CHECK(cudaMemcpy(r.out.data(), out.ptr, out.bytes, cudaMemcpyDeviceToHost));
  CUDA_CHECK(cudaMemcpy(r.lse.data(), lse.ptr, lse.bytes, cudaMemcpyDeviceToHost));
  return r;
}

// Checks one grid's outputs against the references by the acceptance rule above.
void expect_matches(const Outputs& got, const std::vector<HeadRef>& refs, const AttentionShape& s, DType dtype) {
  const int64_t T = s.seq, H = s.heads, Dv = s.v_dim;
  double err = 0, naive_err = 0, max_ref = 0, lse_err = 0;
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t h = 0; h < H; ++h) {
      const HeadRef& r = refs[b * H + h];
      for (int64_t t = 0; t < T; ++t) {
        for (int64_t d = 0; d < Dv; ++d) {
          const double o = from_half_bits(got.out[(b * T + t) * s.out_width() + h * Dv + d], dtype);
          const double want = r.o[t * Dv + d];
          err = std::max(err, std::isfinite(o) ? std::abs(o - want) : INFINITY);  // NaN or inf must fail
          naive_err = std::max(naive_err, std::abs(r.naive_o[t * Dv + d] - want));
          max_ref = std::max(max_ref, std::abs(want));
        }
        const double l = got.lse[(b * H + h) * T + t];
        lse_err = std::max(lse_err, std::isfinite(l) ? std::abs(l - r.lse[t]) / (1 + std::abs(r.lse[t])) : INFINITY);
      }
    }
  EXPECT_LE(err, 2 * naive_err + 1e-4 * max_ref + 1e-5) << "out: naive 16-bit error " << naive_err;
  EXPECT_LE(lse_err, 1e-4) << "lse relative error";
  std::printf("  err/naive: o %.2e/%.2e lse %.1e\n", err, naive_err, lse_err);
}

const int64_t kSeqs[] = {1, 17, 65, 129, 197, 257, 385};

class FlashAttentionPersistentFwdTest : public ::testing::TestWithParam<std::tuple<int, bool>> {};

// Every ragged length, with heads 3, 5 or 7 (batch 2) so that the tiles split unevenly over 3 blocks for most of
// them, bf16 and f16 in turn: grids of 1, 2, 3 blocks and one with more blocks than tiles (min(N, tiles) of them).
TEST_P(FlashAttentionPersistentFwdTest, MatchesTheReferenceOnEveryGrid) {
  SKIP_WITHOUT_GPU();
  const auto [pair_index, causal] = GetParam();
  const Pair& pair = kPairs[pair_index];
  for (int i = 0; i < int(std::size(kSeqs)); ++i) {
    const DType dtype = i % 2 ? DType::F16 : DType::BF16;
    const AttentionShape s = shape_of(pair, 2, kSeqs[i], 3 + 2 * (i % 3), causal);
    const uint32_t seed = std::random_device{}();
    const std::vector<uint16_t> qkv = random_qkv(s, dtype, seed);
    DeviceBuffer d_qkv(qkv.size() * 2);
    CUDA_CHECK(cudaMemcpy(d_qkv.ptr, qkv.data(), d_qkv.bytes, cudaMemcpyHostToDevice));
    const std::vector<HeadRef> refs = references(qkv, s, dtype);
    for (int max_blocks : {1, 2, 3, int(s.batch * s.heads * s.seq) + 1}) {
      const std::string what = std::string(pair.name) + (causal ? " causal" : " full") + " " + dtype_name(dtype) +
                                " b2 t" + std::to_string(s.seq) + " h" + std::to_string(s.heads) + " max_blocks " +
                                std::to_string(max_blocks);
      SCOPED_TRACE("seed " + std::to_string(seed) + ": " + what);
      std::printf("[ %s ]", what.c_str());
      expect_matches(run_forward(s, dtype, d_qkv, pair.d64_query_rows, max_blocks), refs, s, dtype);
    }
  }
}

// The arithmetic of a tile does not depend on the block that runs it or on what that block ran before: out and
// lse are bit-identical between one block per tile and persistent grids of 3 and 1 blocks.
TEST_P(FlashAttentionPersistentFwdTest, BitIdenticalToOneBlockPerTile) {
  SKIP_WITHOUT_GPU();
  const auto [pair_index, causal] = GetParam();
  const Pair& pair = kPairs[pair_index];
  for (const auto& [seq, dtype] : {std::pair{int64_t(197), DType::BF16}, std::pair{int64_t(1000), DType::F16}}) {
    const AttentionShape s = shape_of(pair, 2, seq, 5, causal);
    const uint32_t seed = std::random_device{}();
    SCOPED_TRACE("seed " + std::to_string(seed) + ": t" + std::to_string(seq) + " " + dtype_name(dtype));
    const std::vector<uint16_t> qkv = random_qkv(s, dtype, seed);
    DeviceBuffer d_qkv(qkv.size() * 2);
    CUDA_CHECK(cudaMemcpy(d_qkv.ptr, qkv.data(), d_qkv.bytes, cudaMemcpyHostToDevice));
    const Outputs base = run_forward(s, dtype, d_qkv, pair.d64_query_rows, 0);
    for (int max_blocks : {3, 1}) {
      const Outputs got = run_forward(s, dtype, d_qkv, pair.d64_query_rows, max_blocks);
      EXPECT_EQ(std::memcmp(got.out.data(), base.out.data(), base.out.size() * 2), 0) << "out, max_blocks "
                                                                                          << max_blocks;
      EXPECT_EQ(std::memcmp(got.lse.data(), base.lse.data(), base.lse.size() * 4), 0) << "lse, max_blocks "
                                                                                          << max_blocks;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Pairs, FlashAttentionPersistentFwdTest,
                         ::testing::Combine(::testing::Range(0, int(std::size(kPairs))), ::testing::Bool()),
                         [](const ::testing::TestParamInfo<std::tuple<int, bool>>& i) {
                           return std::string(kPairs[std::get<0>(i.param)].name) +
                                  (std::get<1>(i.param) ? "_causal" : "_full");
                         });

// The argument check runs on the host before any device call, so this needs no GPU.
TEST(FlashAttentionPersistentArgs, RejectsMaxBlocksBelowAutoBeforeTheDevice) {
  AttentionShape s = shape_of(kPairs[2], 1, 8, 2, false);
  try {
    cuda::flash_attention_forward(s, DType::BF16, nullptr, nullptr, nullptr, nullptr, 0, /*max_blocks=*/-2);
    FAIL() << "expected loom::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("max_blocks -2 must be -1 (the launcher's choice)"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace loom
