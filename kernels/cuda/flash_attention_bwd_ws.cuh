// FlashAttention-3 style backward main kernel on Hopper (sm_90a): TMA loads from a producer warpgroup, two
// consumer warpgroups doing the products. Included once, by flash_attention_bwd_ws.cu (instantiated there).
//
// Which kernel runs what (kBackwardWs in flash_attention_launch.cuh): this one takes the atomic-dQ mode
// (dq_accum set) of the pairs with both tile widths in {64, 128} — the pairs of the TMA forward, whose header
// (flash_attention_fwd_ws.cuh) says why a tile must be whole 64-column atoms for one swizzled TMA box to write
// one atom. The deterministic mode (flash_bwd_kernel without dQ, then flash_bwd_dq_kernel) and the 32-wide pairs
// (both modes) stay on flash_attention_bwd.cuh's cp.async kernels. flash_bwd_dsum_kernel (D), the zeroing of
// dq_accum and flash_bwd_dq_convert_tiles_kernel run around this kernel as around the cp.async one.
//
// The math, the work split and the products are flash_bwd_kernel's (flash_attention_bwd.cuh; the steps are
// shared: flash_attention_bwd_steps.cuh): a block owns kBc = 128 keys of one (batch, head), keeps dK and dV in
// registers and walks the query blocks of kBr rows (from the diagonal when causal); per query block S and dP,
// P and dS to shared memory, dQ = dS K added into dq_accum, dV += Pᵀ dO, dK += dSᵀ Q. dQ leaves through a shared
// f32 tile and one bulk reduce-add per query block (FlashAttention-3's way; the 64x64 pair added it with f32
// atomics, as flash_bwd_kernel does, until its P/dS went to one buffer to make room for the tile).
//
// Block: 1 producer warpgroup + 2 consumer warpgroups (the two warpgroups of flash_bwd_kernel's BwdTile split).
//   producer   warp 0, one thread: K and V of the block's keys once (TMA, barrier kv_full), then per query block n
//              Q_n and dO_n (TMA through the same 4-D views as the forward; dO's over the dout buffer) into ring
//              stage n % kStages. Warp 1: lse·log2(e) and D of block n's rows with plain loads into the same stage
//              (+inf and 0 for rows past seq, so their probabilities are exactly 0, as in flash_bwd_kernel).
//              A TMA view of the [B, H, T] f32 rows would need T·4 bytes to be a multiple of 16 (T % 4 == 0) and
//              a 16-byte aligned lse, which the API does not promise, and would fill rows past seq with 0 (not
//              +inf); one warp's coalesced loads a stage ahead cost the consumers nothing. Warp 2, one thread:
//              per query block n, waits for the consumers' dQ tile, adds it into dq_accum with one
//              cp.reduce.async.bulk, waits until the tile has been read and hands it back. The other warps exit.
//              setmaxnreg.dec hands the producer's registers to the consumers.
//   consumers  per query block n: wait for stage n; S, dP (wgmma, waited); P, dS into P/dS buffer n % kPdsStages;
//              one named barrier over the 256 consumer threads (P and dS complete); dQ issued, then dV/dK; while
//              dV/dK run, dQ goes to the shared dQ tile (after block n - 1's reduce has read it); after dV/dK have
//              landed every consumer thread releases stage n.
//   P and dS double buffered (kPdsStages = 2, every pair but 64x64): one consumer barrier per query block suffices
//   where flash_bwd_kernel needs two: a warpgroup writes block n + 2's P/dS into buffer n % 2 only after passing
//   block n + 1's barrier, which the other warpgroup reaches only after its wgmma reading block n's P/dS (dQ,
//   dV/dK) completed. Single buffered (kPdsStages = 1, 64x64, whose 128-row P/dS tiles leave room for the dQ tile
//   only so): a second named barrier, kPdsFreeBarrier, which each warpgroup passes after its products of block
//   n - 1 landed and before it writes block n's P/dS; it waits there while its own S and dP of block n run.
//
// Barrier accounting (n = index of the query block from qb_begin, S = kStages, stage(n) = n % S,
// parity(n) = (n / S) & 1):
//   kv_full     1 arrival (arrive_expect_tx of the K and V bytes) + those bytes; consumers wait with parity 0.
//   full[s]     kFullArrivals = 1 (the TMA thread's arrive_expect_tx of the Q and dO bytes) + 32 (each lane of
//               the lse/D warp after its stores: mbarrier.arrive releases them, the consumers' wait acquires);
//               consumers wait for block n with parity(n). A lane cannot arrive for block n + S before the phase
//               of block n completed: it first waits for block n's release, which needs that phase.
//   empty[s]    kEmptyArrivals = 256: every consumer thread after its wgmma.wait_group shows block n's dV/dK (the
//               last products reading Q_n and dO_n) complete; each thread's own plain reads of lse/D are ordered
//               before its own arrival (release), so the lse/D warp's next stores into the stage (after its
//               acquiring wait) cannot race them — with one arrival per warp that ordering would rest on the
//               named barrier's cumulativity, which compute-sanitizer's racecheck does not follow (it reported
//               the lse/D stores racing the reads once the ring wrapped: seq 257, 385);
//               the producer thread and the lse/D warp wait for the release of block n - S with parity(n) ^ 1
//               (returns at once on the first pass). No thread arrives twice in one phase: releasing block n + S
//               needs stage n + S loaded, which needs the phase of block n complete.
//   dq_full     kDqFullArrivals = 256: every consumer thread after its float4 stores of block n's dQ and
//               its own fence.proxy.async (each writer orders its own generic-proxy stores before the async proxy's
//               read; one arrival per warp after __syncwarp would rest that on cumulativity through the warp
//               barrier, and 256 arrivals a block of 64 or 128 query rows cost nothing beside the products);
//               the reduce thread waits for block n with parity n & 1.
//   dq_empty    kDqEmptyArrivals = 1: the reduce thread after cp.async.bulk.wait_group.read 0 shows
//               block n's bulk reduce has read the tile; consumer threads wait for the release of block n - 1 with
//               parity (n & 1) ^ 1 (at once for n = 0) before writing block n. The tile is single buffered, so
//               both barriers advance one phase per query block, and none can be skipped: a consumer arrives on
//               dq_full for block n + 1 only after waiting for dq_empty's phase n, which needs dq_full's phase n
//               complete, so no block n + 1 arrival lands in phase n; the reduce thread arrives on dq_empty for
//               block n only after dq_full's phase n, which needs every consumer's wait for phase n - 1 passed.
//               Nor can a waiter find its barrier two phases past the one it waits for (which a parity wait could
//               not tell apart): dq_full's phase n + 1 needs arrivals that follow the reduce thread's own dq_empty
//               arrival for block n, and dq_empty's phase n needs this consumer's own dq_full arrival for block n.
//               The global accumulator is tile-major (flash_attention_dq_layout.h), so block n's tile is one
//               contiguous range and one 1-D bulk reduce (no tensor map) adds it; the reduce thread's final
//               cp.async.bulk.wait_group 0 makes every add complete before the block exits.
//   named barriers kPdsBarrier: bar.sync by all 256 consumer threads once per query block (after the P/dS stores
//               and fence.proxy.async); kPdsFreeBarrier (kPdsStages = 1): bar.sync by all 256 once per query block
//               but the first; none by the producer; __syncthreads is used only before the roles split.
// Bytes per phase: a box is always delivered whole (rows past seq and columns past the head dim zero-filled
// and counted), so a stage is kBr·(kQkCols + kVCols)·2 bytes whatever the shape.
//
// The dQ tile's order (flash_attention_dq_layout.h) is the accumulator fragments': chunk i (4 floats: rows r, r + 8,
// columns c, c + 1) of consumer thread u at floats 4·(256i + u), so a warp's float4 stores are 512 contiguous bytes
// and conflict-free (a row-major f32 tile puts a warp's accumulator rows 512 bytes apart: 8-way conflicts). That
// order, not FlashAttention-3's swizzled tensor boxes, is why the global accumulator is tile-major and
// flash_bwd_dq_convert_tiles_kernel reads it through the same map.
#pragma once
#include "kernels/cuda/flash_attention_bwd_ws_tile.cuh"
#include "kernels/cuda/flash_attention_tma.cuh"

