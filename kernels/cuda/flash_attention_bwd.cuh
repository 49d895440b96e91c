// FlashAttention-2 backward kernels. Included once by flash_attention.cu (templates instantiated there).
//
// Math, with P recomputed from the saved logsumexp (log2 domain: p_ij = 2^(s_ij - lse_i·log2 e)):
//   D_i   = Σ_d dO_id · O_id                                  (flash_bwd_dsum_kernel)
//   dV_j  = Σ_i p_ij dO_i
//   dP_ij = dO_i · v_j,   dS_ij = p_ij (dP_ij - D_i)
//   dK_j  = scale · Σ_i dS_ij q_i,   dQ_i = scale · Σ_j dS_ij k_j
//
// flash_bwd_kernel: a block owns kBc = 16·kWarps keys of one (batch, head) and walks the query blocks (from
// the diagonal when causal), keeping dK and dV for its keys in registers. Each warp owns 16 keys and computes
// the transposed products Sᵀ = K Qᵀ and dPᵀ = V dOᵀ, so Pᵀ and dSᵀ are already A operands for dV += Pᵀ dO and
// dK += dSᵀ Q. dSᵀ goes through shared memory so that the warps, now split by query rows, can form
// dQ_i += dS K and add it into a float32 accumulator with atomics (or skip it: deterministic mode).
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
  const T* o = p.out + bt * p.out_stride + int64_t(h) * D;
  const T* d = p.dout + bt * p.out_stride + int64_t(h) * D;
  float acc = 0.f;
#pragma unroll
  for (int i = lane * 2; i < D; i += 64) {
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

// dq (in dqkv) = scale · dq_accum, f32 [B, T, H, D] -> T.
template <typename T, int D>
__global__ void flash_bwd_dq_convert_kernel(const Params<T> p, int64_t n_pairs) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;  // index of an element pair
  if (i >= n_pairs) return;
  const int64_t e = 2 * i, hd = int64_t(p.heads) * D;
  const int64_t bt = e / hd, c = e % hd;
  const float2 v = *reinterpret_cast<const float2*>(p.dq_accum + e);
  *reinterpret_cast<uint32_t*>(p.dqkv + bt * p.qkv_stride + c) = MmaOp<T>::pack(v.x * p.scale, v.y * p.scale);
}

template <int D>
struct BwdTile {
  // Query blocks of 32 rows at D = 128 keep Sᵀ and dPᵀ small enough that dK and dV (128 floats a thread) stay
  // in registers without spilling.
  static constexpr int kWarps = 4, kThreads = kWarps * 32, kBc = 16 * kWarps, kBr = D == 128 ? 32 : 64;
  // dQ = dS K: warps split into kBr/16 row groups x (kWarps / row groups) column groups.
  static constexpr int kRowGroups = kBr / 16, kColGroups = kWarps / kRowGroups, kDqCols = D / kColGroups;
  // K, V; 2 stages of Q and dO; dSᵀ; 2 stages of lse and D.
  static constexpr int kSmemBytes = (2 * kBc * D + 4 * kBr * D + kBc * kBr) * 2 + 4 * kBr * 4;
};

