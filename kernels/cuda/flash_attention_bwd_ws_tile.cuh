// The shape of the warp-specialised backward's block (flash_attention_bwd_ws.cuh): roles, shared-memory map,
// barriers, registers; its sizes are checked here at compile time, apart from the kernel that uses them.
#pragma once
#include "kernels/cuda/flash_attention_bwd_steps.cuh"
#include "kernels/cuda/flash_attention_dq_layout.h"

namespace loom::cuda::flash {

template <int DQK, int DV>
struct WsBwdTile {
  using Split = BwdTile<DQK, DV>;  // the consumers' work split, tiles kBr x kBc
  static constexpr int kBr = Split::kBr, kBc = Split::kBc, kQkCols = Split::kQkCols, kVCols = Split::kVCols;
  // Two stages of Q/dO: a third (room for it at 64x64 once P/dS are single buffered) moved the d64 backward both
  // ways by up to 10 % on an H100 (2026-12-08, 512 to 16k tokens; docs/PERF.md), so it was not taken.
  static constexpr int kConsumers = 2, kThreads = 128 * (kConsumers + 1), kStages = 2;
  static constexpr uint32_t kKBytes = kBc * kQkCols * 2, kVBytes = kBc * kVCols * 2;
  static constexpr uint32_t kQBytes = kBr * kQkCols * 2, kDoBytes = kBr * kVCols * 2, kPdsBytes = kBr * kBc * 2;
  using DqLayout = DqTileLayout<kBr, DQK>;
  static_assert(DqLayout::kConsumerThreads == 128 * kConsumers, "the dQ tile order assumes two consumer warpgroups");
  static constexpr uint32_t kDqTileBytes = DqLayout::kFloats * 4;
  // Shared memory: K, V; kStages of Q, of dO; kPdsStages of P, of dS (every tile a multiple of 1024 bytes, so all
  // start 1024-aligned as the 128-byte swizzle needs); kStages of lse·log2e, of D; the f32 dQ tile (16-byte
  // aligned for the bulk copy); the mbarriers. P/dS double buffered where that fits beside the dQ tile (every pair
  // but 64x64, whose 128-row P and dS tiles are 32 KiB each: 64x64 would need 264,248 bytes), else single (see
  // flash_bwd_ws_kernel's consumers).
  static constexpr uint32_t bytes(int stages, int pds_stages) {
    return kKBytes + kVBytes + stages * (kQBytes + kDoBytes) + pds_stages * 2 * kPdsBytes + stages * kBr * 8 +
           kDqTileBytes + (1 + 2 * stages + 2) * 8;
  }
  static constexpr int kPdsStages = bytes(kStages, 2) <= 227 * 1024 ? 2 : 1;
  static constexpr uint32_t kVOffset = kKBytes, kQOffset = kVOffset + kVBytes;
  static constexpr uint32_t kDoOffset = kQOffset + kStages * kQBytes, kPOffset = kDoOffset + kStages * kDoBytes;
  static constexpr uint32_t kDsOffset = kPOffset + kPdsStages * kPdsBytes;
  static constexpr uint32_t kLseOffset = kDsOffset + kPdsStages * kPdsBytes, kDsumOffset = kLseOffset + kStages * kBr * 4;
  static constexpr uint32_t kDqOffset = kDsumOffset + kStages * kBr * 4;
  static_assert(kDqOffset % 16 == 0, "the bulk reduce reads 16-byte aligned shared memory");
  static constexpr uint32_t kBarrierOffset = kDqOffset + kDqTileBytes;
  static constexpr int kSmemBytes = kBarrierOffset + (1 + 2 * kStages + 2) * 8;  // kv_full, full/empty, dq_full/empty
  static_assert(kSmemBytes == bytes(kStages, kPdsStages) && kSmemBytes <= 227 * 1024,
                "shared memory beyond the 227 KiB a block may use");
  // Registers after setmaxnreg: the launch gives every thread 65536 / 384 rounded down to 8 = 168; the producer
  // keeps 24 and the consumers take 240 (as FlashAttention-3 with two consumers). A consumer's peak is
  // dK + dV + S + dP = 192 accumulators at d128 (dQ's 32 replace S and dP once those are in shared memory).
  static constexpr int kProducerRegs = 24, kConsumerRegs = 240;
  static_assert(128 * kProducerRegs + 128 * kConsumers * kConsumerRegs <= kThreads * (65536 / kThreads / 8 * 8),
                "register split exceeds the block's allocation");
  static constexpr int kLseWarp = 1;     // the producer warp that loads lse and D
  static constexpr int kDqWarp = 2;      // the producer warp whose lane 0 issues the dQ bulk reduces
  static constexpr uint32_t kFullArrivals = 1 + 32, kEmptyArrivals = 128 * kConsumers;
  static constexpr uint32_t kDqFullArrivals = 128 * kConsumers, kDqEmptyArrivals = 1;
  static constexpr int kPdsBarrier = 1;  // named barrier of the consumers (0 is __syncthreads)
  static constexpr int kPdsFreeBarrier = 2;  // kPdsStages == 1: block n - 1's products have read P and dS
};

}  // namespace loom::cuda::flash
