// FlashAttention-3 style forward on Hopper (sm_90a): TMA loads from a producer warp, consumer warpgroups in
// ping-pong. Included once, by flash_attention_fwd_ws.cu (instantiated there).
//
// Which kernel runs which tile pair (kForwardWs in flash_attention_launch.cuh): this one takes the pairs with
// both tile widths in {64, 128} (64x64, 64x128, 128x64, 128x128), where a tile is whole 64-column atoms and one
// TMA box {64 columns, rows} of 128-byte rows with the 128-byte swizzle writes exactly one atom of
// flash_attention_wgmma.cuh's layout (chunk c of row r at c ^ (r % 8)). Pairs with a 32-wide tile stay on
// flash_attention_fwd.cuh's cp.async kernel, whose tiles for them (one warpgroup, several blocks per SM) were
// measured there; their half-used atom rows could be loaded here as a 64-column box whose second half the TMA
// unit zero-fills, a change to measure rather than assume.
//
// The math is flash_attention_fwd.cuh's (online softmax in the log2 domain, O rescaled when the running max
// rises, divided by l at the end, lse = ln2·(m + log2 l)); the steps are shared (flash_attention_fwd_steps.cuh).
//
// Block: 1 producer warpgroup + kConsumers consumer warpgroups, each consumer owning 64 query rows
// (kBr = 64·kConsumers) of a tile (one query block of one (batch, head)); key blocks of kBc = 128. A block runs
// the tiles blockIdx.x, blockIdx.x + gridDim.x, ... of the launch's order (flash_attention_fwd_order.h): one with a
// block per tile, several when persistent (fewer blocks, launch_forward_ws's max_blocks), so that the next tile's
// Q and first K/V stages load while this one's output is normalised and stored.
//   producer   one thread issues every TMA load, tile after tile: Q, then K_0, K_1, V_0, K_2, V_1, ... into a
//              ring of kStages stages whose counter j runs on across tiles (the tile's key block kb is ring
//              entry j0 + kb, j0 = the key blocks of the block's earlier tiles) and, before the next tile's Q, waits
//              until every consumer is done reading this tile's. setmaxnreg.dec hands its registers to the consumers.
//   consumers  per key block: S_j = Q K_jᵀ and O += P_{j-1} V_{j-1} issued together (the pipelining within a
//              warpgroup of flash_attention_fwd.cuh), then the softmax of S_j while P_{j-1} V_{j-1} runs; O, m, l
//              start from zero for every tile.
//   ping-pong  named barrier "turn w" lets consumer w issue its two products; it then hands the turn to
//              consumer w + 1 (mod kConsumers) and does its softmax while the next consumer's products occupy
//              the tensor cores. One turn per round: round 0 issues S_0, round j (1 ≤ j < n) S_j and
//              P_{j-1} V_{j-1}, round n P_{n-1} V_{n-1}; every consumer takes n + 1 turns a tile.
//
// Barrier accounting (tile i = the block's i-th, n = its key blocks, S = kStages, ring entry J = j0 + kb,
// stage(J) = J % S, pass(J) = J / S):
//   K_full[s], V_full[s]   1 arrival (the producer's arrive_expect_tx) + the box bytes; the consumers wait for
//                          ring entry J with parity pass(J) & 1.
//   K_empty[s], V_empty[s] one arrival per consumer warp (4·kConsumers), made by lane 0 after the warp's
//                          wgmma.wait_group shows the product reading the stage complete — every entry, the last
//                          V of a tile too (the next tile's V reuses its stage); the producer waits for the use of
//                          entry J - S with parity (pass(J) & 1) ^ 1 (returns at once on the first pass).
//   Q_full                 1 arrival + the Q bytes per tile; consumers wait for tile i with parity i & 1.
//   Q_empty                one arrival per consumer warp per tile, after the wait that shows the tile's last S
//                          product (the last reader of Q) complete; the producer waits with parity (i & 1) ^ 1
//                          before loading tile i's Q (at once for i = 0). Neither Q barrier can run a phase ahead
//                          of its waiter: tile i + 1's Q is loaded only after every consumer warp has passed tile
//                          i's Q_full and finished reading it.
//   turn w (named barrier kTurnBarrier + w, 256 threads) = consumer w's 128 threads (bar.sync) + consumer w - 1's
//                          128 (bar.arrive after issuing). The turns run as one round-robin chain through all of
//                          the block's tiles: consumer kConsumers - 1 arrives once up front, so consumer 0 goes
//                          first, and hands over after its last product of every tile but the block's last, so
//                          consumer 0 starts the next tile while the others finish this one. Every consumer takes
//                          N = Σ_tiles (n + 1) turns, so each barrier sees exactly N complete generations (turn 0:
//                          the up-front arrival + N - 1 hand-overs) and none is left half-arrived; no generation
//                          can take two arrivals of one consumer, since between two of consumer w - 1's arrivals
//                          on turn w the chain passes through consumer w's sync on it. (Restarting the chain per
//                          tile — an up-front arrival and a skipped hand-over in each — would count as exactly, but
//                          make consumer 0 wait for the last consumer's whole tile before its next one.)
// No wait can deadlock: each of the producer's waits is on consumer work on an entry (or a Q) it issued earlier in
// its own order, and each consumer wait on a load the producer reaches without waiting for that consumer's later
// work (tile i + 1's Q, K_0, K_1 and V_0 need only tile i's rounds up to n - 1; the V stage of tile i's last entry
// is released after round n, before anything of tile i + 1 that the producer loads into it).
// Bytes per phase: a box is always delivered whole (rows past seq and columns past the head dim zero-filled
// and counted), so a K stage is kBc·kQkCols·2 bytes whatever the shape. Every byte issued lands before the block
// exits: the producer loads only the block's own tiles, and the consumers wait for each of their Q, K and V phases.
#pragma once
#include "kernels/cuda/flash_attention_fwd_order.h"
#include "kernels/cuda/flash_attention_fwd_steps.cuh"
#include "kernels/cuda/flash_attention_tma.cuh"

