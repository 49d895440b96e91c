// Flash-attention forward/backward against a float64 CPU reference computed from the same 16-bit inputs.
//
// Acceptance rule (FlashAttention's own test rule): for O, dQ, dK, dV the max abs error against the float64
// reference must be at most 2x the error of the same attention computed naively in the 16-bit type (inputs
// 16-bit, S and P rounded to 16 bits, matmuls accumulated in float32), plus a floor far below one 16-bit ulp of
// the largest reference value plus 1e-5 (so exact-zero naive errors on tiny problems don't demand bit-exactness).
// Inputs are fresh random each run (the seed is printed on failure); outputs are poisoned with NaN first.
// Without a CUDA GPU every test that needs one skips with "no CUDA GPU visible".
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
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

float round16(float f, DType t) { return from_half_bits(to_half_bits(f, t), t); }

struct Case {
  int64_t batch, seq, heads, dim;
  bool causal;
  DType dtype;
  float magnitude = 1;  // std of q and k (large values stress the online softmax)
  int64_t v_dim = 0;    // head dim of v when it differs from `dim` (pruned heads); 0 = same
  int d64_query_rows = 0;  // the 64x64 pair's forward block height (flash_attention_forward); 0 = its choice
  int64_t dv() const { return v_dim ? v_dim : dim; }
};

std::string case_name(const Case& c) {
  return "b" + std::to_string(c.batch) + "_t" + std::to_string(c.seq) + "_h" + std::to_string(c.heads) + "_d" +
         std::to_string(c.dim) + (c.v_dim ? "_v" + std::to_string(c.v_dim) : "") + (c.causal ? "_causal" : "_full") + "_" + dtype_name(c.dtype) +
         (c.magnitude != 1 ? "_mag" + std::to_string(int(c.magnitude)) : "") +
         (c.d64_query_rows ? "_rows" + std::to_string(c.d64_query_rows) : "");
}

AttentionShape shape_of(const Case& c) {
  AttentionShape s;
  s.batch = c.batch, s.seq = c.seq, s.heads = c.heads, s.qk_dim = c.dim, s.v_dim = c.dv();
  s.causal = c.causal;
  s.scale = 1.0 / std::sqrt(double(c.dim));
  return s;
}

// Per (b, h) head: float copies of the 16-bit q, k ([T][Dqk]) and v, dO ([T][Dv]).
struct Head {
  std::vector<float> q, k, v, dout;
};

// Reference results for one head: o, dv [T][Dv]; dq, dk [T][Dqk]; lse [T].
struct HeadResult {
  std::vector<double> o, lse, dq, dk, dv;
};

