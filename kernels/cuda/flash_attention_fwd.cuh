// FlashAttention-2 forward kernel. Included once by flash_attention.cu (templates instantiated there).
//
// Math, per query row i (scores in the log2 domain: s_ij = scale·log2(e)·q_i·k_j, masked to -inf):
//   m_i = max_j s_ij,  l_i = Σ_j 2^(s_ij - m_i),  o_i = Σ_j 2^(s_ij - m_i) v_j / l_i,
//   lse_i = ln(2)·(m_i + log2 l_i)  (the natural-log logsumexp of scale·q_i·k_j; saved for the backward).
// Online over key blocks (FlashAttention-2): keep m, l and the UNNORMALISED o; when a block raises the running
// max from m to m', rescale o and l by 2^(m - m') once per block, and divide by l only at the end.
//
// Work split: a block owns kBr = 16·kWarps query rows of one (batch, head); each warp owns 16 rows, keeps its
// q fragments in registers and streams K/V tiles of kBc keys through shared memory with cp.async, double
// buffered (tile j+1 loads while tile j is used). Causal blocks stop at the diagonal and are launched heaviest
// first.
#pragma once
#include "kernels/cuda/flash_attention_common.cuh"

namespace loom::cuda::flash {

template <int D>
struct FwdTile {
  static constexpr int kWarps = 8, kThreads = kWarps * 32, kBr = 16 * kWarps, kBc = 64;
  static constexpr int kSmemBytes = (kBr * D + 4 * kBc * D) * 2;  // Q, 2 stages of K and V
};

template <typename T, int D>
__global__ void __launch_bounds__(FwdTile<D>::kThreads) flash_fwd_kernel(const Params<T> p) {
  using Tile = FwdTile<D>;
  constexpr int kBr = Tile::kBr, kBc = Tile::kBc, kThreads = Tile::kThreads;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sK = sQ + kBr * D;       // [2][kBc * D]
  T* sV = sK + 2 * kBc * D;   // [2][kBc * D]

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t4 = lane % 4;
  const int qblock = p.causal ? gridDim.x - 1 - blockIdx.x : blockIdx.x;
  const int h = blockIdx.y, b = blockIdx.z, T_ = p.seq;
  const int q0 = qblock * kBr;
  const T* qbase = p.qkv + int64_t(b) * T_ * p.qkv_stride + int64_t(h) * D;
  const T* kbase = qbase + int64_t(p.heads) * D;
  const T* vbase = kbase + int64_t(p.heads) * D;

  int n_kblocks = (T_ + kBc - 1) / kBc;
  if (p.causal) n_kblocks = min(n_kblocks, (min(q0 + kBr, T_) + kBc - 1) / kBc);

  load_tile<kBr, D, kThreads>(sQ, qbase + int64_t(q0) * p.qkv_stride, p.qkv_stride, T_ - q0, tid);
  cp_async_commit();
  load_tile<kBc, D, kThreads>(sK, kbase, p.qkv_stride, T_, tid);
  load_tile<kBc, D, kThreads>(sV, vbase, p.qkv_stride, T_, tid);
  cp_async_commit();
  cp_async_wait<1>();
  __syncthreads();

  uint32_t qf[D / 16][4];
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) ldsm_x4(qf[kk], sQ + swz<D>(warp * 16 + lane % 16, 2 * kk + lane / 16));

