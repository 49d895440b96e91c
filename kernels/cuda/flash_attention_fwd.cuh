// FlashAttention-2 forward kernel. Included once by flash_attention.cu (templates instantiated there).
//
// Math, per query row i (scores in the log2 domain: s_ij = scale·log2(e)·q_i·k_j, masked to -inf):
//   m_i = max_j s_ij,  l_i = Σ_j 2^(s_ij - m_i),  o_i = Σ_j 2^(s_ij - m_i) v_j / l_i,
//   lse_i = ln(2)·(m_i + log2 l_i)  (the natural-log logsumexp of scale·q_i·k_j; saved for the backward).
// Online over key blocks (FlashAttention-2): keep m, l and the UNNORMALISED o; when a block raises the running
// max from m to m', rescale o and l by 2^(m - m') once per block, and divide by l only at the end.
//
// Work split: a block owns kBr query rows of one (batch, head), each warp 32 of them (split by query rows), and
// streams K/V tiles of kBc keys through shared memory with cp.async, double buffered (tile j+1 loads while
// tile j is used). Causal blocks stop at the diagonal and are launched heaviest
// first.
#pragma once
#include "kernels/cuda/flash_attention_common.cuh"

namespace loom::cuda::flash {

template <int D>
struct FwdTile {
  // FlashAttention-2's forward split: 4 warps of 32 query rows (two 16-row tensor-core tiles, so each K/V
  // fragment read from shared memory feeds two products), key blocks of 64.
  static constexpr int kWarps = 4, kThreads = kWarps * 32, kRows = 32, kBr = kRows * kWarps, kBc = D == 128 ? 32 : 64;
  static constexpr int kSmemBytes = (kBr * D + 4 * kBc * D) * 2;  // Q, 2 stages of K and V
};

template <typename T, int D>
__global__ void __launch_bounds__(FwdTile<D>::kThreads) flash_fwd_kernel(const Params<T> p) {
  using Tile = FwdTile<D>;
  constexpr int kBr = Tile::kBr, kBc = Tile::kBc, kThreads = Tile::kThreads;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sK = sQ + kBr * D;       // [2][kBc * D]
  T* sV = sK + 2 * kBc * D;   // [2][kBc * D]

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t4 = lane % 4;
  const int qblock = p.causal ? gridDim.x - 1 - blockIdx.x : blockIdx.x;
  const int h = blockIdx.y, b = blockIdx.z, T_ = p.seq;
  const int q0 = qblock * kBr, wq0 = q0 + warp * Tile::kRows;  // block's and warp's first query row
  const T* batch = p.qkv + int64_t(b) * T_ * p.qkv_stride;
  const T* qbase = batch + p.q_col(h);
  const T* kbase = batch + p.k_col(h);
  const T* vbase = batch + p.v_col(h);
  const bool qk_ok = col_ok<D>(tid, p.dqk), v_ok = col_ok<D>(tid, p.dv);  // see load_tile

  int n_kblocks = (T_ + kBc - 1) / kBc;
  if (p.causal) n_kblocks = min(n_kblocks, (min(q0 + kBr, T_) + kBc - 1) / kBc);

  load_tile<kBr, D, kThreads>(sQ, qbase + int64_t(q0) * p.qkv_stride, p.qkv_stride, T_ - q0, qk_ok, tid);
  load_tile<kBc, D, kThreads>(sK, kbase, p.qkv_stride, T_, qk_ok, tid);
  load_tile<kBc, D, kThreads>(sV, vbase, p.qkv_stride, T_, v_ok, tid);
  cp_async_commit();

  // This lane's fragment addresses at kk = np = m = 0 (tile_step moves them).
  const uint32_t a_q0 = tile_addr<D>(sQ, warp * Tile::kRows + lane % 16, lane / 16);
  const uint32_t b_k0 = tile_addr<D>(sK, lane % 8 + (lane / 16) * 8, (lane / 8) % 2);
  const uint32_t b_v0 = tile_addr<D>(sV, lane % 16, lane / 16);
  constexpr uint32_t kStage = kBc * D * 2;

  float o[2][D / 8][4];
#pragma unroll
  for (int m = 0; m < 2; ++m)
#pragma unroll
    for (int n = 0; n < D / 8; ++n) o[m][n][0] = o[m][n][1] = o[m][n][2] = o[m][n][3] = 0.f;
  // Running max (log2 domain) and per-thread partial row sums, for rows wq0 + 16m + g + 8r.
  float mx[2][2] = {{-INFINITY, -INFINITY}, {-INFINITY, -INFINITY}}, l[2][2] = {{0.f, 0.f}, {0.f, 0.f}};

  for (int j = 0; j < n_kblocks; ++j) {
    cp_async_wait<0>();
    __syncthreads();  // tile j visible to all; everyone is done with tile j-1, whose buffers we refill now
    if (j + 1 < n_kblocks) {
      const int k1 = (j + 1) * kBc, st = (j + 1) & 1;
      load_tile<kBc, D, kThreads>(sK + st * kBc * D, kbase + int64_t(k1) * p.qkv_stride, p.qkv_stride, T_ - k1,
                                  qk_ok, tid);
      load_tile<kBc, D, kThreads>(sV + st * kBc * D, vbase + int64_t(k1) * p.qkv_stride, p.qkv_stride, T_ - k1,
                                  v_ok, tid);
    }
    cp_async_commit();
    const uint32_t stage = (j & 1) * kStage, a_q = opaque(a_q0), b_k = opaque(b_k0) + stage, b_v = opaque(b_v0) + stage;
    const int k0 = j * kBc;
    if (p.causal && k0 > wq0 + Tile::kRows - 1) continue;  // every key of this block is after the warp's rows

    // S = Q Kᵀ (32 x kBc per warp).
    float s[2][kBc / 8][4];
#pragma unroll
    for (int m = 0; m < 2; ++m)
#pragma unroll
      for (int n = 0; n < kBc / 8; ++n) s[m][n][0] = s[m][n][1] = s[m][n][2] = s[m][n][3] = 0.f;
#pragma unroll 2
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t aq[2][4];
#pragma unroll
      for (int m = 0; m < 2; ++m) ldsm_x4(aq[m], tile_step<D>(a_q, m * 16, 2 * kk));
#pragma unroll
      for (int np = 0; np < kBc / 16; ++np) {
        uint32_t bk[4];
        ldsm_x4(bk, tile_step<D>(b_k, np * 16, 2 * kk));
#pragma unroll
        for (int m = 0; m < 2; ++m) {
          MmaOp<T>::run(s[m][2 * np], aq[m], bk[0], bk[1]);
          MmaOp<T>::run(s[m][2 * np + 1], aq[m], bk[2], bk[3]);
        }
      }
    }

    // Online softmax in the log2 domain, masking keys past T and (causal) keys after the query. The scale is
    // folded into the exponent (one FFMA per score); the running output is rescaled by 2^(old max - new max)
    // only when some row of the warp raised its max, and the division by l waits for the end.
    const bool need_mask = k0 + kBc > T_ || (p.causal && k0 + kBc - 1 > wq0);
    float alpha[2][2];
#pragma unroll
    for (int m = 0; m < 2; ++m)
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int row = wq0 + m * 16 + g + 8 * r;
        float rmax = -INFINITY;
#pragma unroll
        for (int n = 0; n < kBc / 8; ++n)
#pragma unroll
          for (int c = 0; c < 2; ++c) {
            if (need_mask) {
              const int key = k0 + n * 8 + 2 * t4 + c;
              if (key >= T_ || (p.causal && key > row)) s[m][n][2 * r + c] = -INFINITY;
            }
            rmax = fmaxf(rmax, s[m][n][2 * r + c]);
          }
        const float new_max = fmaxf(mx[m][r], quad_max(rmax) * p.scale_log2);
        const float base = new_max == -INFINITY ? 0.f : new_max;  // a row with nothing visible yet stays zero
        alpha[m][r] = fast_exp2(mx[m][r] - base);
        mx[m][r] = new_max;
        float sum = 0.f;
#pragma unroll
        for (int n = 0; n < kBc / 8; ++n)
#pragma unroll
          for (int c = 0; c < 2; ++c) {
            s[m][n][2 * r + c] = fast_exp2(fmaf(s[m][n][2 * r + c], p.scale_log2, -base));
            sum += s[m][n][2 * r + c];
          }
        l[m][r] = l[m][r] * alpha[m][r] + sum;  // per-thread partial sum; the quad reduces it once at the end
      }
    if (__any_sync(0xffffffffu, alpha[0][0] != 1.f || alpha[0][1] != 1.f || alpha[1][0] != 1.f || alpha[1][1] != 1.f)) {
#pragma unroll
      for (int m = 0; m < 2; ++m)
#pragma unroll
        for (int n = 0; n < D / 8; ++n) {
          o[m][n][0] *= alpha[m][0];
          o[m][n][1] *= alpha[m][0];
          o[m][n][2] *= alpha[m][1];
          o[m][n][3] *= alpha[m][1];
        }
    }

