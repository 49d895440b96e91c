// The steps of one warpgroup's backward pass over a query block, shared by both backward kernels that walk query
// blocks for a block of keys (flash_attention_bwd.cuh: cp.async loads, every warp loads and computes;
// flash_attention_bwd_ws.cuh: TMA producer warpgroup, two consumer warpgroups). The math is written above
// flash_attention_bwd.cuh's kernels.
//
// Shared-memory tiles use the atom layout of flash_attention_wgmma.cuh: K as [DQK/64][kBc][64], V as
// [DV/64][kBc][64], Q as [DQK/64][kBr][64], dO as [DV/64][kBr][64], P and dS as [kBc/64][kBr][64] (query rows,
// key columns). A thread of warpgroup wg holds rows wrow and wrow + 8 of each 64-row accumulator tile
// (wrow = 16·(warp % 4) + lane / 4) and columns 8n + 2·t4 + {0, 1} (t4 = lane % 4).
#pragma once
#include "kernels/cuda/flash_attention_dq_layout.h"
#include "kernels/cuda/flash_attention_wgmma.cuh"

namespace loom::cuda::flash {

template <int DQK, int DV>
struct BwdTile {
  // A block owns kBc = 128 keys and walks query blocks of kBr rows (128 when both tile widths are at most 64,
  // else 64, so the S/dP accumulators and the dK/dV accumulators together fit in registers). Two warpgroups do
  // the products; every product is a wgmma with M = 64:
  //   S, dP (kBr x kBc):  kBr=128: warpgroup w takes query rows 64w, all keys (N = 128)
  //                       kBr=64: warpgroup w takes all 64 query rows, keys 64w (N = 64)
  //   dV, dK (kBc x DV, kBc x DQK): warpgroup w takes keys 64w, all columns — accumulated in registers over
  //                       query blocks
  //   dQ (kBr x DQK):     kBr=128: query rows 64w, all DQK columns; kBr=64: all 64 rows, columns w·DQK/2 (N = DQK/2)
  static constexpr int kD = DQK > DV ? DQK : DV;
  static constexpr int kWarps = 8, kThreads = kWarps * 32, kBc = 128, kBr = kD <= 64 ? 128 : 64;
  static constexpr int kN1 = kBr == 128 ? 128 : 64;        // N of the S/dP tiles
  static constexpr int kDqN = kBr == 128 ? DQK : DQK / 2;  // N of a warpgroup's dQ tile
  static constexpr int kQkCols = atom_cols(DQK), kVCols = atom_cols(DV);
  // The cp.async kernel's shared memory: K, V; 2 stages of Q and dO; P and dS; 2 stages of lse and D.
  static constexpr int kSmemBytes =
      (kBc * (kQkCols + kVCols) + 2 * kBr * (kQkCols + kVCols) + 2 * kBr * kBc) * 2 + 4 * kBr * 4;
};

// Warpgroup wg's share of the products (see BwdTile): the first query row and key of its S/dP tile, the first
// query row and head-dim column of its dQ tile.
template <int DQK, int DV>
struct BwdSplit {
  int s_q, s_k, dq_q, dq_d;
  __device__ __forceinline__ explicit BwdSplit(int wg) {
    using Tile = BwdTile<DQK, DV>;
    constexpr bool kTallQ = Tile::kBr == 128;
    s_q = kTallQ ? 64 * wg : 0, s_k = kTallQ ? 0 : 64 * wg;
    dq_q = kTallQ ? 64 * wg : 0, dq_d = kTallQ ? 0 : Tile::kDqN * wg;
  }
};

// v, unchanged, in a register the compiler cannot prove equal across loop iterations. Called on a thread's row and
// column indices inside the query-block loop, it keeps the compiler from hoisting the shared-memory and global
// addresses derived from them out of the loop, where they held registers the accumulators need (ptxas spilled
// 20-136 bytes in flash_bwd_ws_kernel without it, none with it); recomputing them costs a few integer operations.
__device__ __forceinline__ int per_iteration(int v) {
  asm volatile("" : "+r"(v));
  return v;
}

// S = Q Kᵀ over DQK/16 k-steps and dP = dO Vᵀ over DV/16 (K-major operands; k-step kk = head-dim columns
// [16kk, 16kk+16)). q_st, do_st: the query block's Q and dO tiles; k_addr, v_addr: the K and V tiles (shared
// addresses). Issued and committed as one wgmma group, not waited for.
template <typename T, int DQK, int DV>
__device__ __forceinline__ void issue_scores_and_dp(float (&s)[BwdTile<DQK, DV>::kN1 / 2],
                                                    float (&dp)[BwdTile<DQK, DV>::kN1 / 2], uint32_t q_st,
                                                    uint32_t do_st, uint32_t k_addr, uint32_t v_addr,
                                                    const BwdSplit<DQK, DV>& w) {
  using Tile = BwdTile<DQK, DV>;
  constexpr int kBr = Tile::kBr, kBc = Tile::kBc, kN1 = Tile::kN1;
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < Tile::kD / 16; ++kk) {
    const uint32_t qoff = (kk / 4) * kBr * 128 + w.s_q * 128 + (kk % 4) * 32;
    const uint32_t koff = (kk / 4) * kBc * 128 + w.s_k * 128 + (kk % 4) * 32;
    if (kk < DQK / 16)
      wgmma_ss<T, kN1, 0, 0>(s, smem_desc(q_st + qoff, 16, 1024), smem_desc(k_addr + koff, 16, 1024), kk > 0);
    if (kk < DV / 16)
      wgmma_ss<T, kN1, 0, 0>(dp, smem_desc(do_st + qoff, 16, 1024), smem_desc(v_addr + koff, 16, 1024), kk > 0);
  }
  wgmma_commit();
}

