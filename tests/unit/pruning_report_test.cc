// The end-of-run report of a pruning run: the width table has a row per block with both widths, and the SVG
// draws an outlined (unpruned) and a filled (pruned) bar per width per block whose heights follow the widths,
// plus the latency and loss curves through every recorded step.
#include "trainer/pruning/report.h"

#include <gtest/gtest.h>

#include <regex>

namespace loom {
namespace {

ModelShape shape_of(int64_t E, std::vector<BlockWidths> blocks) {
  ModelShape s;
  s.kind = "vit";
  s.d_model = E;
  s.blocks = std::move(blocks);
  return s;
}

size_t count(const std::string& s, const std::string& what) {
  size_t n = 0;
  for (size_t at = s.find(what); at != std::string::npos; at = s.find(what, at + 1)) ++n;
  return n;
}

TEST(PruningReport, WidthTableAndPicture) {
  const ModelShape from = shape_of(64, {{4, 16, 16, 128}, {4, 16, 16, 128}, {4, 16, 16, 128}});
  const ModelShape to = shape_of(48, {{2, 8, 16, 32}, {4, 8, 8, 128}, {1, 16, 16, 16}});
  const std::string table = width_table(from, to);
  EXPECT_NE(table.find("embedding 64 -> 48"), std::string::npos) << table;
  EXPECT_EQ(count(table, "\n"), 2u + 3u) << table;
  EXPECT_NE(table.find("    1 |   4 -> 4   |  16 -> 8   |  16 -> 8   |   128 -> 128"), std::string::npos) << table;

  const std::vector<PruningPoint> history = {{1, 10, 2.0}, {2, 8, 1.5}, {3, 5, 1.2}};
  const std::string svg = pruning_svg(from, to, history);
  EXPECT_EQ(svg.rfind("<svg", 0), 0u);
  EXPECT_NE(svg.find("</svg>"), std::string::npos);
  // Unfilled: the 3 × 3 unpruned outlines, the second panel's frame and its two curves.
  EXPECT_EQ(count(svg, "fill=\"none\" stroke=\"#"), 3u * 3u + 1u + 2u);
  // The filled bars: block 2's MLP keeps 16 of 128 neurons, so its bar is 1/8 of the outline's height.
  const std::regex bar("<rect x=\"[0-9.]+\" y=\"[0-9.]+\" width=\"[0-9.]+\" height=\"([0-9.]+)\" (fill=\"none\" stroke|fill)=\"#55a868\"");
  std::vector<double> heights;
  for (auto it = std::sregex_iterator(svg.begin(), svg.end(), bar); it != std::sregex_iterator(); ++it)
    heights.push_back(std::stod((*it)[1]));
  ASSERT_EQ(heights.size(), 7u);  // outline + fill for 3 blocks, then the legend's swatch
  EXPECT_NEAR(heights[5], heights[4] / 8, 0.1);
  EXPECT_NEAR(heights[3], heights[2], 1e-9);
  EXPECT_EQ(count(svg, "<polyline"), 2u);
  const auto line = svg.substr(svg.find("<polyline"));
  EXPECT_EQ(count(line.substr(0, line.find("/>")), ","), history.size());
}

}  // namespace
}  // namespace loom