// Loads Q, dO (cp.async) and lse·log2(e), D (plain loads into shared memory) of query block q0. Rows past T
// get lse = +inf, so their recomputed probabilities are exactly 0.
template <typename T, int D, int kBr, int kThreads>
__device__ __forceinline__ void load_q_block(const Params<T>& p, T* sQ, T* sdO, float* sLse, float* sDsum,
                                             const T* qbase, const T* dobase, const float* lse_row,
                                             const float* dsum_row, int q0, int tid) {
  load_tile<kBr, D, kThreads>(sQ, qbase + int64_t(q0) * p.qkv_stride, p.qkv_stride, p.seq - q0, tid);
  load_tile<kBr, D, kThreads>(sdO, dobase + int64_t(q0) * p.out_stride, p.out_stride, p.seq - q0, tid);
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
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* sK = reinterpret_cast<T*>(smem_raw);
  T* sV = sK + kBc * D;
  T* sQ = sV + kBc * D;        // [2][kBr * D]
  T* sdO = sQ + 2 * kBr * D;   // [2][kBr * D]
  T* sdS = sdO + 2 * kBr * D;  // dSᵀ [kBc][kBr]
  float* sLse = reinterpret_cast<float*>(sdS + kBc * kBr);  // [2][kBr]
  float* sDsum = sLse + 2 * kBr;                           // [2][kBr]

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t4 = lane % 4;
  const int h = blockIdx.y, b = blockIdx.z, T_ = p.seq;
  const int k0 = blockIdx.x * kBc;
  const T* qbase = p.qkv + int64_t(b) * T_ * p.qkv_stride + int64_t(h) * D;
  const T* kbase = qbase + int64_t(p.heads) * D;
  const T* vbase = kbase + int64_t(p.heads) * D;
  const T* dobase = p.dout + int64_t(b) * T_ * p.out_stride + int64_t(h) * D;
  const float* lse_row = p.lse + (int64_t(b) * p.heads + h) * T_;
  const float* dsum_row = p.dsum + (int64_t(b) * p.heads + h) * T_;

  const int qb_begin = p.causal ? k0 / kBr : 0;
  const int qb_end = (T_ + kBr - 1) / kBr;

  load_tile<kBc, D, kThreads>(sK, kbase + int64_t(k0) * p.qkv_stride, p.qkv_stride, T_ - k0, tid);
  load_tile<kBc, D, kThreads>(sV, vbase + int64_t(k0) * p.qkv_stride, p.qkv_stride, T_ - k0, tid);
  load_q_block<T, D, kBr, kThreads>(p, sQ, sdO, sLse, sDsum, qbase, dobase, lse_row, dsum_row, qb_begin * kBr, tid);
  cp_async_commit();

  float dk[D / 8][4], dv[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[n][e] = dv[n][e] = 0.f;
  const int key0 = k0 + warp * 16 + g;  // this thread's keys: key0 and key0 + 8

  for (int qb = qb_begin; qb < qb_end; ++qb) {
    const int st = (qb - qb_begin) & 1, q0 = qb * kBr;
    cp_async_wait<0>();
    __syncthreads();  // block qb visible; everyone is done with block qb-1 (its buffers and dSᵀ)
    if (qb + 1 < qb_end)
      load_q_block<T, D, kBr, kThreads>(p, sQ + (st ^ 1) * kBr * D, sdO + (st ^ 1) * kBr * D, sLse + (st ^ 1) * kBr,
                                        sDsum + (st ^ 1) * kBr, qbase, dobase, lse_row, dsum_row, q0 + kBr, tid);
    cp_async_commit();
    const T* Q = sQ + st * kBr * D;
    const T* dO = sdO + st * kBr * D;
    const float* lse = sLse + st * kBr;
    const float* dsum = sDsum + st * kBr;

    // Sᵀ = K Qᵀ and dPᵀ = V dOᵀ, 16 keys x kBr queries per warp.
    float s[kBr / 8][4], dp[kBr / 8][4];
#pragma unroll
    for (int n = 0; n < kBr / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[n][e] = dp[n][e] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t ak[4], av[4];
      ldsm_x4(ak, sK + swz<D>(warp * 16 + lane % 16, 2 * kk + lane / 16));
      ldsm_x4(av, sV + swz<D>(warp * 16 + lane % 16, 2 * kk + lane / 16));
#pragma unroll
      for (int np = 0; np < kBr / 16; ++np) {
        uint32_t bq[4], bo[4];
        const int r = np * 16 + lane % 8 + (lane / 16) * 8, c = 2 * kk + (lane / 8) % 2;
        ldsm_x4(bq, Q + swz<D>(r, c));
        ldsm_x4(bo, dO + swz<D>(r, c));
        MmaOp<T>::run(s[2 * np], ak, bq[0], bq[1]);
        MmaOp<T>::run(s[2 * np + 1], ak, bq[2], bq[3]);
        MmaOp<T>::run(dp[2 * np], av, bo[0], bo[1]);
        MmaOp<T>::run(dp[2 * np + 1], av, bo[2], bo[3]);
      }
    }

    // Pᵀ = 2^(s·scale·log2e - lse·log2e), masked; dSᵀ = Pᵀ ∘ (dPᵀ - D) (scale applied at the end).
    const bool need_mask = k0 + kBc > T_ || (p.causal && k0 + warp * 16 + 15 > q0);
#pragma unroll
    for (int n = 0; n < kBr / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int qi = n * 8 + 2 * t4 + (e & 1);
        float pv = fast_exp2(s[n][e] * p.scale_log2 - lse[qi]);
        if (need_mask) {
          const int key = key0 + 8 * (e >> 1);
          if (key >= T_ || (p.causal && key > q0 + qi)) pv = 0.f;
        }
        s[n][e] = pv;
        dp[n][e] = pv * (dp[n][e] - dsum[qi]);
      }

    // dSᵀ to shared memory for the dQ product.
    if (p.dq_accum != nullptr)
#pragma unroll
    for (int n = 0; n < kBr / 8; ++n)
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int kr = warp * 16 + g + 8 * r;
        *reinterpret_cast<uint32_t*>(sdS + swz<kBr>(kr, n) + 2 * t4) = MmaOp<T>::pack(dp[n][2 * r], dp[n][2 * r + 1]);
      }

    // dV += Pᵀ dO and dK += dSᵀ Q (k runs over the kBr queries).
#pragma unroll
    for (int kk = 0; kk < kBr / 16; ++kk) {
      uint32_t ap[4], ads[4];
      acc_to_a<T>(ap, s[2 * kk], s[2 * kk + 1]);
      acc_to_a<T>(ads, dp[2 * kk], dp[2 * kk + 1]);
#pragma unroll
      for (int np = 0; np < D / 16; ++np) {
        uint32_t bo[4], bq[4];
        ldsm_x4_t(bo, dO + swz<D>(kk * 16 + lane % 16, 2 * np + lane / 16));
        ldsm_x4_t(bq, Q + swz<D>(kk * 16 + lane % 16, 2 * np + lane / 16));
        MmaOp<T>::run(dv[2 * np], ap, bo[0], bo[1]);
        MmaOp<T>::run(dv[2 * np + 1], ap, bo[2], bo[3]);
        MmaOp<T>::run(dk[2 * np], ads, bq[0], bq[1]);
        MmaOp<T>::run(dk[2 * np + 1], ads, bq[2], bq[3]);
      }
    }

    if (p.dq_accum != nullptr) {
      __syncthreads();  // dSᵀ complete
      // dQ rows q0 + 16·rg + [0, 16), columns cg·kDqCols + [0, kDqCols) += dS K, 64 columns at a time, added
      // into the f32 accumulator.
      static_assert(Tile::kRowGroups * Tile::kColGroups == Tile::kWarps && Tile::kDqCols % 64 == 0, "dQ split");
      const int rg = warp % Tile::kRowGroups, cg = warp / Tile::kRowGroups;
      const int qrow = q0 + rg * 16 + g;
#pragma unroll
      for (int dc = cg * Tile::kDqCols / 64; dc < (cg + 1) * Tile::kDqCols / 64; ++dc) {
        float acc[8][4];
#pragma unroll
        for (int n = 0; n < 8; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < kBc / 16; ++kk) {
          uint32_t a[4];
          ldsm_x4_t(a, sdS + swz<kBr>(kk * 16 + lane % 8 + (lane / 16) * 8, 2 * rg + (lane / 8) % 2));
#pragma unroll
          for (int np = 0; np < 4; ++np) {
            uint32_t bk[4];
            ldsm_x4_t(bk, sK + swz<D>(kk * 16 + lane % 16, 8 * dc + 2 * np + lane / 16));
            MmaOp<T>::run(acc[2 * np], a, bk[0], bk[1]);
            MmaOp<T>::run(acc[2 * np + 1], a, bk[2], bk[3]);
          }
        }
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const int row = qrow + 8 * r;
          if (row < T_) {
            float* dst = p.dq_accum + ((int64_t(b) * T_ + row) * p.heads + h) * D + dc * 64 + 2 * t4;
#pragma unroll
            for (int n = 0; n < 8; ++n) atomicAdd(reinterpret_cast<float2*>(dst + n * 8), make_float2(acc[n][2 * r], acc[n][2 * r + 1]));
          }
        }
      }
    }
  }
  cp_async_wait<0>();

  // Epilogue: dK = scale · Σ dSᵀ Q and dV to dqkv, keys < T.
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int key = key0 + 8 * r;
    if (key >= T_) continue;
    T* dkrow = p.dqkv + (int64_t(b) * T_ + key) * p.qkv_stride + int64_t(p.heads + h) * D;
    T* dvrow = dkrow + int64_t(p.heads) * D;
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      *reinterpret_cast<uint32_t*>(dkrow + n * 8 + 2 * t4) = MmaOp<T>::pack(dk[n][2 * r] * p.scale, dk[n][2 * r + 1] * p.scale);
      *reinterpret_cast<uint32_t*>(dvrow + n * 8 + 2 * t4) = MmaOp<T>::pack(dv[n][2 * r], dv[n][2 * r + 1]);
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
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sdO = sQ + kBr * D;
  T* sK = sdO + kBr * D;      // [2][kBc * D]
  T* sV = sK + 2 * kBc * D;   // [2][kBc * D]

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t4 = lane % 4;
  const int qblock = p.causal ? gridDim.x - 1 - blockIdx.x : blockIdx.x;
  const int h = blockIdx.y, b = blockIdx.z, T_ = p.seq;
  const int q0 = qblock * kBr;
  const T* qbase = p.qkv + int64_t(b) * T_ * p.qkv_stride + int64_t(h) * D;
  const T* kbase = qbase + int64_t(p.heads) * D;
  const T* vbase = kbase + int64_t(p.heads) * D;
  const T* dobase = p.dout + int64_t(b) * T_ * p.out_stride + int64_t(h) * D;

  int n_kblocks = (T_ + kBc - 1) / kBc;
  if (p.causal) n_kblocks = min(n_kblocks, (min(q0 + kBr, T_) + kBc - 1) / kBc);

  load_tile<kBr, D, kThreads>(sQ, qbase + int64_t(q0) * p.qkv_stride, p.qkv_stride, T_ - q0, tid);
  load_tile<kBr, D, kThreads>(sdO, dobase + int64_t(q0) * p.out_stride, p.out_stride, T_ - q0, tid);
  load_tile<kBc, D, kThreads>(sK, kbase, p.qkv_stride, T_, tid);
  load_tile<kBc, D, kThreads>(sV, vbase, p.qkv_stride, T_, tid);
  cp_async_commit();

  const int row0 = q0 + warp * 16 + g;  // this thread's rows: row0 and row0 + 8
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
      load_tile<kBc, D, kThreads>(sK + st * kBc * D, kbase + int64_t(k1) * p.qkv_stride, p.qkv_stride, T_ - k1, tid);
      load_tile<kBc, D, kThreads>(sV + st * kBc * D, vbase + int64_t(k1) * p.qkv_stride, p.qkv_stride, T_ - k1, tid);
    }
    cp_async_commit();
    const T* K = sK + (j & 1) * kBc * D;
    const T* V = sV + (j & 1) * kBc * D;
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
      ldsm_x4(aq, sQ + swz<D>(warp * 16 + lane % 16, 2 * kk + lane / 16));
      ldsm_x4(ao, sdO + swz<D>(warp * 16 + lane % 16, 2 * kk + lane / 16));
#pragma unroll
      for (int np = 0; np < kBc / 16; ++np) {
        uint32_t bk[4], bv[4];
        const int r = np * 16 + lane % 8 + (lane / 16) * 8, c = 2 * kk + (lane / 8) % 2;
        ldsm_x4(bk, K + swz<D>(r, c));
        ldsm_x4(bv, V + swz<D>(r, c));
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
        ldsm_x4_t(bk, K + swz<D>(kk * 16 + lane % 16, 2 * np + lane / 16));
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
    T* dqrow = p.dqkv + (int64_t(b) * T_ + row) * p.qkv_stride + int64_t(h) * D;
#pragma unroll
    for (int n = 0; n < D / 8; ++n)
      *reinterpret_cast<uint32_t*>(dqrow + n * 8 + 2 * t4) = MmaOp<T>::pack(dq[n][2 * r] * p.scale, dq[n][2 * r + 1] * p.scale);
  }
}

}  // namespace loom::cuda::flash