namespace loom::cuda::flash {

// The TMA views the backward reads: q, k, v of qkv and dout, each 4-D {head dim, heads, seq, batch}
// (head_view in flash_attention_launch.cuh); one __grid_constant__ parameter, as TmaViews.
struct BwdTmaViews {
  CUtensorMap q, k, v, dout;
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
  // The dQ tile is single buffered, so its barriers' phase n is query block n.
  const uint32_t dq_full = kv_full + 8 * (1 + 2 * kStages), dq_empty = dq_full + 8;
  float* const sDq = reinterpret_cast<float*>(smem_raw + Tile::kDqOffset);
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
    mbarrier_init(dq_full, Tile::kDqFullArrivals);
    mbarrier_init(dq_empty, Tile::kDqEmptyArrivals);
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
    } else if (warp == Tile::kDqWarp && lane == 0) {
      using Layout = typename Tile::DqLayout;
      for (int n = 0; n < n_qblocks; ++n) {
        mbarrier_wait(dq_full, n & 1);
        bulk_reduce_add_f32(p.dq_accum + Layout::tile_start(b, h, qb_begin + n, p.heads, p.seq), smem_addr(sDq),
                            Tile::kDqTileBytes);
        bulk_commit();
        bulk_wait_read<0>();  // the tile has been read: the consumers may overwrite it
        mbarrier_arrive(dq_empty);
      }
      bulk_wait<0>();  // every add has landed in dq_accum before this thread (and then the block) exits
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
    // One P/dS buffer: both warpgroups' products of block n - 1 have read it (each passes this barrier only after
    // its own wait for them), waited for while this block's S and dP run.
    if (kPdsStages == 1 && n > 0) named_barrier_sync(Tile::kPdsFreeBarrier, 128 * Tile::kConsumers);
    wgmma_wait_all();
    pin(s);
    pin(dp);
    store_p_and_ds<T, DQK, DV>(s, dp, sLse + st * kBr, sDsum + st * kBr, p, k0, q0, split, row_n, t4_n,
                               p_tiles + buf * kBr * kBc, ds_tiles + buf * kBr * kBc);
    fence_proxy_async();
    named_barrier_sync(Tile::kPdsBarrier, 128 * Tile::kConsumers);  // P and dS complete, visible to the tensor cores

    accumulate_gradients<T, DQK, DV, true>(dv, dk, p_addr, ds_addr, do_st, q_st, sK, split, cwg, [&](const auto& acc) {
      mbarrier_wait(dq_empty, (n & 1) ^ 1);  // block n - 1's tile has been read by its bulk reduce
      store_dq_tile<DQK, DV>(acc, sDq, split, row_n, t4_n);
      fence_proxy_async();
      mbarrier_arrive(dq_full);
    });
    mbarrier_arrive(empty(n));  // Q_n, dO_n and lse/D no longer read by this thread
  }
  store_dk_dv<T, DQK, DV>(dk, dv, p, b, h, k0, cwg, wrow, t4);
}

}  // namespace loom::cuda::flash
