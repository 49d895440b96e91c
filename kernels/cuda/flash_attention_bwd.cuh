// FlashAttention-2 backward kernels (sm_90a). Included once, by flash_attention_bwd.cu (instantiated there).
//
// Math, with P recomputed from the saved logsumexp (log2 domain: p_ij = 2^(s_ij - lse_i·log2 e)):
//   D_i   = Σ_d dO_id · O_id                                  (flash_bwd_dsum_kernel)
//   dV_j  = Σ_i p_ij dO_i
//   dP_ij = dO_i · v_j,   dS_ij = p_ij (dP_ij - D_i)
//   dK_j  = scale · Σ_i dS_ij q_i,   dQ_i = scale · Σ_j dS_ij k_j
//
// flash_bwd_kernel: a block owns kBc keys of one (batch, head) and walks the query blocks (from the diagonal
// when causal), keeping dK and dV for its keys in registers. Per query block: S = Q Kᵀ and dP = dO Vᵀ, then
// P and dS go to shared memory, from where the tensor cores read them transposed for dV += Pᵀ dO,
// dK += dSᵀ Q and (as is) for dQ_i += dS K; dQ is added into a float32 accumulator with atomics (or skipped:
// deterministic mode). dQ's product is issued first, so its atomics run while dV and dK are on the tensor cores.
// All five products are wgmma (sm_90a) on 128B-swizzled shared-memory tiles (the steps are shared with the
// warp-specialised kernel: flash_attention_bwd_steps.cuh). Q and dO of the next query block load with cp.async
// (lse and D with plain loads) while the current one is used. It runs the deterministic mode (without dQ) of
// every tile pair and the atomic mode of the pairs with a 32-wide tile; the atomic mode of the 64/128 pairs runs
// flash_attention_bwd_ws.cuh (kBackwardWs in flash_attention_launch.cuh).
//
// flash_bwd_dq_kernel (deterministic mode): a block owns kBr query rows (two warpgroups, as in the forward) and
// walks the key blocks, recomputing P and dS and accumulating dQ += dS K in registers (wgmma, dS from
// registers) — no atomics, a fixed summation order, so repeated runs are bit-identical.
#pragma once
#include "kernels/cuda/flash_attention_bwd_steps.cuh"

namespace loom::cuda::flash {

// The dot product of eight 16-bit values (one 16-byte load each) in f32.
template <typename T>
__device__ __forceinline__ float dot8(uint4 a, uint4 b) {
  using V = typename Vec2<T>::type;
  const V* x = reinterpret_cast<const V*>(&a);
  const V* y = reinterpret_cast<const V*>(&b);
  float acc = 0.f;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 fx = to_float2(x[i]), fy = to_float2(y[i]);
    acc += fx.x * fy.x + fx.y * fy.y;
  }
  return acc;
}