    // O += P V.
#pragma unroll
    for (int kk = 0; kk < kBc / 16; ++kk) {
      uint32_t a[2][4];
#pragma unroll
      for (int m = 0; m < 2; ++m) acc_to_a<T>(a[m], s[m][2 * kk], s[m][2 * kk + 1]);
#pragma unroll
      for (int np = 0; np < D / 16; ++np) {
        uint32_t bv[4];
        ldsm_x4_t(bv, tile_step<D>(b_v, kk * 16, 2 * np));
#pragma unroll
        for (int m = 0; m < 2; ++m) {
          MmaOp<T>::run(o[m][2 * np], a[m], bv[0], bv[1]);
          MmaOp<T>::run(o[m][2 * np + 1], a[m], bv[2], bv[3]);
        }
      }
    }
  }
  cp_async_wait<0>();

  // Epilogue: normalise, store out rows < T and lse.
#pragma unroll
  for (int m = 0; m < 2; ++m)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float sum = quad_sum(l[m][r]);
      const int row = wq0 + m * 16 + g + 8 * r;
      const float inv = sum > 0.f ? 1.f / sum : 0.f;
      if (row >= T_) continue;
      T* orow = p.out_w + (int64_t(b) * T_ + row) * p.out_stride + p.o_col(h) + 2 * t4;
#pragma unroll
      for (int n = 0; n < D / 8; ++n)
        if (n * 8 < p.dv) *reinterpret_cast<uint32_t*>(orow + n * 8) = MmaOp<T>::pack(o[m][n][2 * r] * inv, o[m][n][2 * r + 1] * inv);
      if (t4 == 0)
        p.lse[(int64_t(b) * p.heads + h) * T_ + row] = sum > 0.f ? (mx[m][r] + __log2f(sum)) * kLn2 : INFINITY;
    }
}

}  // namespace loom::cuda::flash