// P = 2^(s·scale·log2e - lse·log2e), masked; dS = P ∘ (dP - D) (scale applied at the end); both stored to the
// [query][key] tiles sP and sdS. lse2, dsum: the query block's lse·log2(e) and D rows (lse2 = +inf for rows past
// T, so their P is exactly 0). Accumulator s[4n + 2r + c] is (query s_q + wrow + 8r, key s_k + 8n + 2t4 + c).
// The caller makes the stores visible to the tensor cores (fence_proxy_async + a barrier).
template <typename T, int DQK, int DV>
__device__ __forceinline__ void store_p_and_ds(const float (&s)[BwdTile<DQK, DV>::kN1 / 2],
                                               const float (&dp)[BwdTile<DQK, DV>::kN1 / 2], const float* lse2,
                                               const float* dsum, const Params<T>& p, int k0, int q0,
                                               const BwdSplit<DQK, DV>& w, int wrow, int t4, T* sP, T* sdS) {
  using Tile = BwdTile<DQK, DV>;
  constexpr int kBr = Tile::kBr, kBc = Tile::kBc, kN1 = Tile::kN1;
  const bool need_mask = k0 + kBc > p.seq || (p.causal && k0 + w.s_k + kN1 - 1 > q0 + w.s_q);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int qi = w.s_q + wrow + 8 * r;
    const float lse_q = lse2[qi], dsum_q = dsum[qi];
    // Key k0 + s_k + 8n + 2t4 + c is visible iff it is below min(T, query + 1) (causal) or T: iff 8n + c < span.
    const int span = (p.causal ? min(p.seq, q0 + qi + 1) : p.seq) - (k0 + w.s_k + 2 * t4);
#pragma unroll
    for (int n = 0; n < kN1 / 8; ++n) {
      const int kc = w.s_k + n * 8 + 2 * t4;
      float pv[2], ds[2];
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        pv[c] = fast_exp2(fmaf(s[4 * n + 2 * r + c], p.scale_log2, -lse_q));
        if (need_mask && 8 * n + c >= span) pv[c] = 0.f;
        ds[c] = pv[c] * (dp[4 * n + 2 * r + c] - dsum_q);
      }
      const int off = atom_off<kBr>(qi, kc / 8) + (kc % 8);
      *reinterpret_cast<uint32_t*>(sP + off) = Pack16<T>::pack(pv[0], pv[1]);
      *reinterpret_cast<uint32_t*>(sdS + off) = Pack16<T>::pack(ds[0], ds[1]);
    }
  }
}

