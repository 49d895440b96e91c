// FlashAttention-3 style backward main kernel on Hopper (sm_90a): TMA loads from a producer warpgroup, two
// consumer warpgroups doing the products. Included once, by flash_attention_bwd_ws.cu (instantiated there).
//
// Which kernel runs what (kBackwardWs in flash_attention_launch.cuh): this one takes the atomic-dQ mode
// (dq_accum set) of the pairs with both tile widths in {64, 128} — the pairs of the TMA forward, whose header
// (flash_attention_fwd_ws.cuh) says why a tile must be whole 64-column atoms for one swizzled TMA box to write
// one atom. The deterministic mode (flash_bwd_kernel without dQ, then flash_bwd_dq_kernel) and the 32-wide pairs
// (both modes) stay on flash_attention_bwd.cuh's cp.async kernels. flash_bwd_dsum_kernel (D), the zeroing of
// dq_accum and flash_bwd_dq_convert_kernel run around this kernel as around the cp.async one.
//
// The math, the work split and the products are flash_bwd_kernel's (flash_attention_bwd.cuh; the steps are
// shared: flash_attention_bwd_steps.cuh): a block owns kBc = 128 keys of one (batch, head), keeps dK and dV in
// registers and walks the query blocks of kBr rows (from the diagonal when causal); per query block S and dP,
// P and dS to shared memory, dQ = dS K added into dq_accum with f32 atomics, dV += Pᵀ dO, dK += dSᵀ Q.
//
// Block: 1 producer warpgroup + 2 consumer warpgroups (the two warpgroups of flash_bwd_kernel's BwdTile split).
//   producer   warp 0, one thread: K and V of the block's keys once (TMA, barrier kv_full), then per query block n
//              Q_n and dO_n (TMA through the same 4-D views as the forward; dO's over the dout buffer) into ring
//              stage n % kStages. Warp 1: lse·log2(e) and D of block n's rows with plain loads into the same stage
//              (+inf and 0 for rows past seq, so their probabilities are exactly 0, as in flash_bwd_kernel).
//              A TMA view of the [B, H, T] f32 rows would need T·4 bytes to be a multiple of 16 (T % 4 == 0) and
//              a 16-byte aligned lse, which the API does not promise, and would fill rows past seq with 0 (not
//              +inf); one warp's coalesced loads a stage ahead cost the consumers nothing. Warps 2-3 exit.
//              setmaxnreg.dec hands the producer's registers to the consumers.
//   consumers  per query block n: wait for stage n; S, dP (wgmma, waited); P, dS into P/dS buffer n % 2; one named
//              barrier over the 256 consumer threads (P and dS complete); dQ issued, then dV/dK; dQ's atomics while
//              dV/dK run; after dV/dK have landed each warp releases stage n.
//   P and dS are double buffered (kPdsStages = 2), so one consumer barrier per query block suffices where
//   flash_bwd_kernel needs two: a warpgroup writes block n + 2's P/dS into buffer n % 2 only after passing block
//   n + 1's barrier, which the other warpgroup reaches only after its wgmma reading block n's P/dS (dQ, dV/dK)
//   completed.
//
// Barrier accounting (n = index of the query block from qb_begin, S = kStages, stage(n) = n % S,
// parity(n) = (n / S) & 1):
//   kv_full     1 arrival (arrive_expect_tx of the K and V bytes) + those bytes; consumers wait with parity 0.
//   full[s]     kFullArrivals = 1 (the TMA thread's arrive_expect_tx of the Q and dO bytes) + 32 (each lane of
//               the lse/D warp after its stores: mbarrier.arrive releases them, the consumers' wait acquires);
//               consumers wait for block n with parity(n). A lane cannot arrive for block n + S before the phase
//               of block n completed: it first waits for block n's release, which needs that phase.
//   empty[s]    kEmptyArrivals = 8: lane 0 of every consumer warp after its wgmma.wait_group shows block n's
//               dV/dK (the last products reading Q_n and dO_n; lse/D were read before the named barrier) complete;
//               the producer thread and the lse/D warp wait for the release of block n - S with parity(n) ^ 1
//               (returns at once on the first pass). No warp arrives twice in one phase: releasing block n + S
//               needs stage n + S loaded, which needs the phase of block n complete.
//   named barrier kPdsBarrier: bar.sync by all 256 consumer threads once per query block (after the P/dS stores
//               and fence.proxy.async), none by the producer; __syncthreads is used only before the roles split.
// Bytes per phase: a box is always delivered whole (rows past seq and columns past the head dim zero-filled
// and counted), so a stage is kBr·(kQkCols + kVCols)·2 bytes whatever the shape.
//
// Not built (no GPU to measure or test it on when this was written): dQ through shared memory and one TMA
// reduce-add per query block (cp.reduce.async.bulk.tensor ... .add.f32 into dq_accum, as FlashAttention-3) in
// place of up to 16 f32x2 atomics per consumer thread. It needs (1) a 32 KiB f32 dQ tile (kBr x DQK), which fits beside
// the double-buffered P/dS for 128x128 (225 KiB in all), 128x64 and 64x128, but not for 64x64 (already 226 KiB),
// where P/dS would go back to one buffer and a second consumer barrier; (2) a 128-byte-swizzled f32 layout
// (boxes of 32 columns): in a row-major tile the accumulator rows of a warp are 512 bytes apart and every
// float2 store is an 8-way bank conflict; (3) a dq_full mbarrier (256 arrivals, each writer after
// fence.proxy.async) waited by one producer thread that issues the reduce, commits it, waits until its shared
// reads are done (cp.async.bulk.wait_group.read 0) and arrives on a dq_empty barrier that the consumers wait on
// before writing the next tile.
#pragma once
#include "kernels/cuda/flash_attention_bwd_steps.cuh"
#include "kernels/cuda/flash_attention_tma.cuh"

