// FlashAttention-2 backward kernels. Included once by flash_attention.cu (templates instantiated there).
//
// Math, with P recomputed from the saved logsumexp (log2 domain: p_ij = 2^(s_ij - lse_i·log2 e)):
//   D_i   = Σ_d dO_id · O_id                                  (flash_bwd_dsum_kernel)
//   dV_j  = Σ_i p_ij dO_i
//   dP_ij = dO_i · v_j,   dS_ij = p_ij (dP_ij - D_i)
//   dK_j  = scale · Σ_i dS_ij q_i,   dQ_i = scale · Σ_j dS_ij k_j
//
// flash_bwd_kernel: a block owns kBc keys of one (batch, head) and walks the query blocks (from the diagonal
// when causal), keeping dK and dV for its keys in registers. Per query block: S = Q Kᵀ and dP = dO Vᵀ, then
// P and dS go to shared memory so that other warp tilings can form dV += Pᵀ dO, dK += dSᵀ Q and
// dQ_i += dS K; dQ is added into a float32 accumulator with atomics (or skipped: deterministic mode).
// Q, dO, lse and D of the next query block load with cp.async while the current one is used.
//
// flash_bwd_dq_kernel (deterministic mode): a block owns kBr query rows (warps split by rows, as in the
// forward) and walks the key blocks, recomputing P and dS and accumulating dQ in registers — no atomics, a
// fixed summation order, so repeated runs are bit-identical.
#pragma once
#include "kernels/cuda/flash_attention_common.cuh"

