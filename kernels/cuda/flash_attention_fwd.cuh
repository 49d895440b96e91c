// FlashAttention-2 forward kernel on Hopper tensor cores (sm_90a: wgmma). Included once, by
// flash_attention_fwd.cu (instantiated there). It runs the tile pairs with a 32-wide tile; the pairs of widths
// 64 and 128 run the warp-specialised TMA kernel of flash_attention_fwd_ws.cuh (kForwardWs in
// flash_attention_launch.cuh), which shares this kernel's steps (flash_attention_fwd_steps.cuh).
//
// Math, per query row i (scores in the log2 domain: s_ij = scale·log2(e)·q_i·k_j, masked to -inf):
//   m_i = max_j s_ij,  l_i = Σ_j 2^(s_ij - m_i),  o_i = Σ_j 2^(s_ij - m_i) v_j / l_i,
//   lse_i = ln(2)·(m_i + log2 l_i)  (the natural-log logsumexp of scale·q_i·k_j; saved for the backward).
// Online over key blocks (FlashAttention-2): keep m, l and the UNNORMALISED o; when a block raises the running
// max from m to m', rescale o and l by 2^(m - m') once per block, and divide by l only at the end.
//
// Work split: a block of one or two warpgroups (FwdTile) owns kBr query rows of one (batch, head); each
// warpgroup owns 64 rows (one wgmma M tile), each of its warps 16 of them. Per key block of kBc keys:
//   S = Q Kᵀ     wgmma m64 nBc k16 over DQK/16 k-steps, A = Q and B = K from shared memory (both K-major)
//   softmax      on the S accumulators in registers (thread layout = mma.sync's C layout)
//   O += P V     wgmma m64 nDV k16, A = P from registers, B = V from shared memory (MN-major, transposed read)
// DQK and DV are the tile widths of the q/k and v head dims (32, 64 or 128, each at least its head dim), so a
// pruned head does only the tensor-core work of its own widths rounded up to 32 or 64.
// wgmma (asynchronous warpgroup MMA) reads its shared-memory operands directly: no ldmatrix, no B fragments in
// registers (the mma.sync version of this kernel ran 10-15% slower on H100). As in FlashAttention-3, the two
// products are pipelined within each warpgroup: S_j = Q K_jᵀ and O += P_{j-1} V_{j-1} are issued together, and
// the softmax of S_j (exponentials on the special-function units) runs while the second is still on the tensor
// cores. K/V tiles stream through shared memory with cp.async, double buffered. Causal blocks stop at the
// diagonal and are launched heaviest first.
//
// Shared-memory tiles use the atom layout of flash_attention_wgmma.cuh.
#pragma once
#include "kernels/cuda/flash_attention_fwd_steps.cuh"