namespace loom::cuda::flash {

// The TMA views the backward reads: q, k, v of qkv and dout, each 4-D {head dim, heads, seq, batch}
// (head_view in flash_attention_launch.cuh); one __grid_constant__ parameter, as TmaViews.
struct BwdTmaViews {
  CUtensorMap q, k, v, dout;
};

template <int DQK, int DV>
struct WsBwdTile {
  using Split = BwdTile<DQK, DV>;  // the consumers' work split, tiles kBr x kBc
  static constexpr int kBr = Split::kBr, kBc = Split::kBc, kQkCols = Split::kQkCols, kVCols = Split::kVCols;
  static constexpr int kConsumers = 2, kThreads = 128 * (kConsumers + 1), kStages = 2, kPdsStages = 2;
  static constexpr uint32_t kKBytes = kBc * kQkCols * 2, kVBytes = kBc * kVCols * 2;
  static constexpr uint32_t kQBytes = kBr * kQkCols * 2, kDoBytes = kBr * kVCols * 2, kPdsBytes = kBr * kBc * 2;
  // Shared memory: K, V; kStages of Q, of dO; kPdsStages of P, of dS (every tile a multiple of 1024 bytes, so all
  // start 1024-aligned as the 128-byte swizzle needs); kStages of lse·log2e, of D; the mbarriers. d128: 192 KiB
  // of tiles; 64x64 (kBr = 128): 224 KiB, within the 227 KiB a block may use.
  static constexpr uint32_t kVOffset = kKBytes, kQOffset = kVOffset + kVBytes;
  static constexpr uint32_t kDoOffset = kQOffset + kStages * kQBytes, kPOffset = kDoOffset + kStages * kDoBytes;
  static constexpr uint32_t kDsOffset = kPOffset + kPdsStages * kPdsBytes;
  static constexpr uint32_t kLseOffset = kDsOffset + kPdsStages * kPdsBytes, kDsumOffset = kLseOffset + kStages * kBr * 4;
  static constexpr uint32_t kBarrierOffset = kDsumOffset + kStages * kBr * 4;
  static constexpr int kBarriers = 1 + 2 * kStages;  // kv_full, full[kStages], empty[kStages]
  static constexpr int kSmemBytes = kBarrierOffset + kBarriers * 8;
  static_assert(kSmemBytes <= 227 * 1024, "shared memory beyond the 227 KiB a block may use");
  // Registers after setmaxnreg: the launch gives every thread 65536 / 384 rounded down to 8 = 168; the producer
  // keeps 24 and the consumers take 240 (as FlashAttention-3 with two consumers). A consumer's peak is
  // dK + dV + S + dP = 192 accumulators at d128 (dQ's 32 replace S and dP once those are in shared memory).
  static constexpr int kProducerRegs = 24, kConsumerRegs = 240;
  static_assert(128 * kProducerRegs + 128 * kConsumers * kConsumerRegs <= kThreads * (65536 / kThreads / 8 * 8),
                "register split exceeds the block's allocation");
  static constexpr int kLseWarp = 1;  // the producer warp that loads lse and D
  static constexpr uint32_t kFullArrivals = 1 + 32, kEmptyArrivals = 4 * kConsumers;
  static constexpr int kPdsBarrier = 1;  // named barrier of the consumers (0 is __syncthreads)
};

template <typename T, int DQK, int DV>
__global__ void __launch_bounds__(WsBwdTile<DQK, DV>::kThreads, 1)
    flash_bwd_ws_kernel(const Params<T> p, const __grid_constant__ BwdTmaViews views) {
  using Tile = WsBwdTile<DQK, DV>;
  constexpr int kBr = Tile::kBr, kBc = Tile::kBc, kStages = Tile::kStages, kPdsStages = Tile::kPdsStages;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const uint32_t sK = smem_addr(smem_raw), sV = sK + Tile::kVOffset, sQ = sK + Tile::kQOffset;
  const uint32_t sdO = sK + Tile::kDoOffset, sP = sK + Tile::kPOffset, sdS = sK + Tile::kDsOffset;
  float* sLse = reinterpret_cast<float*>(smem_raw + Tile::kLseOffset);    // [kStages][kBr]
  float* sDsum = reinterpret_cast<float*>(smem_raw + Tile::kDsumOffset);  // [kStages][kBr]
  const uint32_t kv_full = sK + Tile::kBarrierOffset;
  auto full = [&](int n) { return kv_full + 8 * (1 + n % kStages); };
  auto empty = [&](int n) { return kv_full + 8 * (1 + kStages + n % kStages); };
  auto parity = [](int n) { return uint32_t(n / kStages) & 1; };
  auto q_stage = [&](int n) { return sQ + (n % kStages) * Tile::kQBytes; };
  auto do_stage = [&](int n) { return sdO + (n % kStages) * Tile::kDoBytes; };

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, wg = warp / 4;
  const int h = blockIdx.y, b = blockIdx.z, k0 = blockIdx.x * kBc;
  const int qb_begin = p.causal ? k0 / kBr : 0, n_qblocks = (p.seq + kBr - 1) / kBr - qb_begin;  // >= 1

  if (tid == 0) {
    mbarrier_init(kv_full, 1);
    for (int s = 0; s < kStages; ++s) {
      mbarrier_init(full(s), Tile::kFullArrivals);
      mbarrier_init(empty(s), Tile::kEmptyArrivals);
    }
    fence_mbarrier_init();
  }
  __syncthreads();

  if (wg == 0) {  // producer warpgroup
    setmaxnreg_dec<Tile::kProducerRegs>();
    if (warp == 0 && lane == 0) {
      prefetch_tma_view(&views.q);
      prefetch_tma_view(&views.k);
      prefetch_tma_view(&views.v);
      prefetch_tma_view(&views.dout);
      // Box a of a tile = columns [64a, 64a + 64) = atom a, rows·128 bytes further on.
      mbarrier_arrive_expect_tx(kv_full, Tile::kKBytes + Tile::kVBytes);
      for (int a = 0; a < Tile::kQkCols / 64; ++a) tma_load_4d(sK + a * kBc * 128, &views.k, kv_full, 64 * a, h, k0, b);
      for (int a = 0; a < Tile::kVCols / 64; ++a) tma_load_4d(sV + a * kBc * 128, &views.v, kv_full, 64 * a, h, k0, b);
      for (int n = 0; n < n_qblocks; ++n) {
        const int q0 = (qb_begin + n) * kBr;
        mbarrier_wait(empty(n), parity(n) ^ 1);
        mbarrier_arrive_expect_tx(full(n), Tile::kQBytes + Tile::kDoBytes);
        for (int a = 0; a < Tile::kQkCols / 64; ++a)
          tma_load_4d(q_stage(n) + a * kBr * 128, &views.q, full(n), 64 * a, h, q0, b);
        for (int a = 0; a < Tile::kVCols / 64; ++a)
          tma_load_4d(do_stage(n) + a * kBr * 128, &views.dout, full(n), 64 * a, h, q0, b);
      }
    } else if (warp == Tile::kLseWarp) {
      const float* lse_row = p.lse + (int64_t(b) * p.heads + h) * p.seq;
      const float* dsum_row = p.dsum + (int64_t(b) * p.heads + h) * p.seq;
      for (int n = 0; n < n_qblocks; ++n) {
        const int q0 = (qb_begin + n) * kBr, st = n % kStages;
        mbarrier_wait(empty(n), parity(n) ^ 1);
#pragma unroll
        for (int j = 0; j < kBr / 32; ++j) {
          const int i = lane + 32 * j;
          const bool ok = q0 + i < p.seq;
          sLse[st * kBr + i] = ok ? lse_row[q0 + i] * kLog2e : INFINITY;
          sDsum[st * kBr + i] = ok ? dsum_row[q0 + i] : 0.f;
        }
        mbarrier_arrive(full(n));
      }
    }
    return;  // the consumers wait for every byte issued here before they finish
  }

  setmaxnreg_inc<Tile::kConsumerRegs>();
  const int cwg = wg - 1, wrow = (warp % 4) * 16 + lane / 4, t4 = lane % 4;
  const BwdSplit<DQK, DV> split(cwg);
  T* const p_tiles = reinterpret_cast<T*>(smem_raw + Tile::kPOffset);
  T* const ds_tiles = reinterpret_cast<T*>(smem_raw + Tile::kDsOffset);

  float dk[DQK / 2], dv[DV / 2];
#pragma unroll
  for (int i = 0; i < DQK / 2; ++i) dk[i] = 0.f;
#pragma unroll
  for (int i = 0; i < DV / 2; ++i) dv[i] = 0.f;

  mbarrier_wait(kv_full, 0);
  for (int n = 0; n < n_qblocks; ++n) {
    const int q0 = (qb_begin + n) * kBr, st = n % kStages, buf = n % kPdsStages;
    const uint32_t q_st = q_stage(n), do_st = do_stage(n);
    const uint32_t p_addr = sP + buf * Tile::kPdsBytes, ds_addr = sdS + buf * Tile::kPdsBytes;
    const int row_n = per_iteration(wrow), t4_n = per_iteration(t4);
    mbarrier_wait(full(n), parity(n));

    float s[Tile::Split::kN1 / 2], dp[Tile::Split::kN1 / 2];
    issue_scores_and_dp<T, DQK, DV>(s, dp, q_st, do_st, sK, sV, split);
    wgmma_wait_all();
    pin(s);
    pin(dp);
    store_p_and_ds<T, DQK, DV>(s, dp, sLse + st * kBr, sDsum + st * kBr, p, k0, q0, split, row_n, t4_n,
                               p_tiles + buf * kBr * kBc, ds_tiles + buf * kBr * kBc);
    fence_proxy_async();
    named_barrier_sync(Tile::kPdsBarrier, 128 * Tile::kConsumers);  // P and dS complete, visible to the tensor cores

    accumulate_gradients<T, DQK, DV, true>(dv, dk, p_addr, ds_addr, do_st, q_st, sK, p, b, h, q0, split, cwg, row_n,
                                           t4_n);
    if (lane == 0) mbarrier_arrive(empty(n));  // Q_n, dO_n (and lse/D, read before the barrier) no longer read
  }
  store_dk_dv<T, DQK, DV>(dk, dv, p, b, h, k0, cwg, wrow, t4);
}

}  // namespace loom::cuda::flash
