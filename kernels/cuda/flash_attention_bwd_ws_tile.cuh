// The shape of the warp-specialised backward's block (flash_attention_bwd_ws.cuh): roles, shared-memory map,
// barriers, registers, and whether dQ leaves through a shared tile and a bulk reduce-add (kBulkDq) or by atomics.
// Its own header because the launch code (flash_attention_bwd.cu: dq_accum's layout, flash_attention.cu: its size)
// reads kBulkDq without including the kernel.
#pragma once
#include "kernels/cuda/flash_attention_bwd_steps.cuh"
#include "kernels/cuda/flash_attention_dq_layout.h"

namespace loom::cuda::flash {

template <int DQK, int DV>
struct WsBwdTile {
  using Split = BwdTile<DQK, DV>;  // the consumers' work split, tiles kBr x kBc
  static constexpr int kBr = Split::kBr, kBc = Split::kBc, kQkCols = Split::kQkCols, kVCols = Split::kVCols;
  static constexpr int kConsumers = 2, kThreads = 128 * (kConsumers + 1), kStages = 2, kPdsStages = 2;
  static constexpr uint32_t kKBytes = kBc * kQkCols * 2, kVBytes = kBc * kVCols * 2;
  static constexpr uint32_t kQBytes = kBr * kQkCols * 2, kDoBytes = kBr * kVCols * 2, kPdsBytes = kBr * kBc * 2;
  using DqLayout = DqTileLayout<kBr, DQK>;
  static_assert(DqLayout::kConsumerThreads == 128 * kConsumers, "the dQ tile order assumes two consumer warpgroups");
  static constexpr uint32_t kDqTileBytes = DqLayout::kFloats * 4;
  // Shared memory: K, V; kStages of Q, of dO; kPdsStages of P, of dS (every tile a multiple of 1024 bytes, so all
  // start 1024-aligned as the 128-byte swizzle needs); kStages of lse·log2e, of D; the f32 dQ tile (kBulkDq; 16-byte
  // aligned for the bulk copy); the mbarriers. Bytes: 128x128 230,456 (197,672 without the dQ tile); 128x64
  // 197,688; 64x128 181,304; 64x64 (kBr = 128) 231,464 without it — its 32 KiB dQ tile would need 264,248, so that
  // pair keeps the atomics (FlashAttention-3 would drop P/dS to one buffer and add a second consumer barrier).
  static constexpr uint32_t kVOffset = kKBytes, kQOffset = kVOffset + kVBytes;
  static constexpr uint32_t kDoOffset = kQOffset + kStages * kQBytes, kPOffset = kDoOffset + kStages * kDoBytes;
  static constexpr uint32_t kDsOffset = kPOffset + kPdsStages * kPdsBytes;
  static constexpr uint32_t kLseOffset = kDsOffset + kPdsStages * kPdsBytes, kDsumOffset = kLseOffset + kStages * kBr * 4;
  static constexpr uint32_t kDqOffset = kDsumOffset + kStages * kBr * 4;
  static_assert(kDqOffset % 16 == 0, "the bulk reduce reads 16-byte aligned shared memory");
  static constexpr int kBarriersAtomicDq = 1 + 2 * kStages;  // kv_full, full[kStages], empty[kStages]
  static constexpr bool kBulkDq = kDqOffset + kDqTileBytes + (kBarriersAtomicDq + 2) * 8 <= 227 * 1024;
  static constexpr uint32_t kBarrierOffset = kDqOffset + (kBulkDq ? kDqTileBytes : 0);
  static constexpr int kBarriers = kBarriersAtomicDq + (kBulkDq ? 2 : 0);  // + dq_full, dq_empty
  static constexpr int kSmemBytes = kBarrierOffset + kBarriers * 8;
  static_assert(kSmemBytes <= 227 * 1024, "shared memory beyond the 227 KiB a block may use");
  // Registers after setmaxnreg: the launch gives every thread 65536 / 384 rounded down to 8 = 168; the producer
  // keeps 24 and the consumers take 240 (as FlashAttention-3 with two consumers). A consumer's peak is
  // dK + dV + S + dP = 192 accumulators at d128 (dQ's 32 replace S and dP once those are in shared memory).
  static constexpr int kProducerRegs = 24, kConsumerRegs = 240;
  static_assert(128 * kProducerRegs + 128 * kConsumers * kConsumerRegs <= kThreads * (65536 / kThreads / 8 * 8),
                "register split exceeds the block's allocation");
  static constexpr int kLseWarp = 1;     // the producer warp that loads lse and D
  static constexpr int kDqWarp = 2;      // the producer warp whose lane 0 issues the dQ bulk reduces (kBulkDq)
  static constexpr uint32_t kFullArrivals = 1 + 32, kEmptyArrivals = 128 * kConsumers;
  static constexpr uint32_t kDqFullArrivals = 128 * kConsumers, kDqEmptyArrivals = 1;
  static constexpr int kPdsBarrier = 1;  // named barrier of the consumers (0 is __syncthreads)
};

}  // namespace loom::cuda::flash