// Exact attention in float64 (exact = true) or the naive 16-bit computation (exact = false). The 16-bit one
// rounds where the kernels do: scores, P and dS to 16 bits, and D_i = Σ_d dO_id·O_id from the 16-bit output O
// (as the kernels' flash_bwd_dsum_kernel reads it) rather than Σ_j P_ij·dP_ij — the two are equal in exact
// arithmetic, but O's rounding enters dS = P (dP − D) and so every gradient, most visibly dK of short
// causal rows, and a reference without it bounded the kernels by an error they are not built to have.
HeadResult attend(const Head& x, int64_t T, int64_t D, int64_t Dv, bool causal, double scale, bool exact, DType t) {
  auto r16 = [&](double v) { return exact ? v : double(round16(float(v), t)); };
  std::vector<double> P(T * T, 0.0), dP(T * T, 0.0);
  HeadResult r;
  r.o.assign(T * Dv, 0), r.lse.assign(T, 0), r.dq.assign(T * D, 0), r.dk.assign(T * D, 0), r.dv.assign(T * Dv, 0);
  for (int64_t i = 0; i < T; ++i) {
    const int64_t nj = causal ? i + 1 : T;
    double mx = -INFINITY;
    for (int64_t j = 0; j < nj; ++j) {
      double s;
      if (exact) {
        s = 0;
        for (int64_t d = 0; d < D; ++d) s += double(x.q[i * D + d]) * x.k[j * D + d];
        s *= scale;
      } else {
        float sf = 0;
        for (int64_t d = 0; d < D; ++d) sf += x.q[i * D + d] * x.k[j * D + d];
        s = r16(r16(sf) * float(scale));
      }
      P[i * T + j] = s;
      mx = std::max(mx, s);
    }
    double sum = 0;
    for (int64_t j = 0; j < nj; ++j) sum += std::exp(P[i * T + j] - mx);
    r.lse[i] = mx + std::log(sum);
    for (int64_t j = 0; j < nj; ++j) P[i * T + j] = r16(std::exp(P[i * T + j] - mx) / sum);
    for (int64_t d = 0; d < Dv; ++d) {
      double o = 0;
      float of = 0;
      for (int64_t j = 0; j < nj; ++j) {
        if (exact) o += P[i * T + j] * x.v[j * Dv + d];
        else of += float(P[i * T + j]) * x.v[j * Dv + d];
      }
      r.o[i * Dv + d] = exact ? o : r16(of);
    }
  }
  // Backward: dP = dO Vᵀ, dS = P (dP - rowsum(P dP)), dQ = scale dS K, dK = scale dSᵀ Q, dV = Pᵀ dO.
  for (int64_t i = 0; i < T; ++i) {
    const int64_t nj = causal ? i + 1 : T;
    double rowdot = 0;
    for (int64_t j = 0; j < nj; ++j) {
      double s = 0;
      float sf = 0;
      for (int64_t d = 0; d < Dv; ++d) {
        if (exact) s += double(x.dout[i * Dv + d]) * x.v[j * Dv + d];
        else sf += x.dout[i * Dv + d] * x.v[j * Dv + d];
      }
      dP[i * T + j] = exact ? s : r16(sf);
      if (exact) rowdot += P[i * T + j] * dP[i * T + j];
    }
    if (!exact) {
      float dsum = 0;
      for (int64_t d = 0; d < Dv; ++d) dsum += x.dout[i * Dv + d] * float(r.o[i * Dv + d]);
      rowdot = dsum;
    }
    for (int64_t j = 0; j < nj; ++j) dP[i * T + j] = r16(r16(P[i * T + j] * (dP[i * T + j] - rowdot)) * scale);
  }
  // dP now holds scale·dS.
  for (int64_t i = 0; i < T; ++i)
    for (int64_t d = 0; d < D; ++d) {
      double acc = 0;
      float accf = 0;
      for (int64_t j = 0; j < T; ++j) {
        if (exact) acc += dP[i * T + j] * x.k[j * D + d];
        else accf += float(dP[i * T + j]) * x.k[j * D + d];
      }
      r.dq[i * D + d] = exact ? acc : r16(accf);
    }
  for (int64_t j = 0; j < T; ++j) {
    for (int64_t d = 0; d < D; ++d) {
      double ak = 0;
      float akf = 0;
      for (int64_t i = 0; i < T; ++i) {
        if (exact) ak += dP[i * T + j] * x.q[i * D + d];
        else akf += float(dP[i * T + j]) * x.q[i * D + d];
      }
      r.dk[j * D + d] = exact ? ak : r16(akf);
    }
    for (int64_t d = 0; d < Dv; ++d) {
      double av = 0;
      float avf = 0;
      for (int64_t i = 0; i < T; ++i) {
        if (exact) av += P[i * T + j] * x.dout[i * Dv + d];
        else avf += float(P[i * T + j]) * x.dout[i * Dv + d];
      }
      r.dv[j * Dv + d] = exact ? av : r16(avf);
    }
  }
  return r;
}

struct Errors {
  double o = 0, dq = 0, dk = 0, dv = 0, lse = 0;
  double max_o = 0, max_dq = 0, max_dk = 0, max_dv = 0;
};

class FlashAttentionTest : public ::testing::TestWithParam<Case> {};