namespace loom::cuda::flash {

// D = rowsum(dO∘O) in f32, one warp per (b, t, h) row, laid out [B, H, T].
template <typename T, int D>
__global__ void flash_bwd_dsum_kernel(const Params<T> p, int64_t rows) {
  const int64_t row = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;
  const int h = row % p.heads;
  const int64_t bt = row / p.heads;  // b*T + t
  const T* o = p.out + bt * p.out_stride + p.o_col(h);
  const T* d = p.dout + bt * p.out_stride + p.o_col(h);
  float acc = 0.f;
#pragma unroll
  for (int i = lane * 2; i < D; i += 64) {
    if (i >= p.dv) break;
    const float2 of = to_float2(*reinterpret_cast<const typename Vec2<T>::type*>(o + i));
    const float2 df = to_float2(*reinterpret_cast<const typename Vec2<T>::type*>(d + i));
    acc += of.x * df.x + of.y * df.y;
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
  if (lane == 0) {
    const int64_t b = bt / p.seq, t = bt % p.seq;
    p.dsum[(b * p.heads + h) * p.seq + t] = acc;
  }
}

// dq (in dqkv) = scale · dq_accum, f32 [B, T, H, dqk] -> T.
template <typename T, int D>
__global__ void flash_bwd_dq_convert_kernel(const Params<T> p, int64_t n_pairs) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;  // index of an element pair
  if (i >= n_pairs) return;
  const int64_t e = 2 * i, hd = int64_t(p.heads) * p.dqk;
  const int64_t bt = e / hd, c = e % hd;
  const float2 v = *reinterpret_cast<const float2*>(p.dq_accum + e);
  *reinterpret_cast<uint32_t*>(p.dqkv + bt * p.qkv_stride + c) = MmaOp<T>::pack(v.x * p.scale, v.y * p.scale);
}

template <int D>
struct BwdTile {
  // FlashAttention-2's split for the backward: a block owns kBc = 128 keys and walks query blocks of kBr = 64.
  // Three warp layouts over the 8 warps, each with 32-row warp tiles so every fragment loaded from shared
  // memory feeds two tensor-core tiles:
  //   S, dP   (kBr x kBc):  2 (queries) x 4 (keys) warps, tiles kBr/2 x 32
  //   dV, dK  (kBc x D):    4 (keys) x 2 (head dim) warps, tiles 32 x D/2 — accumulated in registers
  //   dQ      (kBr x D):    2 (queries) x 4 (head dim) warps, tiles kBr/2 x D/4 — added to f32 with atomics
  // At D = 64 the query blocks are 128 rows (as in FlashAttention-2), halving the per-block overheads.
  static constexpr int kWarps = 8, kThreads = kWarps * 32, kBc = 128, kBr = D == 64 ? 128 : 64;
  static constexpr int kM = kBr / 32;  // 16-row tensor-core tiles per warp in the S/dP and dQ layouts
  // K, V; 2 stages of Q and dO; P and dS ([kBr][kBc] each); 2 stages of lse and D.
  static constexpr int kSmemBytes = (2 * kBc * D + 4 * kBr * D + 2 * kBr * kBc) * 2 + 4 * kBr * 4;
};

// Loads Q, dO (cp.async) and lse·log2(e), D (plain loads into shared memory) of query block q0. Rows past T
// get lse = +inf, so their recomputed probabilities are exactly 0.
template <typename T, int D, int kBr, int kThreads>
__device__ __forceinline__ void load_q_block(const Params<T>& p, T* sQ, T* sdO, float* sLse, float* sDsum,
                                             const T* qbase, const T* dobase, const float* lse_row,
                                             const float* dsum_row, int q0, int tid) {
  const bool qk_ok = col_ok<D>(tid, p.dqk), v_ok = col_ok<D>(tid, p.dv);
  load_tile<kBr, D, kThreads>(sQ, qbase + int64_t(q0) * p.qkv_stride, p.qkv_stride, p.seq - q0, qk_ok, tid);
  load_tile<kBr, D, kThreads>(sdO, dobase + int64_t(q0) * p.out_stride, p.out_stride, p.seq - q0, v_ok, tid);
  for (int i = tid; i < kBr; i += kThreads) {
    const bool ok = q0 + i < p.seq;
    sLse[i] = ok ? lse_row[q0 + i] * kLog2e : INFINITY;
    sDsum[i] = ok ? dsum_row[q0 + i] : 0.f;
  }
}

template <typename T, int D>
__global__ void __launch_bounds__(BwdTile<D>::kThreads) flash_bwd_kernel(const Params<T> p) {
  using Tile = BwdTile<D>;
  constexpr int kBr = Tile::kBr, kBc = Tile::kBc, kThreads = Tile::kThreads;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  T* sK = reinterpret_cast<T*>(smem_raw);
  T* sV = sK + kBc * D;
  T* sQ = sV + kBc * D;        // [2][kBr * D]
  T* sdO = sQ + 2 * kBr * D;   // [2][kBr * D]
  T* sP = sdO + 2 * kBr * D;   // P  [kBr][kBc]
  T* sdS = sP + kBr * kBc;     // dS [kBr][kBc]
  float* sLse = reinterpret_cast<float*>(sdS + kBr * kBc);  // [2][kBr]
  float* sDsum = sLse + 2 * kBr;                            // [2][kBr]

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t4 = lane % 4;
  const int h = blockIdx.y, b = blockIdx.z, T_ = p.seq;
  const int k0 = blockIdx.x * kBc;
  const T* batch = p.qkv + int64_t(b) * T_ * p.qkv_stride;
  const T* qbase = batch + p.q_col(h);
  const T* kbase = batch + p.k_col(h);
  const T* vbase = batch + p.v_col(h);
  const bool qk_ok = col_ok<D>(tid, p.dqk), v_ok = col_ok<D>(tid, p.dv);  // see load_tile
  const T* dobase = p.dout + int64_t(b) * T_ * p.out_stride + p.o_col(h);
  const float* lse_row = p.lse + (int64_t(b) * p.heads + h) * T_;
  const float* dsum_row = p.dsum + (int64_t(b) * p.heads + h) * T_;

  const int qb_begin = p.causal ? k0 / kBr : 0;
  const int qb_end = (T_ + kBr - 1) / kBr;

  load_tile<kBc, D, kThreads>(sK, kbase + int64_t(k0) * p.qkv_stride, p.qkv_stride, T_ - k0, qk_ok, tid);
  load_tile<kBc, D, kThreads>(sV, vbase + int64_t(k0) * p.qkv_stride, p.qkv_stride, T_ - k0, v_ok, tid);
  load_q_block<T, D, kBr, kThreads>(p, sQ, sdO, sLse, sDsum, qbase, dobase, lse_row, dsum_row, qb_begin * kBr, tid);
  cp_async_commit();

  // Warp tiles of the three layouts (see BwdTile).
  constexpr int kM = Tile::kM;
  const int sq = (warp / 4) * (kBr / 2), sk = (warp % 4) * 32;  // S, dP: query rows, keys
  const int vk = (warp / 2) * 32, vd = (warp % 2) * (D / 2);   // dV, dK: keys, head-dim columns
  const int qq = (warp / 4) * (kBr / 2), qd = (warp % 4) * (D / 4);  // dQ: query rows, head-dim columns
  // This lane's fragment addresses at kk = np = m = 0 (tile_step moves them); Q and dO add the stage offset.
  const uint32_t a_q0 = tile_addr<D>(sQ, sq + lane % 16, lane / 16);                      // S/dP: A rows
  const uint32_t b_kv0 = tile_addr<D>(sK, sk + lane % 8 + (lane / 16) * 8, (lane / 8) % 2);  // S/dP: B rows
  const uint32_t a_p0 = tile_addr<kBc>(sP, lane % 8 + (lane / 16) * 8, vk / 8 + (lane / 8) % 2);  // dV/dK: A
  const uint32_t b_o0 = tile_addr<D>(sQ, lane % 16, vd / 8 + lane / 16);                   // dV/dK: B
  const uint32_t a_ds0 = tile_addr<kBc>(sdS, qq + lane % 16, lane / 16);                  // dQ: A
  const uint32_t b_k0 = tile_addr<D>(sK, lane % 16, qd / 8 + lane / 16);                  // dQ: B
  constexpr uint32_t kQdO = 2 * kBr * D * 2, kStage = kBr * D * 2, kKV = kBc * D * 2, kPdS = kBr * kBc * 2;

  float dk[2][D / 16][4], dv[2][D / 16][4];
#pragma unroll
  for (int m = 0; m < 2; ++m)
#pragma unroll
    for (int n = 0; n < D / 16; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) dk[m][n][e] = dv[m][n][e] = 0.f;

  for (int qb = qb_begin; qb < qb_end; ++qb) {
    const int st = (qb - qb_begin) & 1, q0 = qb * kBr;
    cp_async_wait<0>();
    __syncthreads();  // block qb visible; everyone is done with block qb-1 (its buffers, P and dS)
    if (qb + 1 < qb_end)
      load_q_block<T, D, kBr, kThreads>(p, sQ + (st ^ 1) * kBr * D, sdO + (st ^ 1) * kBr * D, sLse + (st ^ 1) * kBr,
                                        sDsum + (st ^ 1) * kBr, qbase, dobase, lse_row, dsum_row, q0 + kBr, tid);
    cp_async_commit();
    const float* lse = sLse + st * kBr;
    const float* dsum = sDsum + st * kBr;
    const uint32_t a_q = opaque(a_q0) + st * kStage, b_kv = opaque(b_kv0), a_p = opaque(a_p0);
    const uint32_t b_o = opaque(b_o0) + st * kStage, a_ds = opaque(a_ds0), b_k = opaque(b_k0);

    // S = Q Kᵀ and dP = dO Vᵀ on this warp's kBr/2 x 32 tile (skipped when causality masks all of it: P = 0).
    float s[kM][4][4], dp[kM][4][4];
#pragma unroll
    for (int m = 0; m < kM; ++m)
#pragma unroll
      for (int n = 0; n < 4; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[m][n][e] = dp[m][n][e] = 0.f;
    const bool all_masked = p.causal && k0 + sk > q0 + sq + kBr / 2 - 1;
    if (!all_masked) {
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        uint32_t aq[kM][4], ao[kM][4];
#pragma unroll
        for (int m = 0; m < kM; ++m) {
          const uint32_t a = tile_step<D>(a_q, m * 16, 2 * kk);
          ldsm_x4(aq[m], a);
          ldsm_x4(ao[m], a + kQdO);
        }
#pragma unroll
        for (int np = 0; np < 2; ++np) {
          uint32_t bk[4], bv[4];
          const uint32_t a = tile_step<D>(b_kv, np * 16, 2 * kk);
          ldsm_x4(bk, a);
          ldsm_x4(bv, a + kKV);
#pragma unroll
          for (int m = 0; m < kM; ++m) {
            MmaOp<T>::run(s[m][2 * np], aq[m], bk[0], bk[1]);
            MmaOp<T>::run(s[m][2 * np + 1], aq[m], bk[2], bk[3]);
            MmaOp<T>::run(dp[m][2 * np], ao[m], bv[0], bv[1]);
            MmaOp<T>::run(dp[m][2 * np + 1], ao[m], bv[2], bv[3]);
          }
        }
      }
    }

    // P = 2^(s·scale·log2e - lse·log2e), masked; dS = P ∘ (dP - D) (scale applied at the end). Both to shared
    // memory, [query][key], for the transposed products below.
    const bool need_mask = k0 + kBc > T_ || (p.causal && k0 + sk + 31 > q0 + sq);
#pragma unroll
    for (int m = 0; m < kM; ++m)
#pragma unroll
      for (int n = 0; n < 4; ++n)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const int qi = sq + m * 16 + g + 8 * r, kc = sk + n * 8 + 2 * t4;
          float pv[2], ds[2];
#pragma unroll
          for (int c = 0; c < 2; ++c) {
            pv[c] = fast_exp2(s[m][n][2 * r + c] * p.scale_log2 - lse[qi]);
            if (need_mask) {
              const int key = k0 + kc + c;
              if (key >= T_ || (p.causal && key > q0 + qi)) pv[c] = 0.f;
            }
            ds[c] = pv[c] * (dp[m][n][2 * r + c] - dsum[qi]);
          }
          *reinterpret_cast<uint32_t*>(sP + swz<kBc>(qi, kc / 8) + 2 * t4) = MmaOp<T>::pack(pv[0], pv[1]);
          *reinterpret_cast<uint32_t*>(sdS + swz<kBc>(qi, kc / 8) + 2 * t4) = MmaOp<T>::pack(ds[0], ds[1]);
        }
    __syncthreads();  // P and dS complete

    // dV += Pᵀ dO and dK += dSᵀ Q on this warp's 32 keys x D/2 columns (k runs over the kBr queries).
#pragma unroll
    for (int kk = 0; kk < kBr / 16; ++kk) {
      uint32_t ap[2][4], ads[2][4];
#pragma unroll
      for (int m = 0; m < 2; ++m) {
        const uint32_t a = tile_step<kBc>(a_p, kk * 16, 2 * m);
        ldsm_x4_t(ap[m], a);
        ldsm_x4_t(ads[m], a + kPdS);
      }
#pragma unroll
      for (int np = 0; np < D / 32; ++np) {
        uint32_t bo[4], bq[4];
        const uint32_t a = tile_step<D>(b_o, kk * 16, 2 * np);
        ldsm_x4_t(bo, a + kQdO);
        ldsm_x4_t(bq, a);
#pragma unroll
        for (int m = 0; m < 2; ++m) {
          MmaOp<T>::run(dv[m][2 * np], ap[m], bo[0], bo[1]);
          MmaOp<T>::run(dv[m][2 * np + 1], ap[m], bo[2], bo[3]);
          MmaOp<T>::run(dk[m][2 * np], ads[m], bq[0], bq[1]);
          MmaOp<T>::run(dk[m][2 * np + 1], ads[m], bq[2], bq[3]);
        }
      }
    }

    if (p.dq_accum != nullptr) {
      // dQ += dS K on this warp's kBr/2 query rows x D/4 columns, added into the f32 accumulator.
      float acc[kM][D / 32][4];
#pragma unroll
      for (int m = 0; m < kM; ++m)
#pragma unroll
        for (int n = 0; n < D / 32; ++n) acc[m][n][0] = acc[m][n][1] = acc[m][n][2] = acc[m][n][3] = 0.f;
#pragma unroll
      for (int kk = 0; kk < kBc / 16; ++kk) {
        uint32_t a[kM][4];
#pragma unroll
        for (int m = 0; m < kM; ++m) ldsm_x4(a[m], tile_step<kBc>(a_ds, m * 16, 2 * kk));
#pragma unroll
        for (int np = 0; np < D / 64; ++np) {
          uint32_t bk[4];
          ldsm_x4_t(bk, tile_step<D>(b_k, kk * 16, 2 * np));
#pragma unroll
          for (int m = 0; m < kM; ++m) {
            MmaOp<T>::run(acc[m][2 * np], a[m], bk[0], bk[1]);
            MmaOp<T>::run(acc[m][2 * np + 1], a[m], bk[2], bk[3]);
          }
        }
      }
#pragma unroll
      for (int m = 0; m < kM; ++m)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const int row = q0 + qq + m * 16 + g + 8 * r;
          if (row >= T_) continue;
          float* dst = p.dq_accum + ((int64_t(b) * T_ + row) * p.heads + h) * p.dqk + qd + 2 * t4;
#pragma unroll
          for (int n = 0; n < D / 32; ++n)
            if (qd + n * 8 < p.dqk) atomicAdd(reinterpret_cast<float2*>(dst + n * 8), make_float2(acc[m][n][2 * r], acc[m][n][2 * r + 1]));
        }
    }
  }
  cp_async_wait<0>();

  // Epilogue: dK = scale · Σ dSᵀ Q and dV to dqkv, keys < T.
