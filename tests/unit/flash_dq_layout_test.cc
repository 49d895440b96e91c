// The warp-specialised flash backward's dQ tile order (kernels/cuda/flash_attention_dq_layout.h), checked on the
// CPU: a bijection of a tile's (row, column) onto its floats, each consumer thread's accumulator chunk one aligned
// float4 at the place its float4 store writes, and tiles that partition the global accumulator.
#include <gtest/gtest.h>

#include <vector>

#include "kernels/cuda/flash_attention_dq_layout.h"

namespace loom::cuda::flash {
namespace {

template <int kBr, int kDqk>
void check_tile_order() {
  using Layout = DqTileLayout<kBr, kDqk>;
  SCOPED_TRACE(testing::Message() << "kBr " << kBr << ", q/k tile width " << kDqk);
  ASSERT_EQ(Layout::kFloats, kBr * kDqk);
  std::vector<int> hits(Layout::kFloats, 0);
  for (int row = 0; row < kBr; ++row)
    for (int col = 0; col < kDqk; ++col) {
      const int off = Layout::offset(row, col);
      ASSERT_GE(off, 0) << row << ", " << col;
      ASSERT_LT(off, Layout::kFloats) << row << ", " << col;
      ++hits[off];
    }
  for (int off = 0; off < Layout::kFloats; ++off) ASSERT_EQ(hits[off], 1) << "offset " << off;

  // The wgmma accumulator of consumer thread u = 128·w + t (warp t/32, lane t%32) written independently of the
  // map: element acc[4n + 2r + c] is (row0 + 16·warp + lane/4 + 8r, col0 + 8n + 2·(lane%4) + c), where kBr = 128
  // splits the rows between the warpgroups (row0 = 64w) and kBr = 64 the columns (col0 = w·kDqk/2); chunk n must
  // be floats [4·(256n + u), +4) in acc order.
  const int n_chunks = (kBr == 128 ? kDqk : kDqk / 2) / 8;
  for (int u = 0; u < 256; ++u) {
    const int w = u / 128, warp = (u % 128) / 32, lane = u % 32;
    const int row0 = kBr == 128 ? 64 * w : 0, col0 = kBr == 128 ? 0 : w * kDqk / 2;
    for (int n = 0; n < n_chunks; ++n)
      for (int r = 0; r < 2; ++r)
        for (int c = 0; c < 2; ++c) {
          const int row = row0 + 16 * warp + lane / 4 + 8 * r, col = col0 + 8 * n + 2 * (lane % 4) + c;
          ASSERT_EQ(Layout::offset(row, col), 4 * (256 * n + u) + 2 * r + c)
              << "thread " << u << ", chunk " << n << ", r " << r << ", c " << c;
        }
  }

  // What the convert kernel reads as one float4: for t % 16 < 8 and even d, (t, d), (t, d + 1), (t + 8, d),
  // (t + 8, d + 1) are four consecutive floats starting at a multiple of 4.
  for (int row = 0; row < kBr; row += row % 16 == 7 ? 9 : 1)
    for (int col = 0; col < kDqk; col += 2) {
      const int off = Layout::offset(row, col);
      ASSERT_EQ(off % 4, 0) << row << ", " << col;
      ASSERT_EQ(Layout::offset(row, col + 1), off + 1) << row << ", " << col;
      ASSERT_EQ(Layout::offset(row + 8, col), off + 2) << row << ", " << col;
      ASSERT_EQ(Layout::offset(row + 8, col + 1), off + 3) << row << ", " << col;
    }

  // Tiles of (batch, head, query block) follow one another without gap or overlap; ragged seq rounds up.
  const int batch = 2, heads = 3, seq = 2 * kBr + 17, qblocks = 3;
  int64_t expected = 0;
  for (int b = 0; b < batch; ++b)
    for (int h = 0; h < heads; ++h)
      for (int q = 0; q < qblocks; ++q, expected += Layout::kFloats)
        ASSERT_EQ(Layout::tile_start(b, h, q, heads, seq), expected) << b << ", " << h << ", " << q;
  EXPECT_EQ(Layout::accumulator_floats(batch, heads, seq), expected);
}

TEST(FlashDqTileLayout, TallQueryBlockOfSixtyFourColumns) { check_tile_order<128, 64>(); }
TEST(FlashDqTileLayout, ShortQueryBlockOfSixtyFourColumns) { check_tile_order<64, 64>(); }
TEST(FlashDqTileLayout, ShortQueryBlockOfOneHundredTwentyEightColumns) { check_tile_order<64, 128>(); }

}  // namespace
}  // namespace loom::cuda::flash