  float o[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  const int row0 = q0 + warp * 16 + g;  // this thread's rows: row0 and row0 + 8

  for (int j = 0; j < n_kblocks; ++j) {
    cp_async_wait<0>();
    __syncthreads();  // tile j visible to all; everyone is done with tile j-1, whose buffers we refill now
    if (j + 1 < n_kblocks) {
      const int k1 = (j + 1) * kBc, st = (j + 1) & 1;
      load_tile<kBc, D, kThreads>(sK + st * kBc * D, kbase + int64_t(k1) * p.qkv_stride, p.qkv_stride, T_ - k1, tid);
      load_tile<kBc, D, kThreads>(sV + st * kBc * D, vbase + int64_t(k1) * p.qkv_stride, p.qkv_stride, T_ - k1, tid);
    }
    cp_async_commit();
    const T* K = sK + (j & 1) * kBc * D;
    const T* V = sV + (j & 1) * kBc * D;
    const int k0 = j * kBc;

    // S = Q Kᵀ (16 x kBc per warp).
    float s[kBc / 8][4];
#pragma unroll
    for (int n = 0; n < kBc / 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
      for (int np = 0; np < kBc / 16; ++np) {
        uint32_t bk[4];
        ldsm_x4(bk, K + swz<D>(np * 16 + lane % 8 + (lane / 16) * 8, 2 * kk + (lane / 8) % 2));
        MmaOp<T>::run(s[2 * np], qf[kk], bk[0], bk[1]);
        MmaOp<T>::run(s[2 * np + 1], qf[kk], bk[2], bk[3]);
      }
    }

    // Scale into the log2 domain and mask keys past T and (causal) keys after the query.
    const bool need_mask = k0 + kBc > T_ || (p.causal && k0 + kBc - 1 > q0 + warp * 16);
#pragma unroll
    for (int n = 0; n < kBc / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float v = s[n][e] * p.scale_log2;
        if (need_mask) {
          const int key = k0 + n * 8 + 2 * t4 + (e & 1), row = row0 + 8 * (e >> 1);
          if (key >= T_ || (p.causal && key > row)) v = -INFINITY;
        }
        s[n][e] = v;
      }

    // Online softmax with delayed normalisation.
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float mx = m[r];
#pragma unroll
      for (int n = 0; n < kBc / 8; ++n) mx = fmaxf(mx, fmaxf(s[n][2 * r], s[n][2 * r + 1]));
      mx = quad_max(mx);
      const float base = mx == -INFINITY ? 0.f : mx;  // a row with nothing visible yet stays all-zero
      const float alpha = fast_exp2(m[r] - base);
      m[r] = mx;
      float sum = 0.f;
#pragma unroll
      for (int n = 0; n < kBc / 8; ++n) {
        s[n][2 * r] = fast_exp2(s[n][2 * r] - base);
        s[n][2 * r + 1] = fast_exp2(s[n][2 * r + 1] - base);
        sum += s[n][2 * r] + s[n][2 * r + 1];
      }
      l[r] = l[r] * alpha + sum;  // per-thread partial sum; the quad reduces it once at the end
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        o[n][2 * r] *= alpha;
        o[n][2 * r + 1] *= alpha;
      }
    }

    // O += P V.
#pragma unroll
    for (int kk = 0; kk < kBc / 16; ++kk) {
      uint32_t a[4];
      acc_to_a<T>(a, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
      for (int np = 0; np < D / 16; ++np) {
        uint32_t bv[4];
        ldsm_x4_t(bv, V + swz<D>(kk * 16 + lane % 16, 2 * np + lane / 16));
        MmaOp<T>::run(o[2 * np], a, bv[0], bv[1]);
        MmaOp<T>::run(o[2 * np + 1], a, bv[2], bv[3]);
      }
    }
  }
  cp_async_wait<0>();

  // Epilogue: normalise, store out rows < T and lse.
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float sum = quad_sum(l[r]);
    const int row = row0 + 8 * r;
    const float inv = sum > 0.f ? 1.f / sum : 0.f;
    if (row < T_) {
      T* orow = p.out_w + (int64_t(b) * T_ + row) * p.out_stride + int64_t(h) * D;
#pragma unroll
      for (int n = 0; n < D / 8; ++n)
        *reinterpret_cast<uint32_t*>(orow + n * 8 + 2 * t4) = MmaOp<T>::pack(o[n][2 * r] * inv, o[n][2 * r + 1] * inv);
      if (t4 == 0)
        p.lse[(int64_t(b) * p.heads + h) * T_ + row] = sum > 0.f ? (m[r] + log2f(sum)) * kLn2 : INFINITY;
    }
  }
}

}  // namespace loom::cuda::flash