#pragma unroll
  for (int m = 0; m < 2; ++m)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int key = k0 + vk + m * 16 + g + 8 * r;
      if (key >= T_) continue;
      T* dkrow = p.dqkv + (int64_t(b) * T_ + key) * p.qkv_stride + p.k_col(h) + vd + 2 * t4;
      T* dvrow = p.dqkv + (int64_t(b) * T_ + key) * p.qkv_stride + p.v_col(h) + vd + 2 * t4;
#pragma unroll
      for (int n = 0; n < D / 16; ++n) {
        const int col = vd + n * 8;
        if (col < p.dqk)
          *reinterpret_cast<uint32_t*>(dkrow + n * 8) = MmaOp<T>::pack(dk[m][n][2 * r] * p.scale, dk[m][n][2 * r + 1] * p.scale);
        if (col < p.dv) *reinterpret_cast<uint32_t*>(dvrow + n * 8) = MmaOp<T>::pack(dv[m][n][2 * r], dv[m][n][2 * r + 1]);
      }
    }
}

template <int D>
struct DqTile {
  static constexpr int kWarps = 4, kThreads = kWarps * 32, kBr = 16 * kWarps, kBc = 64;
  static constexpr int kSmemBytes = (2 * kBr * D + 4 * kBc * D) * 2;  // Q, dO; 2 stages of K and V
};