// Runs forward + backward on the GPU and checks everything against the references.
void run_case(const Case& c, bool deterministic) {
  const AttentionShape s = shape_of(c);
  const int64_t B = c.batch, T = c.seq, H = c.heads, D = c.dim, Dv = c.dv();
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed) + " case " + case_name(c));
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.f, 1.f);

  std::vector<uint16_t> qkv(B * T * s.qkv_width()), dout(B * T * s.out_width());
  for (int64_t i = 0; i < int64_t(qkv.size()); ++i) {
    const int64_t col = i % s.qkv_width();
    const float m = col < 2 * H * D ? c.magnitude : 1.f;  // q and k columns get the magnitude
    qkv[i] = to_half_bits(normal(rng) * m, c.dtype);
  }
  for (auto& x : dout) x = to_half_bits(normal(rng), c.dtype);

  DeviceBuffer d_qkv(qkv.size() * 2), d_out(B * T * s.out_width() * 2), d_dout(dout.size() * 2),
      d_lse(B * H * T * 4), d_dqkv(qkv.size() * 2),
      d_ws(cuda::flash_attention_backward_workspace_bytes(s, deterministic));
  CUDA_CHECK(cudaMemcpy(d_qkv.ptr, qkv.data(), d_qkv.bytes, cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaMemcpy(d_dout.ptr, dout.data(), d_dout.bytes, cudaMemcpyHostToDevice));
  d_out.poison(), d_lse.poison(), d_dqkv.poison(), d_ws.poison();
  cuda::flash_attention_forward(s, c.dtype, d_qkv.ptr, d_out.ptr, static_cast<float*>(d_lse.ptr), nullptr,
                                c.d64_query_rows);
  cuda::flash_attention_backward(s, c.dtype, d_qkv.ptr, d_out.ptr, d_dout.ptr, static_cast<float*>(d_lse.ptr),
                                 d_dqkv.ptr, d_ws.ptr, d_ws.bytes, deterministic, nullptr);
  CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<uint16_t> out(B * T * s.out_width()), dqkv(qkv.size());
  std::vector<float> lse(B * H * T);
  CUDA_CHECK(cudaMemcpy(out.data(), d_out.ptr, d_out.bytes, cudaMemcpyDeviceToHost));
  CUDA_CHECK(cudaMemcpy(dqkv.data(), d_dqkv.ptr, d_dqkv.bytes, cudaMemcpyDeviceToHost));
  CUDA_CHECK(cudaMemcpy(lse.data(), d_lse.ptr, d_lse.bytes, cudaMemcpyDeviceToHost));

  if (deterministic) {  // a second run must reproduce dqkv bit for bit
    DeviceBuffer d_dqkv2(d_dqkv.bytes);
    d_dqkv2.poison(), d_ws.poison();
    cuda::flash_attention_backward(s, c.dtype, d_qkv.ptr, d_out.ptr, d_dout.ptr, static_cast<float*>(d_lse.ptr),
                                   d_dqkv2.ptr, d_ws.ptr, d_ws.bytes, true, nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<uint16_t> again(qkv.size());
    CUDA_CHECK(cudaMemcpy(again.data(), d_dqkv2.ptr, d_dqkv2.bytes, cudaMemcpyDeviceToHost));
    EXPECT_EQ(std::memcmp(again.data(), dqkv.data(), again.size() * 2), 0) << "deterministic dqkv differs between runs";
  }

  // References per (b, h), in parallel over heads.
  std::vector<Errors> errs(B * H), naive(B * H);
  std::vector<std::thread> pool;
  const int64_t nthreads = std::max<int64_t>(1, std::min<int64_t>(B * H, std::thread::hardware_concurrency()));
  for (int64_t w = 0; w < nthreads; ++w)
    pool.emplace_back([&, w] {
      for (int64_t bh = w; bh < B * H; bh += nthreads) {
        const int64_t b = bh / H, h = bh % H;
        Head x;
        x.q.resize(T * D), x.k.resize(T * D), x.v.resize(T * Dv), x.dout.resize(T * Dv);
        std::vector<float> got_o(T * Dv), got_dq(T * D), got_dk(T * D), got_dv(T * Dv);
        for (int64_t t = 0; t < T; ++t) {
          const int64_t row = (b * T + t) * s.qkv_width(), orow = (b * T + t) * s.out_width();
          for (int64_t d = 0; d < D; ++d) {
            const int64_t iq = row + h * D + d, ik = row + (H + h) * D + d;
            x.q[t * D + d] = from_half_bits(qkv[iq], c.dtype);
            x.k[t * D + d] = from_half_bits(qkv[ik], c.dtype);
            got_dq[t * D + d] = from_half_bits(dqkv[iq], c.dtype);
            got_dk[t * D + d] = from_half_bits(dqkv[ik], c.dtype);
          }
          for (int64_t d = 0; d < Dv; ++d) {
            const int64_t iv = row + 2 * H * D + h * Dv + d, io = orow + h * Dv + d;
            x.v[t * Dv + d] = from_half_bits(qkv[iv], c.dtype);
            x.dout[t * Dv + d] = from_half_bits(dout[io], c.dtype);
            got_o[t * Dv + d] = from_half_bits(out[io], c.dtype);
            got_dv[t * Dv + d] = from_half_bits(dqkv[iv], c.dtype);
          }
        }
        const HeadResult ref = attend(x, T, D, Dv, c.causal, s.scale, true, c.dtype);
        const HeadResult low = attend(x, T, D, Dv, c.causal, s.scale, false, c.dtype);
        Errors& e = errs[bh];
        Errors& n = naive[bh];
        auto upd = [](double& err, double& mx, double got, double want) {
          // NaN/inf in the output must fail: make the error infinite.
          err = std::max(err, std::isfinite(got) ? std::abs(got - want) : INFINITY);
          mx = std::max(mx, std::abs(want));
        };
        double unused = 0;
        for (int64_t i = 0; i < T * D; ++i) {
          upd(e.dq, e.max_dq, got_dq[i], ref.dq[i]), upd(n.dq, unused, low.dq[i], ref.dq[i]);
          upd(e.dk, e.max_dk, got_dk[i], ref.dk[i]), upd(n.dk, unused, low.dk[i], ref.dk[i]);
        }
        for (int64_t i = 0; i < T * Dv; ++i) {
          upd(e.o, e.max_o, got_o[i], ref.o[i]), upd(n.o, unused, low.o[i], ref.o[i]);
          upd(e.dv, e.max_dv, got_dv[i], ref.dv[i]), upd(n.dv, unused, low.dv[i], ref.dv[i]);
        }
        for (int64_t t = 0; t < T; ++t) {
          const double got = lse[(b * H + h) * T + t];
          e.lse = std::max(e.lse, std::isfinite(got) ? std::abs(got - ref.lse[t]) / (1 + std::abs(ref.lse[t])) : INFINITY);
        }
      }
    });
  for (auto& th : pool) th.join();

  Errors e, n;
  for (int64_t i = 0; i < B * H; ++i) {
    e.o = std::max(e.o, errs[i].o), e.dq = std::max(e.dq, errs[i].dq), e.dk = std::max(e.dk, errs[i].dk);
    e.dv = std::max(e.dv, errs[i].dv), e.lse = std::max(e.lse, errs[i].lse);
    e.max_o = std::max(e.max_o, errs[i].max_o), e.max_dq = std::max(e.max_dq, errs[i].max_dq);
    e.max_dk = std::max(e.max_dk, errs[i].max_dk), e.max_dv = std::max(e.max_dv, errs[i].max_dv);
    n.o = std::max(n.o, naive[i].o), n.dq = std::max(n.dq, naive[i].dq), n.dk = std::max(n.dk, naive[i].dk);
    n.dv = std::max(n.dv, naive[i].dv);
  }
  // The 1e-5 floor covers float32 rounding in dP - D (terms of size ~sqrt(D) that cancel exactly when T = 1,
  // where the reference gradient of q and k is 0 and the naive error happens to be 0 too).
  auto bound = [](double naive_err, double max_ref) { return 2 * naive_err + 1e-4 * max_ref + 1e-5; };
  EXPECT_LE(e.o, bound(n.o, e.max_o)) << "out: naive 16-bit error " << n.o;
  EXPECT_LE(e.dq, bound(n.dq, e.max_dq)) << "dq: naive 16-bit error " << n.dq;
  EXPECT_LE(e.dk, bound(n.dk, e.max_dk)) << "dk: naive 16-bit error " << n.dk;
  EXPECT_LE(e.dv, bound(n.dv, e.max_dv)) << "dv: naive 16-bit error " << n.dv;
  EXPECT_LE(e.lse, 1e-4) << "lse relative error";
  std::printf("[ %s%s ] err/naive: o %.2e/%.2e dq %.2e/%.2e dk %.2e/%.2e dv %.2e/%.2e lse %.1e\n",
              case_name(c).c_str(), deterministic ? " det" : "", e.o, n.o, e.dq, n.dq, e.dk, n.dk, e.dv, n.dv, e.lse);
}

TEST_P(FlashAttentionTest, MatchesReferenceWithAtomicDq) {
  SKIP_WITHOUT_GPU();
  run_case(GetParam(), false);
}

TEST_P(FlashAttentionTest, MatchesReferenceDeterministicAndBitIdentical) {
  SKIP_WITHOUT_GPU();
  run_case(GetParam(), true);
}

std::vector<Case> cases() {
  std::vector<Case> v;
  for (bool causal : {false, true}) {
    v.push_back({2, 1, 2, 64, causal, DType::BF16});
    v.push_back({1, 17, 3, 128, causal, DType::BF16});
    v.push_back({2, 197, 2, 64, causal, DType::BF16});
    v.push_back({1, 197, 2, 128, causal, DType::F16});
    v.push_back({1, 1000, 1, 128, causal, DType::BF16});
    v.push_back({1, 1000, 1, 64, causal, DType::F16});
    v.push_back({1, 256, 2, 128, causal, DType::BF16, 8.f});  // scores of std ~64: one key dominates
    v.push_back({1, 130, 2, 64, causal, DType::F16, 4.f});
    // Head dims other than 64/128 and pruned heads with Dqk != Dv (run in a wider tile, padded with zeros;
    // PrunedDims below covers every pair).
    v.push_back({1, 197, 3, 96, causal, DType::BF16});
    v.push_back({2, 65, 2, 64, causal, DType::BF16, 1.f, 32});
    v.push_back({1, 130, 2, 40, causal, DType::F16, 1.f, 72});
    v.push_back({1, 50, 1, 8, causal, DType::BF16, 1.f, 16});
    v.push_back({1, 70, 2, 32, causal, DType::BF16, 1.f, 128});  // tiles 32 x 128: dQ in halves of 16 columns
    v.push_back({1, 77, 1, 128, causal, DType::F16, 1.f, 24});   // tiles 128 x 32
    // The TMA forward (both tile widths 64 or 128) with batch and heads > 1, so that a wrong box coordinate
    // reads another head's or batch's rows: lengths of one row, one block plus one row (d128: blocks of 128
    // queries and keys; d64: 192 queries, 128 keys), several blocks and partial ones, and pruned dims whose
    // columns past the head dim come from the TMA unit's zero fill.
    v.push_back({2, 1, 3, 128, causal, DType::F16});
    v.push_back({2, 129, 3, 128, causal, DType::F16});
    v.push_back({3, 193, 2, 64, causal, DType::BF16});
    v.push_back({2, 1000, 2, 72, causal, DType::BF16, 1.f, 120});  // tiles 128 x 128
    v.push_back({2, 300, 3, 40, causal, DType::F16});              // tiles 64 x 64
    v.push_back({2, 385, 2, 64, causal, DType::BF16, 1.f, 128});   // tiles 64 x 128
    v.push_back({2, 257, 2, 120, causal, DType::F16, 1.f, 40});    // tiles 128 x 64
    // The TMA backward (same pairs, atomic dQ; a block owns 128 keys and walks query blocks of 64 rows at d128,
    // 128 at d64, through a 2-stage ring): one partial query block, a query block plus one row inside one key
    // block, a key block plus one row, and long rows that wrap the ring many times, with batch and heads > 1.
    // All pairs but 64 x 64 add dQ by bulk reduces into the tile-major accumulator: the ragged lengths with
    // batch·heads > 1 here and above (t17_h3 d128, t65, t129, t385 64 x 128, t257 128 x 64, t1000 128 x 128)
    // check that its tiles of different (batch, head, query block) do not mix.
    v.push_back({3, 17, 2, 64, causal, DType::BF16});
    v.push_back({2, 17, 3, 120, causal, DType::BF16, 1.f, 72});   // tiles 128 x 128
    v.push_back({2, 65, 2, 128, causal, DType::BF16});
    v.push_back({2, 129, 2, 64, causal, DType::F16});
    v.push_back({2, 1000, 2, 64, causal, DType::F16});
    // The 64x64 pair's forward at both block heights whatever seq would choose (192 rows: three consumer
    // warpgroups; 128: two): one row, one 192-row block plus one, pruned dims in 64-wide tiles, many blocks.
    for (int rows : {128, 192}) {
      v.push_back({2, 1, 3, 64, causal, DType::BF16, 1.f, 0, rows});
      v.push_back({3, 193, 2, 64, causal, DType::BF16, 1.f, 0, rows});
      v.push_back({2, 300, 3, 40, causal, DType::F16, 1.f, 0, rows});
      v.push_back({2, 1000, 2, 64, causal, DType::F16, 1.f, 0, rows});
    }
  }
  return v;
}

INSTANTIATE_TEST_SUITE_P(Grid, FlashAttentionTest, ::testing::ValuesIn(cases()),
                         [](const ::testing::TestParamInfo<Case>& i) { return case_name(i.param); });

// What pruning produces: every pair of q/k and v head dims among 8 … 128 (each tile width 32, 64 and 128 with
// head dims below, at and between them), causal and not, at ragged lengths (one partial block, several key and
// query blocks), alternating bf16 and f16 so each tile pair runs in both. One test per pair of tile widths
// (the kernel instantiation) runs all of its head-dim pairs, atomic and deterministic dQ.
std::vector<Case> pruned_cases() {
  const int64_t dims[] = {8, 16, 24, 32, 40, 48, 56, 64, 72, 96, 128};
  const int64_t seqs[] = {17, 70, 130, 197};
  std::vector<Case> v;
  int pair = 0;
  for (int64_t dqk : dims)
    for (int64_t dv : dims) {
      if (dqk == dv && (dqk == 64 || dqk == 128)) continue;  // in cases()
      for (int causal = 0; causal < 2; ++causal) {
        const DType dtype = (pair + causal) % 2 ? DType::F16 : DType::BF16;
        const int64_t seq = seqs[(pair + 2 * causal) % 4], heads = 1 + pair % 3 / 2;
        v.push_back({1, seq, heads, dqk, causal == 1, dtype, 1.f, dv == dqk ? 0 : dv});
      }
      ++pair;
    }
  return v;
}

class FlashAttentionPrunedTest : public ::testing::TestWithParam<std::pair<int, int>> {};

TEST_P(FlashAttentionPrunedTest, EveryHeadDimPairOfTheTilesMatchesTheReference) {
  SKIP_WITHOUT_GPU();
  const auto [qk_tile, v_tile] = GetParam();
  int cases = 0;
  for (const Case& c : pruned_cases())
    if (cuda::flash_attention_tile_width(c.dim) == qk_tile && cuda::flash_attention_tile_width(c.dv()) == v_tile) {
      run_case(c, false);
      run_case(c, true);
      ++cases;
    }
  EXPECT_GT(cases, 0) << "no head-dim pair runs in tiles " << qk_tile << " x " << v_tile;
}

INSTANTIATE_TEST_SUITE_P(PrunedDims, FlashAttentionPrunedTest,
                         ::testing::Values(std::pair{32, 32}, std::pair{32, 64}, std::pair{32, 128}, std::pair{64, 32},
                                           std::pair{64, 64}, std::pair{64, 128}, std::pair{128, 32},
                                           std::pair{128, 64}, std::pair{128, 128}),
                         [](const ::testing::TestParamInfo<std::pair<int, int>>& i) {
                           return "qk" + std::to_string(i.param.first) + "_v" + std::to_string(i.param.second);
                         });

// Argument checks run on the host, so these need no GPU.
TEST(FlashAttentionArgs, RejectsUnsupportedShapesWithClearErrors) {
  AttentionShape s;
  s.batch = 1, s.seq = 8, s.heads = 2, s.qk_dim = 64, s.v_dim = 64, s.scale = 0.125;
  EXPECT_EQ(cuda::flash_attention_check(s, DType::BF16), "");
  EXPECT_NE(cuda::flash_attention_check(s, DType::F32).find("dtype f32"), std::string::npos);
  s.v_dim = 32;  // pruned heads: Dqk != Dv is fine
  EXPECT_EQ(cuda::flash_attention_check(s, DType::BF16), "");
  s.v_dim = 20;
  EXPECT_NE(cuda::flash_attention_check(s, DType::BF16).find("v head dim 20 is not supported"), std::string::npos);
  s.v_dim = 64, s.qk_dim = 136;
  EXPECT_NE(cuda::flash_attention_check(s, DType::BF16).find("q/k head dim 136"), std::string::npos);
  s.qk_dim = 64, s.seq = 0;
  EXPECT_NE(cuda::flash_attention_check(s, DType::BF16).find("seq 0"), std::string::npos);
  s.seq = 8, s.scale = 0;
  EXPECT_NE(cuda::flash_attention_check(s, DType::BF16).find("softmax scale"), std::string::npos);
  for (const auto& [dim, tile] : {std::pair{8, 32}, std::pair{32, 32}, std::pair{40, 64}, std::pair{64, 64},
                                   std::pair{72, 128}, std::pair{128, 128}})
    EXPECT_EQ(cuda::flash_attention_tile_width(dim), tile) << "head dim " << dim;
  s.scale = 0.125, s.qk_dim = 12;
  try {
    cuda::flash_attention_forward(s, DType::BF16, nullptr, nullptr, nullptr, nullptr);
    FAIL() << "expected loom::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("flash attention: q/k head dim 12"), std::string::npos) << e.what();
  }
  s.qk_dim = 64;
  try {
    cuda::flash_attention_forward(s, DType::BF16, nullptr, nullptr, nullptr, nullptr, /*d64_query_rows=*/100);
    FAIL() << "expected loom::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("d64_query_rows 100 must be 0 (choose), 128 or 192"), std::string::npos)
        << e.what();
  }
  // The 64x64 forward's own choice: 192-row blocks for long sequences, 128 for short causal ones and where
  // 192 would pad much more (a ViT's 197 tokens).
  for (const auto& [seq, causal, rows] :
       {std::tuple{1, false, 128}, std::tuple{150, false, 192}, std::tuple{197, false, 128}, std::tuple{512, false, 192},
        std::tuple{1024, false, 192}, std::tuple{1024, true, 128}, std::tuple{197, true, 128},
        std::tuple{2048, true, 192}, std::tuple{4096, false, 192}})
    EXPECT_EQ(cuda::flash_attention_d64_query_rows(seq, causal), rows) << "seq " << seq << " causal " << causal;
}

// The atomic mode's dQ accumulator: B·T·H·dqk floats where dQ is added with atomics, B·H·ceil(T/kBr)·kBr·(q/k tile
// width) where the warp-specialised kernel adds whole query-block tiles (flash_attention_dq_layout.h); after the
// row sums D, each part rounded up to 256 bytes. Host-side, so no GPU needed.
TEST(FlashAttentionArgs, BackwardWorkspaceHoldsTheDqAccumulatorOfItsLayout) {
  AttentionShape s;
  s.batch = 2, s.seq = 65, s.heads = 3, s.scale = 0.125;
  auto round256 = [](size_t n) { return (n + 255) / 256 * 256; };
  const size_t dsum = round256(2 * 65 * 3 * 4);
  auto workspace = [&](int64_t dqk, int64_t dv, bool deterministic) {
    s.qk_dim = dqk, s.v_dim = dv;
    return cuda::flash_attention_backward_workspace_bytes(s, deterministic);
  };
  EXPECT_EQ(workspace(128, 128, true), dsum);
  EXPECT_EQ(workspace(128, 128, false), dsum + round256(2 * 3 * 2 * 64 * 128 * 4));  // kBr 64: 2 query blocks
  EXPECT_EQ(workspace(72, 40, false), dsum + round256(2 * 3 * 2 * 64 * 128 * 4));    // tiles 128 x 64
  EXPECT_EQ(workspace(40, 128, false), dsum + round256(2 * 3 * 2 * 64 * 64 * 4));    // tiles 64 x 128
  EXPECT_EQ(workspace(64, 64, false), dsum + round256(2 * 3 * 1 * 128 * 64 * 4));   // 64 x 64: kBr 128, 1 block
  EXPECT_EQ(workspace(32, 128, false), dsum + round256(2 * 65 * 3 * 32 * 4));        // cp.async kernel
}

}  // namespace
}  // namespace loom