// dQ = dS K on query rows dq_q, head-dim columns dq_d .. dq_d + kDqN: A = dS K-major (key atoms kBr·128 bytes
// apart), B = K read MN-major from column dq_d (atom dq_d/64, byte 2·(dq_d%64) of each row); k-step = 16 keys.
// Overwrites acc; issued and committed, not waited for.
template <typename T, int DQK, int DV>
__device__ __forceinline__ void issue_dq(float (&acc)[BwdTile<DQK, DV>::kDqN / 2], uint32_t ds_addr,
                                         uint32_t k_addr, const BwdSplit<DQK, DV>& w) {
  using Tile = BwdTile<DQK, DV>;
  constexpr int kBr = Tile::kBr, kBc = Tile::kBc;
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < kBc / 16; ++kk) {
    const uint32_t a_off = (kk / 4) * kBr * 128 + w.dq_q * 128 + (kk % 4) * 32;
    const uint32_t b_off = (w.dq_d / 64) * kBc * 128 + (w.dq_d % 64) * 2 + kk * 2048;
    wgmma_ss<T, Tile::kDqN, 0, 1>(acc, smem_desc(ds_addr + a_off, 16, 1024),
                                  smem_desc(k_addr + b_off, kBc * 128, 1024), kk > 0);
  }
  wgmma_commit();
}

// dV += Pᵀ dO and dK += dSᵀ Q on keys 64·wg: A = Pᵀ / dSᵀ read MN-major from the [query][key] tiles (key atom
// wg), B = dO / Q read MN-major (head-dim atoms kBr·128 bytes apart); k-step = 16 query rows. Issued and
// committed, not waited for.
template <typename T, int DQK, int DV>
__device__ __forceinline__ void issue_dv_dk(float (&dv)[DV / 2], float (&dk)[DQK / 2], uint32_t p_addr,
                                            uint32_t ds_addr, uint32_t do_st, uint32_t q_st, int wg) {
  constexpr int kBr = BwdTile<DQK, DV>::kBr;
  pin(dv);
  pin(dk);
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < kBr / 16; ++kk) {
    const uint32_t a_off = wg * kBr * 128 + kk * 2048, b_off = kk * 2048;
    wgmma_ss<T, DV, 1, 1>(dv, smem_desc(p_addr + a_off, kBr * 128, 1024), smem_desc(do_st + b_off, kBr * 128, 1024),
                          1);
    wgmma_ss<T, DQK, 1, 1>(dk, smem_desc(ds_addr + a_off, kBr * 128, 1024), smem_desc(q_st + b_off, kBr * 128, 1024),
                           1);
  }
  wgmma_commit();
}

// Adds this thread's part of the dQ tile (rows < T, columns < dqk) into the f32 accumulator p.dq_accum
// [B, T, H, dqk] with atomics (unscaled: the dQ convert kernel applies the scale).
template <typename T, int DQK, int DV>
__device__ __forceinline__ void add_dq_atomic(const float (&acc)[BwdTile<DQK, DV>::kDqN / 2], const Params<T>& p,
                                              int b, int h, int q0, const BwdSplit<DQK, DV>& w, int wrow, int t4) {
  constexpr int kDqN = BwdTile<DQK, DV>::kDqN;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = q0 + w.dq_q + wrow + 8 * r;
    if (row >= p.seq) continue;
    float* dst = p.dq_accum + ((int64_t(b) * p.seq + row) * p.heads + h) * p.dqk + w.dq_d + 2 * t4;
#pragma unroll
    for (int n = 0; n < kDqN / 8; ++n)
      if (w.dq_d + n * 8 < p.dqk)
        atomicAdd(reinterpret_cast<float2*>(dst + n * 8), make_float2(acc[4 * n + 2 * r], acc[4 * n + 2 * r + 1]));
  }
}