namespace loom::cuda::flash {

template <int DQK, int DV, int Consumers>
struct WsFwdTile {
  static constexpr int kD = DQK > DV ? DQK : DV;
  // d128: two consumers (128 rows, the cp.async kernel's d128 block and FlashAttention-3's), key blocks of 128:
  // per thread S 64 + P 32 + O 64 registers of the 240 a consumer gets. d64 (both tiles 64 wide): two or three
  // consumers, chosen per launch by seq (flash_attention_d64_query_rows). Three (192 rows, as in
  // FlashAttention-3): the products per score are half of d128's while the softmax costs the same, so more
  // warpgroups keep the tensor cores fed while the others exponentiate, and K/V tiles are reused over more rows;
  // key blocks of 128 (S 64 + P 32 + O 32 of the 160 registers a consumer gets with three). Two pad a short
  // sequence less (197 tokens: 256 rows instead of 384).
  static constexpr int kConsumers = Consumers;
  static_assert(kConsumers == 2 || (kConsumers == 3 && kD == 64), "three consumers only for the 64x64 pair");
  static constexpr int kThreads = 128 * (kConsumers + 1), kBr = 64 * kConsumers, kBc = 128, kStages = 2;
  static constexpr int kQkCols = atom_cols(DQK), kVCols = atom_cols(DV);
  static constexpr uint32_t kQBytes = kBr * kQkCols * 2, kKBytes = kBc * kQkCols * 2, kVBytes = kBc * kVCols * 2;
  // Registers after setmaxnreg: the launch gives every thread 65536 / kThreads rounded down to 8 (168 or 128);
  // the producer keeps 24 (two consumers) or 32 (three) and the consumers take what that frees: the whole
  // register file either way.
  static constexpr int kProducerRegs = kConsumers == 2 ? 24 : 32, kConsumerRegs = kConsumers == 2 ? 240 : 160;
  static_assert(128 * kProducerRegs + 128 * kConsumers * kConsumerRegs <= kThreads * (65536 / kThreads / 8 * 8),
                "register split exceeds the block's allocation");
  static constexpr uint32_t kBarrierOffset = kQBytes + kStages * (kKBytes + kVBytes);  // 1024-aligned tiles
  static constexpr int kBarriers = 2 + 4 * kStages;  // Q full, Q empty, K/V full, K/V empty
  static constexpr int kSmemBytes = kBarrierOffset + kBarriers * 8;
  static constexpr int kTurnBarrier = 1;  // named barriers kTurnBarrier .. kTurnBarrier + kConsumers - 1
};

template <typename T, int DQK, int DV, int Consumers>
__global__ void __launch_bounds__(WsFwdTile<DQK, DV, Consumers>::kThreads, 1)
    flash_fwd_ws_kernel(const Params<T> p, const __grid_constant__ TmaViews views, const FwdTileOrder order) {
  using Tile = WsFwdTile<DQK, DV, Consumers>;
  constexpr int kBr = Tile::kBr, kBc = Tile::kBc, kStages = Tile::kStages, kConsumers = Tile::kConsumers;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const uint32_t sQ = smem_addr(smem_raw), sK = sQ + Tile::kQBytes, sV = sK + kStages * Tile::kKBytes;
  const uint32_t q_full = sQ + Tile::kBarrierOffset, q_empty = q_full + 8;
  auto k_full = [&](int j) { return q_full + 8 * (2 + j % kStages); };
  auto v_full = [&](int j) { return q_full + 8 * (2 + kStages + j % kStages); };
  auto k_empty = [&](int j) { return q_full + 8 * (2 + 2 * kStages + j % kStages); };
  auto v_empty = [&](int j) { return q_full + 8 * (2 + 3 * kStages + j % kStages); };
  auto parity = [](int j) { return uint32_t(j / kStages) & 1; };
  auto k_stage = [&](int j) { return sK + (j % kStages) * Tile::kKBytes; };
  auto v_stage = [&](int j) { return sV + (j % kStages) * Tile::kVBytes; };
  // Key blocks of the tile whose first query row is q0 (causal: up to the diagonal).
  auto key_blocks = [&](int q0) {
    const int n = (p.seq + kBc - 1) / kBc;
    return p.causal ? min(n, (min(q0 + kBr, p.seq) + kBc - 1) / kBc) : n;
  };
  // The block's tiles: blockIdx.x, blockIdx.x + gridDim.x, ... below order.tiles (< 2^31, so the unsigned sum
  // cannot wrap); `it` counts them (the Q barriers' phase).
  const uint32_t tiles = order.tiles, stride = gridDim.x;

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, wg = warp / 4;

  if (tid == 0) {
    mbarrier_init(q_full, 1);
    mbarrier_init(q_empty, 4 * kConsumers);
    for (int s = 0; s < kStages; ++s) {
      mbarrier_init(k_full(s), 1);
      mbarrier_init(v_full(s), 1);
      mbarrier_init(k_empty(s), 4 * kConsumers);
      mbarrier_init(v_empty(s), 4 * kConsumers);
    }
    fence_mbarrier_init();
  }
  __syncthreads();

  if (wg == 0) {  // producer warpgroup
    setmaxnreg_dec<Tile::kProducerRegs>();
    if (tid != 0) return;
    prefetch_tma_view(&views.q);
    prefetch_tma_view(&views.k);
    prefetch_tma_view(&views.v);
    int j0 = 0;  // ring entry of the tile's key block 0
    for (uint32_t it = 0, tile = blockIdx.x; tile < tiles; ++it, tile += stride) {
      const FwdTileCoord c = fwd_tile_coord(int(tile), order);
      const int q0 = c.qblock * kBr, n = key_blocks(q0);
      // Box a of a tile = columns [64a, 64a + 64) = atom a, rows·128 bytes further on. Key block kb is ring
      // entry j0 + kb.
      auto load_k = [&](int kb) {
        const int j = j0 + kb;
        mbarrier_wait(k_empty(j), parity(j) ^ 1);
        mbarrier_arrive_expect_tx(k_full(j), Tile::kKBytes);
        for (int a = 0; a < Tile::kQkCols / 64; ++a)
          tma_load_4d(k_stage(j) + a * kBc * 128, &views.k, k_full(j), 64 * a, c.head, kb * kBc, c.batch);
      };
      auto load_v = [&](int kb) {
        const int j = j0 + kb;
        mbarrier_wait(v_empty(j), parity(j) ^ 1);
        mbarrier_arrive_expect_tx(v_full(j), Tile::kVBytes);
        for (int a = 0; a < Tile::kVCols / 64; ++a)
          tma_load_4d(v_stage(j) + a * kBc * 128, &views.v, v_full(j), 64 * a, c.head, kb * kBc, c.batch);
      };
      mbarrier_wait(q_empty, (it & 1) ^ 1);  // the previous tile's last S products have read Q
      mbarrier_arrive_expect_tx(q_full, Tile::kQBytes);
      for (int a = 0; a < Tile::kQkCols / 64; ++a)
        tma_load_4d(sQ + a * kBr * 128, &views.q, q_full, 64 * a, c.head, q0, c.batch);
      // Order K_0, then K_{kb+1} before V_kb: round kb + 1 needs K_{kb+1} and V_kb together, and K_{kb+1}'s stage
      // frees earlier (after S_{kb+1-S}) than V_kb's (after P_{kb-S} V_{kb-S}, which lands half a round later), so
      // the K load is not held up behind the V one.
      load_k(0);
      for (int kb = 0; kb < n; ++kb) {
        if (kb + 1 < n) load_k(kb + 1);
        load_v(kb);
      }
      j0 += n;
    }
    return;  // the consumers wait for every byte issued here before they finish
  }

  setmaxnreg_inc<Tile::kConsumerRegs>();
  const int consumer = wg - 1, g = lane / 4, t4 = lane % 4;
  const uint32_t q_addr = sQ + consumer * 64 * 128;
  const int my_turn = Tile::kTurnBarrier + consumer, next_turn = Tile::kTurnBarrier + (consumer + 1) % kConsumers;
  const bool last_consumer = consumer == kConsumers - 1;
  auto release = [&](uint32_t empty_bar) {  // after this warp's wgmma.wait_group: the stage is no longer read
    if (lane == 0) mbarrier_arrive(empty_bar);
  };

  if (last_consumer) named_barrier_arrive(Tile::kTurnBarrier, 256);  // consumer 0 takes the block's first turn

  int j0 = 0;  // ring entry of the tile's key block 0, as the producer counts it
  for (uint32_t it = 0, tile = blockIdx.x; tile < tiles; ++it, tile += stride) {
    const FwdTileCoord c = fwd_tile_coord(int(tile), order);
    const int q0 = c.qblock * kBr, n = key_blocks(q0);
    const int wq0 = q0 + consumer * 64 + (warp % 4) * 16, row0 = wq0 + g;  // this thread's rows: row0, row0 + 8
    // After S_kb has landed: K_kb's stage is free, and after the tile's last S product so is Q.
    auto scores_read = [&](int kb) {
      release(k_empty(j0 + kb));
      if (kb == n - 1) release(q_empty);
    };
    FwdRowState<kBc, DV> st;  // O = 0, m = -inf, l = 0

    // Round 0: S_0.
    mbarrier_wait(q_full, it & 1);
    mbarrier_wait(k_full(j0), parity(j0));
    named_barrier_sync(my_turn, 256);
    wgmma_fence();
    issue_scores<T, DQK, kBr, kBc>(st.s, q_addr, k_stage(j0));
    named_barrier_arrive(next_turn, 256);
    wgmma_wait<0>();
    pin(st.s);
    scores_read(0);
    online_softmax<kBc>(st.s, st.mx, st.l, st.alpha, p, 0, wq0, row0, t4);
    pack_probabilities<kBc, T>(st.pa, st.s);

    // Rounds 1 .. n-1: S_kb and P_{kb-1} V_{kb-1}; the softmax of S_kb overlaps P_{kb-1} V_{kb-1} and the next
    // consumer's turn; O is rescaled once P_{kb-1} V_{kb-1} has landed.
    for (int kb = 1; kb < n; ++kb) {
      const int j = j0 + kb;
      mbarrier_wait(k_full(j), parity(j));
      mbarrier_wait(v_full(j - 1), parity(j - 1));
      named_barrier_sync(my_turn, 256);
      pin(st.o);
      pin(st.pa);
      wgmma_fence();
      issue_scores<T, DQK, kBr, kBc>(st.s, q_addr, k_stage(j));
      issue_pv<T, DV, kBc>(st.o, st.pa, v_stage(j - 1));
      named_barrier_arrive(next_turn, 256);
      wgmma_wait<1>();  // S_kb has landed; P_{kb-1} V_{kb-1} may still run
      pin(st.s);
      scores_read(kb);
      online_softmax<kBc>(st.s, st.mx, st.l, st.alpha, p, kb * kBc, wq0, row0, t4);
      wgmma_wait<0>();
      pin(st.o);
      pin(st.pa);
      release(v_empty(j - 1));
      rescale_output<DV>(st.o, st.alpha);
      pack_probabilities<kBc, T>(st.pa, st.s);
    }

    // Round n: P_{n-1} V_{n-1}. The turn passes on unless this is the chain's last (the block's last tile).
    const int j_last = j0 + n - 1;
    mbarrier_wait(v_full(j_last), parity(j_last));
    named_barrier_sync(my_turn, 256);
    pin(st.o);
    pin(st.pa);
    wgmma_fence();
    issue_pv<T, DV, kBc>(st.o, st.pa, v_stage(j_last));
    if (!last_consumer || tile + stride < tiles) named_barrier_arrive(next_turn, 256);
    wgmma_wait<0>();
    pin(st.o);
    release(v_empty(j_last));  // the next tile's V reuses the stage

    store_output<DV>(st.o, st.mx, st.l, p, c.batch, c.head, row0, t4);
    j0 += n;
  }
}

}  // namespace loom::cuda::flash
