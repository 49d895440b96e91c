// The steps of one warpgroup's forward pass over a key block, shared by both forward kernels
// (flash_attention_fwd.cuh: FlashAttention-2 structure, cp.async; flash_attention_fwd_ws.cuh: TMA producer and
// ping-pong consumers). The math they implement is written above flash_attention_fwd.cuh's kernel.
//
// Each warpgroup owns 64 query rows (one wgmma M tile), each of its warps 16 of them; a thread holds rows
// row0 = (warp's first row) + lane/4 and row0 + 8. Shared-memory tiles use the atom layout of
// flash_attention_wgmma.cuh: Q as [DQK/64][kBr][64] (the warpgroup's rows start 64·128 bytes further per
// warpgroup), K as [DQK/64][kBc][64], V as [DV/64][kBc][64].
#pragma once
#include "kernels/cuda/flash_attention_wgmma.cuh"

namespace loom::cuda::flash {

// A thread's running state over the key blocks: the unnormalised O (accumulator layout), the running max (log2
// domain) and sum of its two rows, the last rescale factor, the scores of the block in flight and the previous
// block's probabilities as the A operand of P V.
template <int kBc, int DV>
struct FwdRowState {
  float o[DV / 2] = {};
  float mx[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f}, alpha[2];
  float s[kBc / 2];
  uint32_t pa[kBc / 16][4];
};

// S = Q Kᵀ for one warpgroup: 64 rows x kBc keys. k-step kk reads head-dim columns [16kk, 16kk+16), i.e. atom
// kk/4 at byte 32·(kk%4) of each 128-byte row. q_addr: the warpgroup's first Q row in atom 0 (shared address);
// k_addr: the K tile. Issued and committed as one wgmma group, not waited for.
template <typename T, int DQK, int kBr, int kBc>
__device__ __forceinline__ void issue_scores(float (&s)[kBc / 2], uint32_t q_addr, uint32_t k_addr) {
#pragma unroll
  for (int kk = 0; kk < DQK / 16; ++kk) {
    const uint32_t dq = q_addr + (kk / 4) * kBr * 128 + (kk % 4) * 32;
    const uint32_t dk = k_addr + (kk / 4) * kBc * 128 + (kk % 4) * 32;
    wgmma_ss<T, kBc, 0, 0>(s, smem_desc(dq, 16, 1024), smem_desc(dk, 16, 1024), kk > 0);
  }
  wgmma_commit();
}

// O += P V: k-step kk covers keys [16kk, 16kk+16) = 2048 bytes of every V atom; the head-dim atoms are kBc·128
// bytes apart (the leading byte offset of this MN-major operand). v_addr: the V tile. Issued and committed.
template <typename T, int DV, int kBc>
__device__ __forceinline__ void issue_pv(float (&o)[DV / 2], const uint32_t (&pa)[kBc / 16][4], uint32_t v_addr) {
#pragma unroll
  for (int kk = 0; kk < kBc / 16; ++kk)
    wgmma_rs<T, DV>(o, pa[kk], smem_desc(v_addr + kk * 2048, kBc * 128, 1024), 1);
  wgmma_commit();
}

// One key block's online-softmax step on this thread's rows row0 and row0 + 8 (accumulator
// s[4n + 2r + c] = S[row0 + 8r][k0 + 8n + 2t4 + c]): masks keys past T (and, causal, past the row), raises the
// running max mx, sets alpha = 2^(old max - new max) (the factor O and l are rescaled by), turns s into the
// unnormalised probabilities 2^(s·scale_log2 - max) and adds their row sums to l (after rescaling it).
// wq0: the first row of this thread's warp.
template <int kBc, typename T>
__device__ __forceinline__ void online_softmax(float (&s)[kBc / 2], float (&mx)[2], float (&l)[2], float (&alpha)[2],
                                               const Params<T>& p, int k0, int wq0, int row0, int t4) {
  const bool need_mask = k0 + kBc > p.seq || (p.causal && k0 + kBc - 1 > wq0);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = row0 + 8 * r;
    float rmax = -INFINITY;
#pragma unroll
    for (int n = 0; n < kBc / 8; ++n)
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        if (need_mask) {
          const int key = k0 + n * 8 + 2 * t4 + c;
          if (key >= p.seq || (p.causal && key > row)) s[4 * n + 2 * r + c] = -INFINITY;
        }
        rmax = fmaxf(rmax, s[4 * n + 2 * r + c]);
      }
    const float new_max = fmaxf(mx[r], quad_max(rmax) * p.scale_log2);
    const float base = new_max == -INFINITY ? 0.f : new_max;  // a row with nothing visible yet stays zero
    alpha[r] = fast_exp2(mx[r] - base);
    mx[r] = new_max;
    float sum = 0.f;
#pragma unroll
    for (int n = 0; n < kBc / 8; ++n)
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        float& v = s[4 * n + 2 * r + c];
        v = fast_exp2(fmaf(v, p.scale_log2, -base));
        sum += v;
      }
    l[r] = l[r] * alpha[r] + sum;
  }
}

// P (the probabilities of a key block, accumulator layout) as the register A operand of O += P V: accumulator
// tiles 2kk and 2kk+1 are k-step kk's A fragment.
template <int kBc, typename T>
__device__ __forceinline__ void pack_probabilities(uint32_t (&pa)[kBc / 16][4], const float (&s)[kBc / 2]) {
#pragma unroll
  for (int kk = 0; kk < kBc / 16; ++kk) {
    pa[kk][0] = Pack16<T>::pack(s[8 * kk], s[8 * kk + 1]);
    pa[kk][1] = Pack16<T>::pack(s[8 * kk + 2], s[8 * kk + 3]);
    pa[kk][2] = Pack16<T>::pack(s[8 * kk + 4], s[8 * kk + 5]);
    pa[kk][3] = Pack16<T>::pack(s[8 * kk + 6], s[8 * kk + 7]);
  }
}

// O *= alpha per row (o[4n + 2r + c] is row row0 + 8r): the rescale when a key block raised the running max.
template <int DV>
__device__ __forceinline__ void rescale_output(float (&o)[DV / 2], const float (&alpha)[2]) {
#pragma unroll
  for (int n = 0; n < DV / 8; ++n) {
    o[4 * n] *= alpha[0];
    o[4 * n + 1] *= alpha[0];
    o[4 * n + 2] *= alpha[1];
    o[4 * n + 3] *= alpha[1];
  }
}

// Epilogue: normalises O by the row sums, stores rows < T of out (columns < dv) and their lse.
template <int DV, typename T>
__device__ __forceinline__ void store_output(const float (&o)[DV / 2], const float (&mx)[2], const float (&l)[2],
                                             const Params<T>& p, int b, int h, int row0, int t4) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float sum = quad_sum(l[r]);
    const int row = row0 + 8 * r;
    const float inv = sum > 0.f ? 1.f / sum : 0.f;
    if (row >= p.seq) continue;
    T* orow = p.out_w + (int64_t(b) * p.seq + row) * p.out_stride + p.o_col(h) + 2 * t4;
#pragma unroll
    for (int n = 0; n < DV / 8; ++n)
      if (n * 8 < p.dv)
        *reinterpret_cast<uint32_t*>(orow + n * 8) = Pack16<T>::pack(o[4 * n + 2 * r] * inv, o[4 * n + 2 * r + 1] * inv);
    if (t4 == 0)
      p.lse[(int64_t(b) * p.heads + h) * p.seq + row] = sum > 0.f ? (mx[r] + __log2f(sum)) * kLn2 : INFINITY;
  }
}

}  // namespace loom::cuda::flash