namespace loom::cuda::flash {

template <int DQK, int DV>
struct FwdTile {
  // Measured on H100 (DQK = DV = D): at D = 128, two warpgroups (128 query rows) and key blocks of 128 (3-7%
  // faster than 64; one warpgroup was 30% slower; with the pipelined loop, one warpgroup with key blocks of 64 at
  // two blocks per SM was 5% slower); at D = 64, one warpgroup (64 rows: more blocks per SM, 3-5%
  // faster than two) and key blocks of 64 (128 was 15% slower). Other pairs take the choice of the wider one.
  // (Those measurements are of the equal pairs, which now run flash_attention_fwd_ws.cuh; the pairs left here
  // have one 32-wide tile and the other 32, 64 or 128.)
  static constexpr int kD = DQK > DV ? DQK : DV;
  static constexpr int kWarps = kD == 128 ? 8 : 4, kThreads = kWarps * 32, kBr = kWarps * 16;
  static constexpr int kBc = kD == 128 ? 128 : 64;
  static constexpr int kQkCols = atom_cols(DQK), kVCols = atom_cols(DV);  // see atom_cols
  static constexpr int kSmemBytes = (kBr * kQkCols + 2 * kBc * kQkCols + 2 * kBc * kVCols) * 2;  // Q, 2 stages of K, V
};

template <typename T, int DQK, int DV>
__global__ void __launch_bounds__(FwdTile<DQK, DV>::kThreads, 1) flash_fwd_kernel(const Params<T> p) {
  using Tile = FwdTile<DQK, DV>;
  constexpr int kBr = Tile::kBr, kBc = Tile::kBc, kThreads = Tile::kThreads;
  constexpr int kQkCols = Tile::kQkCols, kVCols = Tile::kVCols;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sK = sQ + kBr * kQkCols;       // [2][kBc * kQkCols]
  T* sV = sK + 2 * kBc * kQkCols;   // [2][kBc * kVCols]

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t4 = lane % 4;
  const int wg = warp / 4;  // warpgroup: query rows 64·wg of the block
  const int qblock = p.causal ? gridDim.x - 1 - blockIdx.x : blockIdx.x;
  const int h = blockIdx.y, b = blockIdx.z, T_ = p.seq;
  const int q0 = qblock * kBr, wq0 = q0 + wg * 64 + (warp % 4) * 16, row0 = wq0 + g;  // rows row0, row0 + 8
  const T* batch = p.qkv + int64_t(b) * T_ * p.qkv_stride;
  const T* qbase = batch + p.q_col(h);
  const T* kbase = batch + p.k_col(h);
  const T* vbase = batch + p.v_col(h);
  const bool qk_ok = col_ok<DQK>(tid, p.dqk), v_ok = col_ok<DV>(tid, p.dv);  // see col_ok

  int n_kblocks = (T_ + kBc - 1) / kBc;
  if (p.causal) n_kblocks = min(n_kblocks, (min(q0 + kBr, T_) + kBc - 1) / kBc);

  const uint32_t q_addr = smem_addr(sQ) + wg * 64 * 128, k_addr = smem_addr(sK), v_addr = smem_addr(sV);
  constexpr uint32_t kKStage = kBc * kQkCols * 2, kVStage = kBc * kVCols * 2;  // bytes
  // Key block j's K sits in K stage j & 1 and its V in V stage j & 1. K_{j+1} and V_j are loaded while S_j is
  // computed: one block ahead for K, which S needs first, none for V, which P·V needs one block later.
  auto load_k = [&](int j) {
    load_tile_atoms<kBc, DQK, kThreads>(sK + (j & 1) * kBc * kQkCols, kbase + int64_t(j) * kBc * p.qkv_stride,
                                        p.qkv_stride, T_ - j * kBc, qk_ok, tid);
  };
  auto load_v = [&](int j) {
    load_tile_atoms<kBc, DV, kThreads>(sV + (j & 1) * kBc * kVCols, vbase + int64_t(j) * kBc * p.qkv_stride,
                                       p.qkv_stride, T_ - j * kBc, v_ok, tid);
  };
  auto k_stage = [&](int j) { return k_addr + (j & 1) * kKStage; };
  auto v_stage = [&](int j) { return v_addr + (j & 1) * kVStage; };

  FwdRowState<kBc, DV> st;

  // Prologue: Q and K_0, then S_0 and its softmax while K_1 and V_0 load.
  load_tile_atoms<kBr, DQK, kThreads>(sQ, qbase + int64_t(q0) * p.qkv_stride, p.qkv_stride, T_ - q0, qk_ok, tid);
  load_k(0);
  cp_async_commit();
  cp_async_wait<0>();
  fence_proxy_async();
  __syncthreads();
  if (n_kblocks > 1) load_k(1);
  load_v(0);
  cp_async_commit();
  wgmma_fence();
  issue_scores<T, DQK, kBr, kBc>(st.s, q_addr, k_stage(0));
  wgmma_wait_all();
  pin(st.s);
  online_softmax<kBc>(st.s, st.mx, st.l, st.alpha, p, 0, wq0, row0, t4);
  pack_probabilities<kBc, T>(st.pa, st.s);

  // Steady state (FlashAttention-3's pipelining within a warpgroup): S_j = Q K_jᵀ and O += P_{j-1} V_{j-1} go to
  // the tensor cores back to back; the softmax of S_j runs while P_{j-1} V_{j-1} is still in flight, and O is
  // rescaled only once that product has landed.
  for (int j = 1; j < n_kblocks; ++j) {
    cp_async_wait<0>();
    fence_proxy_async();
    __syncthreads();  // K_j and V_{j-1} visible to all (and to the tensor cores); S_{j-1} and P_{j-2} V_{j-2}
                      // are done in every warpgroup, so K stage (j+1) & 1 and V stage j & 1 are free
    if (j + 1 < n_kblocks) load_k(j + 1);
    load_v(j);
    cp_async_commit();
    pin(st.o);
    pin(st.pa);
    wgmma_fence();
    issue_scores<T, DQK, kBr, kBc>(st.s, q_addr, k_stage(j));
    issue_pv<T, DV, kBc>(st.o, st.pa, v_stage(j - 1));
    wgmma_wait<1>();  // S_j has landed; P_{j-1} V_{j-1} may still run
    pin(st.s);
    online_softmax<kBc>(st.s, st.mx, st.l, st.alpha, p, j * kBc, wq0, row0, t4);
    wgmma_wait<0>();
    pin(st.o);
    pin(st.pa);
    rescale_output<DV>(st.o, st.alpha);
    pack_probabilities<kBc, T>(st.pa, st.s);
  }
  cp_async_wait<0>();
  fence_proxy_async();
  __syncthreads();  // V_{n-1} visible
  pin(st.o);
  pin(st.pa);
  wgmma_fence();
  issue_pv<T, DV, kBc>(st.o, st.pa, v_stage(n_kblocks - 1));
  wgmma_wait_all();
  pin(st.o);

  store_output<DV>(st.o, st.mx, st.l, p, b, h, row0, t4);
}

}  // namespace loom::cuda::flash
