// The warp-specialised flash forward's tile order (kernels/cuda/flash_attention_fwd_order.h), checked on the CPU:
// every tile of ragged launches decoded exactly once; not causal, today's order (query block fastest, then head,
// then batch); causal, sections of `section` consecutive (batch, head) pairs, each walked longest first; and the
// host side's section size and 31-bit limit.
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "core/error.h"
#include "kernels/cuda/flash_attention_fwd_order.h"

namespace loom::cuda::flash {
namespace {

// Key blocks (of 128 keys) a causal tile of query block q walks, as the kernel counts them.
int walked(int q, int block_rows, int seq) {
  const int n = (seq + 127) / 128, end = std::min((q + 1) * block_rows, seq);
  return std::min(n, (end + 127) / 128);
}

void check_order(int batch, int heads, int seq, int block_rows, bool causal, int section) {
  SCOPED_TRACE(testing::Message() << "batch " << batch << ", heads " << heads << ", seq " << seq << ", rows "
                                  << block_rows << (causal ? ", causal, section " : ", not causal, section ")
                                  << section);
  const int nq = (seq + block_rows - 1) / block_rows, pairs = batch * heads;
  const FwdTileOrder o{nq * pairs, nq, heads, section, causal};
  std::vector<int> hits(o.tiles, 0);
  int prev_section = 0, prev_walk = 0;
  for (int t = 0; t < o.tiles; ++t) {
    const FwdTileCoord c = fwd_tile_coord(t, o);
    ASSERT_TRUE(c.qblock >= 0 && c.qblock < nq && c.head >= 0 && c.head < heads && c.batch >= 0 && c.batch < batch)
        << "tile " << t << " -> " << c.qblock << ", " << c.head << ", " << c.batch;
    const int pair = c.batch * heads + c.head;
    ++hits[pair * nq + c.qblock];
    if (!causal) {
      EXPECT_EQ(pair * nq + c.qblock, t) << "tile " << t;
      continue;
    }
    // Section s's tiles are the section·nq (the last: what is left) tiles from s·section·nq on, all of its pairs.
    const int s = t / (section * nq);
    EXPECT_EQ(pair / section, s) << "tile " << t << " pair " << pair;
    const int walk = walked(c.qblock, block_rows, seq);
    if (t > 0 && s == prev_section) {
      EXPECT_LE(walk, prev_walk) << "tile " << t << " walks longer";
    }
    prev_section = s, prev_walk = walk;
  }
  for (int i = 0; i < o.tiles; ++i) ASSERT_EQ(hits[i], 1) << "pair " << i / nq << ", query block " << i % nq;
}

TEST(FlashFwdOrder, EveryTileOnceInOrder) {
  for (int seq : {1, 17, 128, 129, 197, 385, 1000, 4096})
    for (int rows : {128, 192})
      for (const auto& [batch, heads] : {std::pair{1, 1}, std::pair{1, 5}, std::pair{3, 1}, std::pair{2, 3},
                                         std::pair{3, 7}}) {
        check_order(batch, heads, seq, rows, false, 1);
        for (int section : {1, 2, 3, 4, 5, 21})
          if (section <= batch * heads) check_order(batch, heads, seq, rows, true, section);
      }
}

TEST(FlashFwdOrder, CausalRunsTheLongestTilesOfASectionFirst) {
  // 2 x 3 pairs, 4 query blocks of 128 rows (seq 512), sections of 4: pairs 0-3 from query block 3 down, then
  // pairs 4 and 5 the same way.
  const FwdTileOrder o{24, 4, 3, 4, true};
  std::vector<std::string> got;
  for (int t = 0; t < o.tiles; ++t) {
    const FwdTileCoord c = fwd_tile_coord(t, o);
    got.push_back(std::to_string(c.qblock) + "," + std::to_string(c.head) + "," + std::to_string(c.batch));
  }
  const std::vector<std::string> want = {
      "3,0,0", "3,1,0", "3,2,0", "3,0,1", "2,0,0", "2,1,0", "2,2,0", "2,0,1", "1,0,0", "1,1,0", "1,2,0", "1,0,1",
      "0,0,0", "0,1,0", "0,2,0", "0,0,1", "3,1,1", "3,2,1", "2,1,1", "2,2,1", "1,1,1", "1,2,1", "0,1,1", "0,2,1"};
  EXPECT_EQ(got, want);
}

TEST(FlashFwdOrder, SectionsFillHalfTheL2AndTilesFitIn31Bits) {
  constexpr int64_t kL2 = 50 * 1024 * 1024, kD128 = (128 + 128) * 2;  // K and V bytes per token at d128
  // Half of 50 MiB over 4096 tokens of 512 bytes: 12 pairs, of 4·16 = 64.
  FwdTileOrder o = fwd_tile_order(4, 16, 4096, 128, true, kD128, kL2);
  EXPECT_EQ(o.tiles, 4 * 16 * 32);
  EXPECT_EQ(o.n_qblocks, 32);
  EXPECT_EQ(o.heads, 16);
  EXPECT_EQ(o.section, 12);
  EXPECT_TRUE(o.causal);
  EXPECT_EQ(fwd_tile_order(1, 16, 16384, 128, true, kD128, kL2).section, 3);   // 25 MiB / 8 MiB
  EXPECT_EQ(fwd_tile_order(1, 2, 1 << 20, 128, true, kD128, kL2).section, 1);  // one pair exceeds it: 1
  EXPECT_EQ(fwd_tile_order(2, 3, 6144, 192, true, kD128, kL2).section, 6);     // all pairs fit: all
  // Fewer than kLongestFirstQueryBlocks query blocks: each pair alone (31 blocks of 128 rows; 1024 tokens).
  EXPECT_EQ(fwd_tile_order(2, 3, 31 * 128, 128, true, kD128, kL2).section, 1);
  EXPECT_EQ(fwd_tile_order(4, 16, 1024, 128, true, kD128, kL2).section, 1);
  o = fwd_tile_order(2, 3, 385, 192, false, kD128, kL2);
  EXPECT_EQ(o.tiles, 2 * 3 * 3);
  EXPECT_FALSE(o.causal);
  EXPECT_EQ(fwd_tile_order(32768, 65535, 1, 128, false, kD128, kL2).tiles, 32768 * 65535);  // 2^31 - 2^15
  try {
    fwd_tile_order(65535, 65535, 1, 128, false, kD128, kL2);
    FAIL() << "expected loom::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("4294836225 tiles"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("exceed 2^31 - 1"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace loom::cuda::flash