// Writes this thread's dQ accumulator into the shared f32 dQ tile of the query block in DqTileLayout order: chunk
// acc[4n .. 4n+3] (rows dq_q + wrow and + 8, columns dq_d + 8n + 2t4 + {0, 1}) as one float4, a warp's 32 float4
// contiguous. The caller makes the stores visible to the async proxy (fence_proxy_async) and releases the tile.
template <int DQK, int DV>
__device__ __forceinline__ void store_dq_tile(const float (&acc)[BwdTile<DQK, DV>::kDqN / 2], float* tile,
                                              const BwdSplit<DQK, DV>& w, int wrow, int t4) {
  using Tile = BwdTile<DQK, DV>;
  using Layout = DqTileLayout<Tile::kBr, DQK>;
#pragma unroll
  for (int n = 0; n < Tile::kDqN / 8; ++n)
    *reinterpret_cast<float4*>(tile + Layout::offset(w.dq_q + wrow, w.dq_d + 8 * n + 2 * t4)) =
        make_float4(acc[4 * n], acc[4 * n + 1], acc[4 * n + 2], acc[4 * n + 3]);
}

// The products that read P and dS (in shared memory, visible to the tensor cores) for one query block:
// kDq: dQ = dS K issued first and handed to add_dq(acc) (atomics into dq_accum, or the shared dQ tile) as soon as
// it has landed, while dV and dK (a later wgmma group) are still on the tensor cores; then dV += Pᵀ dO,
// dK += dSᵀ Q. Returns once every product has landed, so that the caller may release the tiles they read.
template <typename T, int DQK, int DV, bool kDq, typename AddDq>
__device__ __forceinline__ void accumulate_gradients(float (&dv)[DV / 2], float (&dk)[DQK / 2], uint32_t p_addr,
                                                     uint32_t ds_addr, uint32_t do_st, uint32_t q_st,
                                                     uint32_t k_addr, const BwdSplit<DQK, DV>& w, int wg,
                                                     AddDq&& add_dq) {
  float acc[BwdTile<DQK, DV>::kDqN / 2];
  if constexpr (kDq) issue_dq<T, DQK, DV>(acc, ds_addr, k_addr, w);
  issue_dv_dk<T, DQK, DV>(dv, dk, p_addr, ds_addr, do_st, q_st, wg);
  if constexpr (kDq) {
    wgmma_wait<1>();  // dQ has landed; dV and dK may still run
    pin(acc);
    add_dq(acc);
  }
  wgmma_wait_all();
  pin(dv);
  pin(dk);
}

// Epilogue: dK = scale · Σ dSᵀ Q and dV to dqkv for keys < T of this warpgroup's 64 (from k0 + 64·wg), columns
// < dqk / dv. Accumulator dk[4n + 2r + c] is (key 64·wg + wrow + 8r, column 8n + 2t4 + c).
template <typename T, int DQK, int DV>
__device__ __forceinline__ void store_dk_dv(const float (&dk)[DQK / 2], const float (&dv)[DV / 2], const Params<T>& p,
                                            int b, int h, int k0, int wg, int wrow, int t4) {
  constexpr int kD = BwdTile<DQK, DV>::kD;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int key = k0 + 64 * wg + wrow + 8 * r;
    if (key >= p.seq) continue;
    T* dkrow = p.dqkv + (int64_t(b) * p.seq + key) * p.qkv_stride + p.k_col(h) + 2 * t4;
    T* dvrow = p.dqkv + (int64_t(b) * p.seq + key) * p.qkv_stride + p.v_col(h) + 2 * t4;
#pragma unroll
    for (int n = 0; n < kD / 8; ++n) {
      if (n < DQK / 8 && n * 8 < p.dqk)
        *reinterpret_cast<uint32_t*>(dkrow + n * 8) =
            Pack16<T>::pack(dk[4 * n + 2 * r] * p.scale, dk[4 * n + 2 * r + 1] * p.scale);
      if (n < DV / 8 && n * 8 < p.dv)
        *reinterpret_cast<uint32_t*>(dvrow + n * 8) = Pack16<T>::pack(dv[4 * n + 2 * r], dv[4 * n + 2 * r + 1]);
    }
  }
}

}  // namespace loom::cuda::flash