template <typename T, int D>
__global__ void __launch_bounds__(DqTile<D>::kThreads) flash_bwd_dq_kernel(const Params<T> p) {
  using Tile = DqTile<D>;
  constexpr int kBr = Tile::kBr, kBc = Tile::kBc, kThreads = Tile::kThreads;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sdO = sQ + kBr * D;
  T* sK = sdO + kBr * D;      // [2][kBc * D]
  T* sV = sK + 2 * kBc * D;   // [2][kBc * D]

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t4 = lane % 4;
  const int qblock = p.causal ? gridDim.x - 1 - blockIdx.x : blockIdx.x;
  const int h = blockIdx.y, b = blockIdx.z, T_ = p.seq;
  const int q0 = qblock * kBr;
  const T* batch = p.qkv + int64_t(b) * T_ * p.qkv_stride;
  const T* qbase = batch + p.q_col(h);
  const T* kbase = batch + p.k_col(h);
  const T* vbase = batch + p.v_col(h);
  const bool qk_ok = col_ok<D>(tid, p.dqk), v_ok = col_ok<D>(tid, p.dv);  // see load_tile
  const T* dobase = p.dout + int64_t(b) * T_ * p.out_stride + p.o_col(h);

  int n_kblocks = (T_ + kBc - 1) / kBc;
  if (p.causal) n_kblocks = min(n_kblocks, (min(q0 + kBr, T_) + kBc - 1) / kBc);

  load_tile<kBr, D, kThreads>(sQ, qbase + int64_t(q0) * p.qkv_stride, p.qkv_stride, T_ - q0, qk_ok, tid);
  load_tile<kBr, D, kThreads>(sdO, dobase + int64_t(q0) * p.out_stride, p.out_stride, T_ - q0, v_ok, tid);
  load_tile<kBc, D, kThreads>(sK, kbase, p.qkv_stride, T_, qk_ok, tid);
  load_tile<kBc, D, kThreads>(sV, vbase, p.qkv_stride, T_, v_ok, tid);
  cp_async_commit();

  const int row0 = q0 + warp * 16 + g;  // this thread's rows: row0 and row0 + 8
  const uint32_t a_q0 = tile_addr<D>(sQ, warp * 16 + lane % 16, lane / 16);              // A: Q, dO rows
  const uint32_t b_kv0 = tile_addr<D>(sK, lane % 8 + (lane / 16) * 8, (lane / 8) % 2);  // B: K, V rows
  const uint32_t b_kt0 = tile_addr<D>(sK, lane % 16, lane / 16);                         // B: K (transposed)
  constexpr uint32_t kQdO = kBr * D * 2, kStage = kBc * D * 2, kKV = 2 * kBc * D * 2;
  float lse2[2], dsum[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = row0 + 8 * r;
    const int64_t at = (int64_t(b) * p.heads + h) * T_ + row;
    lse2[r] = row < T_ ? p.lse[at] * kLog2e : INFINITY;
    dsum[r] = row < T_ ? p.dsum[at] : 0.f;
  }
  float dq[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) dq[n][0] = dq[n][1] = dq[n][2] = dq[n][3] = 0.f;

  for (int j = 0; j < n_kblocks; ++j) {
    cp_async_wait<0>();
    __syncthreads();
    if (j + 1 < n_kblocks) {
      const int k1 = (j + 1) * kBc, st = (j + 1) & 1;
      load_tile<kBc, D, kThreads>(sK + st * kBc * D, kbase + int64_t(k1) * p.qkv_stride, p.qkv_stride, T_ - k1,
                                  qk_ok, tid);
      load_tile<kBc, D, kThreads>(sV + st * kBc * D, vbase + int64_t(k1) * p.qkv_stride, p.qkv_stride, T_ - k1,
                                  v_ok, tid);
    }
    cp_async_commit();
    const uint32_t stage = (j & 1) * kStage, a_q = opaque(a_q0), b_kv = opaque(b_kv0) + stage;
    const uint32_t b_kt = opaque(b_kt0) + stage;
    const int k0 = j * kBc;

    // S = Q Kᵀ and dP = dO Vᵀ (16 rows x kBc keys per warp).
    float s[kBc / 8][4], dp[kBc / 8][4];
#pragma unroll
    for (int n = 0; n < kBc / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[n][e] = dp[n][e] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t aq[4], ao[4];
      ldsm_x4(aq, tile_step<D>(a_q, 0, 2 * kk));
      ldsm_x4(ao, tile_step<D>(a_q, 0, 2 * kk) + kQdO);
#pragma unroll
      for (int np = 0; np < kBc / 16; ++np) {
        uint32_t bk[4], bv[4];
        const uint32_t a = tile_step<D>(b_kv, np * 16, 2 * kk);
        ldsm_x4(bk, a);
        ldsm_x4(bv, a + kKV);
        MmaOp<T>::run(s[2 * np], aq, bk[0], bk[1]);
        MmaOp<T>::run(s[2 * np + 1], aq, bk[2], bk[3]);
        MmaOp<T>::run(dp[2 * np], ao, bv[0], bv[1]);
        MmaOp<T>::run(dp[2 * np + 1], ao, bv[2], bv[3]);
      }
    }
    const bool need_mask = k0 + kBc > T_ || (p.causal && k0 + kBc - 1 > q0 + warp * 16);
#pragma unroll
    for (int n = 0; n < kBc / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = e >> 1;
        float pv = fast_exp2(s[n][e] * p.scale_log2 - lse2[r]);
        if (need_mask) {
          const int key = k0 + n * 8 + 2 * t4 + (e & 1);
          if (key >= T_ || (p.causal && key > row0 + 8 * r)) pv = 0.f;
        }
        dp[n][e] = pv * (dp[n][e] - dsum[r]);
      }
    // dQ += dS K.
#pragma unroll
    for (int kk = 0; kk < kBc / 16; ++kk) {
      uint32_t a[4];
      acc_to_a<T>(a, dp[2 * kk], dp[2 * kk + 1]);
#pragma unroll
      for (int np = 0; np < D / 16; ++np) {
        uint32_t bk[4];
        ldsm_x4_t(bk, tile_step<D>(b_kt, kk * 16, 2 * np));
        MmaOp<T>::run(dq[2 * np], a, bk[0], bk[1]);
        MmaOp<T>::run(dq[2 * np + 1], a, bk[2], bk[3]);
      }
    }
  }
  cp_async_wait<0>();

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = row0 + 8 * r;
    if (row >= T_) continue;
    T* dqrow = p.dqkv + (int64_t(b) * T_ + row) * p.qkv_stride + p.q_col(h);
#pragma unroll
    for (int n = 0; n < D / 8; ++n)
      if (n * 8 < p.dqk) *reinterpret_cast<uint32_t*>(dqrow + n * 8 + 2 * t4) = MmaOp<T>::pack(dq[n][2 * r] * p.scale, dq[n][2 * r + 1] * p.scale);
  }
}

}  // namespace loom::cuda::flash