// D[b, h, t] = Σ_d dO[b, t, h, d] · O[b, t, h, d] in f32, laid out [B, H, T]; DV >= p.dv.
// One block per token row (b, t), launched with blockDim.x a multiple of 32 that is at least DV / 8: DV / 8 lanes
// per head, each reading 8 columns of O and of dO with one 16-byte load (p.dv is a multiple of 8, the rows and
// head offsets are multiples of 8 elements, so every load is aligned), summed across those lanes by shuffles.
// It moves the 2·B·T·H·dv·2 bytes of O and dO once, at the memory roofline (a warp per row with 4-byte loads,
// the earlier version, issued 4x the load instructions).
template <typename T, int DV>
__global__ void flash_bwd_dsum_kernel(const Params<T> p) {
  constexpr int kLanes = DV / 8;  // 4, 8 or 16: divides 32, so a head's lanes sit in one warp
  const int64_t bt = blockIdx.x;  // b*T + t
  const int64_t b = bt / p.seq, t = bt % p.seq;
  const int k = threadIdx.x % kLanes, heads_per_pass = blockDim.x / kLanes;
  const T* o = p.out + bt * p.out_stride;
  const T* d = p.dout + bt * p.out_stride;
  for (int h0 = 0; h0 < p.heads; h0 += heads_per_pass) {  // uniform over the block: every lane reaches the shuffles
    const int h = h0 + int(threadIdx.x) / kLanes;
    float acc = 0.f;
    if (h < p.heads && 8 * k < p.dv)
      acc = dot8<T>(*reinterpret_cast<const uint4*>(o + p.o_col(h) + 8 * k),
                    *reinterpret_cast<const uint4*>(d + p.o_col(h) + 8 * k));
#pragma unroll
    for (int off = kLanes / 2; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
    if (k == 0 && h < p.heads) p.dsum[(b * p.heads + h) * p.seq + t] = acc;
  }
}

// The layouts of the f32 dQ accumulator (atomic mode); launch_backward picks one per tile pair (DqAccum in
// flash_attention_bwd.cu) and converts it with the matching kernel below. floats: its size.
// Row-major [B, T, H, dqk]: flash_bwd_kernel's atomics (the pairs with a 32-wide tile).
struct RowMajorDq {
  static int64_t floats(int64_t batch, int64_t seq, int64_t heads, int64_t dqk) { return batch * seq * heads * dqk; }
};
// Tile-major [B, H, ceil(T/kBr), kBr·kDqk] in DqTileLayout order: the warp-specialised kernel's bulk reduce-adds
// (every pair it runs); rows past T and columns past dqk hold zeros and are never read.
template <int kBr_, int kDqk_>
struct TileMajorDq {
  static constexpr int kBr = kBr_, kDqk = kDqk_;
  using Layout = DqTileLayout<kBr, kDqk>;
  static int64_t floats(int64_t batch, int64_t seq, int64_t heads, int64_t) {
    return Layout::accumulator_floats(batch, heads, seq);
  }
};

// dq (in dqkv) = scale · dq_accum for the row-major accumulator: one block per token row (b, t), whose H·dqk
// floats are, in order, the dq columns of that row of dqkv; 16-byte loads, 8-byte stores (H·dqk is a multiple
// of 8 and dqkv's rows start 16-byte aligned).
template <typename T>
__global__ void flash_bwd_dq_convert_rows_kernel(const Params<T> p) {
  const int64_t bt = blockIdx.x;
  const int quads = p.heads * p.dqk / 4;
  const float4* src = reinterpret_cast<const float4*>(p.dq_accum + bt * p.heads * p.dqk);
  T* dst = p.dqkv + bt * p.qkv_stride;
  for (int i = threadIdx.x; i < quads; i += blockDim.x) {
    const float4 v = src[i];
    *reinterpret_cast<uint2*>(dst + 4 * i) =
        make_uint2(Pack16<T>::pack(v.x * p.scale, v.y * p.scale), Pack16<T>::pack(v.z * p.scale, v.w * p.scale));
  }
}

// dq (in dqkv) = scale · dq_accum for the tile-major accumulator: one block per pair of rows (t, t + 8) of one
// batch, t % 16 < 8 (kBr is a multiple of 16, so both rows lie in one query block's tile). Thread j takes column
// pairs (d, d + 1) j, j + blockDim.x, ... of every head: one float4 of the tile holds (t, d), (t, d + 1),
// (t + 8, d), (t + 8, d + 1) (DqTileLayout: float 4k + 2r + c), and consecutive column pairs are consecutive
// float4s within groups of four (a warp reads whole 32-byte sectors), while the stores of a warp are contiguous in
// both rows. On an H100 (2026-12-07, 16 heads of 128, 16k tokens, 201 MB moved) this runs 69 µs (2.9 TB/s);
// walking dq's columns and reading 8 of every 16 bytes (the kernel before) ran 122 µs, and reading chunk by chunk
// in memory order with 4-byte stores to two rows 223 µs (DRAM 35 % busy): the scattered stores set that time.
template <typename T, int kBr, int kDqk>
__global__ void flash_bwd_dq_convert_tiles_kernel(const Params<T> p, int row_pairs) {
  using Layout = DqTileLayout<kBr, kDqk>;
  const int64_t b = blockIdx.x / row_pairs;
  const int pair = int(blockIdx.x % row_pairs), t = pair / 8 * 16 + pair % 8;  // rows t and t + 8
  if (t >= p.seq) return;
  const int qb = t / kBr, half = p.dqk / 2;
  const bool second_row = t + 8 < p.seq;
  T* row0 = p.dqkv + (b * p.seq + t) * p.qkv_stride;
  T* row8 = row0 + 8 * p.qkv_stride;
  for (int j = threadIdx.x; j < p.heads * half; j += blockDim.x) {
    const int h = j / half, d = 2 * (j % half);
    const float4 v = *reinterpret_cast<const float4*>(p.dq_accum + Layout::tile_start(b, h, qb, p.heads, p.seq) +
                                                      Layout::offset(t % kBr, d));
    *reinterpret_cast<uint32_t*>(row0 + p.q_col(h) + d) = Pack16<T>::pack(v.x * p.scale, v.y * p.scale);
    if (second_row)
      *reinterpret_cast<uint32_t*>(row8 + p.q_col(h) + d) = Pack16<T>::pack(v.z * p.scale, v.w * p.scale);
  }
}

// Starts the loads of Q, dO (cp.async) and lse·log2(e), D (plain loads into shared memory) of query block q0.
// Rows past T get lse = +inf, so their recomputed probabilities are exactly 0.
template <typename T, int DQK, int DV, int kBr, int kThreads>
__device__ __forceinline__ void load_q_block(const Params<T>& p, T* sQ, T* sdO, float* sLse, float* sDsum,
                                             const T* qbase, const T* dobase, const float* lse_row,
                                             const float* dsum_row, int q0, int tid) {
  const bool qk_ok = col_ok<DQK>(tid, p.dqk), v_ok = col_ok<DV>(tid, p.dv);
  load_tile_atoms<kBr, DQK, kThreads>(sQ, qbase + int64_t(q0) * p.qkv_stride, p.qkv_stride, p.seq - q0, qk_ok,
                                      tid);
  load_tile_atoms<kBr, DV, kThreads>(sdO, dobase + int64_t(q0) * p.out_stride, p.out_stride, p.seq - q0, v_ok,
                                     tid);
  for (int i = tid; i < kBr; i += kThreads) {
    const bool ok = q0 + i < p.seq;
    sLse[i] = ok ? lse_row[q0 + i] * kLog2e : INFINITY;
    sDsum[i] = ok ? dsum_row[q0 + i] : 0.f;
  }
}

// kAtomicDq: dQ is added into p.dq_accum here (else flash_bwd_dq_kernel computes it). A template argument, not
// a runtime test: ptxas serialises every wgmma of a kernel whose wgmma groups differ between paths.
template <typename T, int DQK, int DV, bool kAtomicDq>
__global__ void __launch_bounds__(BwdTile<DQK, DV>::kThreads, 1) flash_bwd_kernel(const Params<T> p) {
  using Tile = BwdTile<DQK, DV>;
  constexpr int kBr = Tile::kBr, kBc = Tile::kBc, kThreads = Tile::kThreads, kN1 = Tile::kN1;
  constexpr int kQkCols = Tile::kQkCols, kVCols = Tile::kVCols;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  T* sK = reinterpret_cast<T*>(smem_raw);  // atom layout [kQkCols/64][kBc][64], as V, Q, dO
  T* sV = sK + kBc * kQkCols;
  T* sQ = sV + kBc * kVCols;         // [2][kBr * kQkCols]
  T* sdO = sQ + 2 * kBr * kQkCols;   // [2][kBr * kVCols]
  T* sP = sdO + 2 * kBr * kVCols;    // P  [kBr][kBc] in atom layout [kBc/64][kBr][64]
  T* sdS = sP + kBr * kBc;     // dS likewise
  float* sLse = reinterpret_cast<float*>(sdS + kBr * kBc);  // [2][kBr]
  float* sDsum = sLse + 2 * kBr;                            // [2][kBr]

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, t4 = lane % 4;
  const int wg = warp / 4, wrow = (warp % 4) * 16 + lane / 4;  // warpgroup; this thread's row (and +8) in a 64-row tile
  const int h = blockIdx.y, b = blockIdx.z, T_ = p.seq;
  const int k0 = blockIdx.x * kBc;
  const T* batch = p.qkv + int64_t(b) * T_ * p.qkv_stride;
  const T* qbase = batch + p.q_col(h);
  const T* kbase = batch + p.k_col(h);
  const T* vbase = batch + p.v_col(h);
  const T* dobase = p.dout + int64_t(b) * T_ * p.out_stride + p.o_col(h);
  const float* lse_row = p.lse + (int64_t(b) * p.heads + h) * T_;
  const float* dsum_row = p.dsum + (int64_t(b) * p.heads + h) * T_;
  const bool qk_ok = col_ok<DQK>(tid, p.dqk), v_ok = col_ok<DV>(tid, p.dv);  // see col_ok

  const int qb_begin = p.causal ? k0 / kBr : 0;
  const int qb_end = (T_ + kBr - 1) / kBr;

  load_tile_atoms<kBc, DQK, kThreads>(sK, kbase + int64_t(k0) * p.qkv_stride, p.qkv_stride, T_ - k0, qk_ok, tid);
  load_tile_atoms<kBc, DV, kThreads>(sV, vbase + int64_t(k0) * p.qkv_stride, p.qkv_stride, T_ - k0, v_ok, tid);
  load_q_block<T, DQK, DV, kBr, kThreads>(p, sQ, sdO, sLse, sDsum, qbase, dobase, lse_row, dsum_row,
                                          qb_begin * kBr, tid);
  cp_async_commit();

  const BwdSplit<DQK, DV> split(wg);
  const uint32_t aK = smem_addr(sK), aV = smem_addr(sV), aQ = smem_addr(sQ), adO = smem_addr(sdO);
  const uint32_t aP = smem_addr(sP), adS = smem_addr(sdS);
  constexpr uint32_t kQStage = kBr * kQkCols * 2, kDoStage = kBr * kVCols * 2;  // bytes

  float dk[DQK / 2], dv[DV / 2];
#pragma unroll
  for (int i = 0; i < DQK / 2; ++i) dk[i] = 0.f;
#pragma unroll
  for (int i = 0; i < DV / 2; ++i) dv[i] = 0.f;

  for (int qb = qb_begin; qb < qb_end; ++qb) {
    const int st = (qb - qb_begin) & 1, q0 = qb * kBr;
    cp_async_wait<0>();
    fence_proxy_async();
    __syncthreads();  // block qb visible (also to the tensor cores); block qb-1's buffers, P and dS are free
    if (qb + 1 < qb_end)
      load_q_block<T, DQK, DV, kBr, kThreads>(p, sQ + (st ^ 1) * kBr * kQkCols, sdO + (st ^ 1) * kBr * kVCols,
                                              sLse + (st ^ 1) * kBr, sDsum + (st ^ 1) * kBr, qbase, dobase, lse_row,
                                              dsum_row, q0 + kBr, tid);
    cp_async_commit();
    const uint32_t q_st = aQ + st * kQStage, do_st = adO + st * kDoStage;

    float s[kN1 / 2], dp[kN1 / 2];
    issue_scores_and_dp<T, DQK, DV>(s, dp, q_st, do_st, aK, aV, split);
    wgmma_wait_all();
    pin(s);
    pin(dp);
    store_p_and_ds<T, DQK, DV>(s, dp, sLse + st * kBr, sDsum + st * kBr, p, k0, q0, split, wrow, t4, sP, sdS);
    fence_proxy_async();
    __syncthreads();  // P and dS complete and visible to the tensor cores

    accumulate_gradients<T, DQK, DV, kAtomicDq>(dv, dk, aP, adS, do_st, q_st, aK, split, wg, [&](const auto& acc) {
      add_dq_atomic<T, DQK, DV>(acc, p, b, h, q0, split, wrow, t4);
    });
  }
  cp_async_wait<0>();
  store_dk_dv<T, DQK, DV>(dk, dv, p, b, h, k0, wg, wrow, t4);
}

template <int DQK, int DV>
struct DqTile {
  // Two warpgroups of 64 query rows each; key blocks of 64, double buffered.
  static constexpr int kD = DQK > DV ? DQK : DV;
  static constexpr int kWarps = 8, kThreads = kWarps * 32, kBr = 128, kBc = 64;
  static constexpr int kQkCols = atom_cols(DQK), kVCols = atom_cols(DV);
  // Q, dO; 2 stages of K and V.
  static constexpr int kSmemBytes = (kBr * (kQkCols + kVCols) + 2 * kBc * (kQkCols + kVCols)) * 2;
};

template <typename T, int DQK, int DV>
__global__ void __launch_bounds__(DqTile<DQK, DV>::kThreads, 1) flash_bwd_dq_kernel(const Params<T> p) {
  using Tile = DqTile<DQK, DV>;
  constexpr int kBr = Tile::kBr, kBc = Tile::kBc, kThreads = Tile::kThreads;
  constexpr int kQkCols = Tile::kQkCols, kVCols = Tile::kVCols;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);  // atom layout (flash_attention_wgmma.cuh)
  T* sdO = sQ + kBr * kQkCols;
  T* sK = sdO + kBr * kVCols;        // [2][kBc * kQkCols]
  T* sV = sK + 2 * kBc * kQkCols;    // [2][kBc * kVCols]

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t4 = lane % 4, wg = warp / 4;
  const int qblock = p.causal ? gridDim.x - 1 - blockIdx.x : blockIdx.x;
  const int h = blockIdx.y, b = blockIdx.z, T_ = p.seq;
  const int q0 = qblock * kBr, wq0 = q0 + wg * 64 + (warp % 4) * 16, row0 = wq0 + g;  // rows row0, row0 + 8
  const T* batch = p.qkv + int64_t(b) * T_ * p.qkv_stride;
  const T* qbase = batch + p.q_col(h);
  const T* kbase = batch + p.k_col(h);
  const T* vbase = batch + p.v_col(h);
  const T* dobase = p.dout + int64_t(b) * T_ * p.out_stride + p.o_col(h);
  const bool qk_ok = col_ok<DQK>(tid, p.dqk), v_ok = col_ok<DV>(tid, p.dv);  // see col_ok

  int n_kblocks = (T_ + kBc - 1) / kBc;
  if (p.causal) n_kblocks = min(n_kblocks, (min(q0 + kBr, T_) + kBc - 1) / kBc);

  load_tile_atoms<kBr, DQK, kThreads>(sQ, qbase + int64_t(q0) * p.qkv_stride, p.qkv_stride, T_ - q0, qk_ok, tid);
  load_tile_atoms<kBr, DV, kThreads>(sdO, dobase + int64_t(q0) * p.out_stride, p.out_stride, T_ - q0, v_ok, tid);
  load_tile_atoms<kBc, DQK, kThreads>(sK, kbase, p.qkv_stride, T_, qk_ok, tid);
  load_tile_atoms<kBc, DV, kThreads>(sV, vbase, p.qkv_stride, T_, v_ok, tid);
  cp_async_commit();

  float lse2[2], dsum[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = row0 + 8 * r;
    const int64_t at = (int64_t(b) * p.heads + h) * T_ + row;
    lse2[r] = row < T_ ? p.lse[at] * kLog2e : INFINITY;
    dsum[r] = row < T_ ? p.dsum[at] : 0.f;
  }
  const uint32_t aQ = smem_addr(sQ) + wg * 64 * 128, adO = smem_addr(sdO) + wg * 64 * 128;
  const uint32_t aK = smem_addr(sK), aV = smem_addr(sV);
  constexpr uint32_t kKStage = kBc * kQkCols * 2, kVStage = kBc * kVCols * 2;  // bytes
  float dq[DQK / 2];
#pragma unroll
  for (int i = 0; i < DQK / 2; ++i) dq[i] = 0.f;

  for (int j = 0; j < n_kblocks; ++j) {
    cp_async_wait<0>();
    fence_proxy_async();
    __syncthreads();  // tile j visible (also to the tensor cores); tile j-1's buffers are free
    if (j + 1 < n_kblocks) {
      const int k1 = (j + 1) * kBc, st = (j + 1) & 1;
      load_tile_atoms<kBc, DQK, kThreads>(sK + st * kBc * kQkCols, kbase + int64_t(k1) * p.qkv_stride,
                                          p.qkv_stride, T_ - k1, qk_ok, tid);
      load_tile_atoms<kBc, DV, kThreads>(sV + st * kBc * kVCols, vbase + int64_t(k1) * p.qkv_stride, p.qkv_stride,
                                         T_ - k1, v_ok, tid);
    }
    cp_async_commit();
    const uint32_t k_stage = (j & 1) * kKStage, v_stage = (j & 1) * kVStage;
    const int k0 = j * kBc;

    // S = Q Kᵀ (DQK/16 k-steps) and dP = dO Vᵀ (DV/16), K-major operands, 64 rows x kBc keys per warpgroup.
    float s[kBc / 2], dp[kBc / 2];
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < Tile::kD / 16; ++kk) {
      const uint32_t qoff = (kk / 4) * kBr * 128 + (kk % 4) * 32, koff = (kk / 4) * kBc * 128 + (kk % 4) * 32;
      if (kk < DQK / 16)
        wgmma_ss<T, kBc, 0, 0>(s, smem_desc(aQ + qoff, 16, 1024), smem_desc(aK + k_stage + koff, 16, 1024), kk > 0);
      if (kk < DV / 16)
        wgmma_ss<T, kBc, 0, 0>(dp, smem_desc(adO + qoff, 16, 1024), smem_desc(aV + v_stage + koff, 16, 1024),
                               kk > 0);
    }
    wgmma_commit();
    wgmma_wait_all();
    pin(s);
    pin(dp);

    // dS = P ∘ (dP - D) with P recomputed and masked, as A fragments (accumulator s[4n + 2r + c] is row
    // row0 + 8r, key k0 + 8n + 2t4 + c).
    const bool need_mask = k0 + kBc > T_ || (p.causal && k0 + kBc - 1 > wq0);
#pragma unroll
    for (int n = 0; n < kBc / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = e >> 1;
        float pv = fast_exp2(fmaf(s[4 * n + e], p.scale_log2, -lse2[r]));
        if (need_mask) {
          const int key = k0 + n * 8 + 2 * t4 + (e & 1);
          if (key >= T_ || (p.causal && key > row0 + 8 * r)) pv = 0.f;
        }
        dp[4 * n + e] = pv * (dp[4 * n + e] - dsum[r]);
      }
    uint32_t da[kBc / 16][4];
#pragma unroll
    for (int kk = 0; kk < kBc / 16; ++kk)
#pragma unroll
      for (int i = 0; i < 4; ++i) da[kk][i] = Pack16<T>::pack(dp[8 * kk + 2 * i], dp[8 * kk + 2 * i + 1]);

    // dQ += dS K: B = K read MN-major (head-dim atoms kBc·128 bytes apart); k-step = 16 keys.
    pin(dq);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kBc / 16; ++kk)
      wgmma_rs<T, DQK>(dq, da[kk], smem_desc(aK + k_stage + kk * 2048, kBc * 128, 1024), 1);
    wgmma_commit();
    wgmma_wait_all();
    pin(dq);
    pin(da);
  }
  cp_async_wait<0>();

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = row0 + 8 * r;
    if (row >= T_) continue;
    T* dqrow = p.dqkv + (int64_t(b) * T_ + row) * p.qkv_stride + p.q_col(h) + 2 * t4;
#pragma unroll
    for (int n = 0; n < DQK / 8; ++n)
      if (n * 8 < p.dqk)
        *reinterpret_cast<uint32_t*>(dqrow + n * 8) = Pack16<T>::pack(dq[4 * n + 2 * r] * p.scale, dq[4 * n + 2 * r + 1] * p.scale);
  }
}

}  // namespace loom::cuda::flash
