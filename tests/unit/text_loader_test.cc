#include "core/text_loader.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"
#include "tests/common/test_util.h"

namespace loom {
namespace {
namespace fs = std::filesystem;
using testing::error_message;
using testing::TempDir;

constexpr int64_t kT = 4;

// Two shards whose token values say where they are: shard s holds s * 1000 + i at position i. With T = 4,
// shard 0 (23 tokens) has floor(22 / 4) = 5 windows and shard 1 (17 tokens) has 4: W = 9. The glob sorts
// "a_" before "b_", whatever order the files are written in.
struct Shards {
  TempDir dir;
  explicit Shards(const std::string& name) : dir(name) {
    write(dir / "b_shard.bin", 1, 17);
    write(dir / "a_shard.bin", 0, 23);
  }
  static void write(const std::string& path, int shard, int n) {
    std::vector<int32_t> tokens(n);
    for (int i = 0; i < n; ++i) tokens[i] = shard * 1000 + i;
    write_shard(path, tokens);
  }
  std::string pattern() const { return dir / "*_shard.bin"; }
  // The global index of the window whose first token is `first` (shard 0's windows come first).
  static int64_t window_of(int32_t first) { return first >= 1000 ? 5 + (first - 1000) / kT : first / kT; }
};

TextLoaderOptions options_for(const Shards& shards, int64_t batch, uint64_t seed = 1, bool shuffle = true,
                              int rank = 0, int world = 1) {
  TextLoaderOptions o;
  o.pattern = shards.pattern();
  o.batch_size = batch;
  o.seq_len = kT;
  o.seed = seed;
  o.shuffle = shuffle;
  o.rank = rank;
  o.world_size = world;
  return o;
}

// Serves `batches` batches and returns the windows (global indices) in the order served, checking that
// every input/target element was written (poisoned with -7 first) and that targets are inputs shifted by one.
std::vector<int64_t> serve(TextLoader& loader, int batches) {
  const int64_t B = loader.options().batch_size;
  std::vector<int64_t> windows;
  for (int n = 0; n < batches; ++n) {
    std::vector<int32_t> inputs(B * kT, -7), targets(B * kT, -7);
    loader.next_batch(inputs.data(), targets.data());
    for (int64_t b = 0; b < B; ++b) {
      const int32_t first = inputs[b * kT];
      EXPECT_EQ(first % 1000 % kT, 0) << "windows start at multiples of T";
      for (int64_t t = 0; t < kT; ++t) {
        EXPECT_EQ(inputs[b * kT + t], first + t);
        EXPECT_EQ(targets[b * kT + t], first + t + 1);
      }
      windows.push_back(Shards::window_of(first));
    }
  }
  return windows;
}

TEST(TextLoader, UnshuffledOrderAndEpochWrap) {
  Shards shards("ordered");
  TextLoader loader(options_for(shards, 2, 1, /*shuffle=*/false));
  EXPECT_EQ(loader.total_windows(), 9);
  EXPECT_EQ(loader.windows_per_rank(), 9);
  EXPECT_EQ(loader.total_tokens(), 40);
  // 5 batches of 2 = 10 windows: the whole epoch, then the batch continues into epoch 1 with window 0.
  EXPECT_EQ(serve(loader, 5), (std::vector<int64_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 0}));
  EXPECT_EQ(loader.position(), (LoaderPosition{1, 1}));
  EXPECT_EQ(serve(loader, 1), (std::vector<int64_t>{1, 2}));
}

TEST(TextLoader, ShuffledEpochsArePermutationsThatDependOnTheSeed) {
  Shards shards("shuffle");
  TextLoader a(options_for(shards, 3, 42)), b(options_for(shards, 3, 42)), c(options_for(shards, 3, 43));
  // 3 batches of 3 = one epoch of 9 windows.
  const std::vector<int64_t> a_epochs = serve(a, 12), b_epochs = serve(b, 12), c_epochs = serve(c, 12);
  EXPECT_EQ(a_epochs, b_epochs);
  EXPECT_NE(a_epochs, c_epochs);
  std::vector<std::vector<int64_t>> epochs;
  for (int e = 0; e < 4; ++e) {
    std::vector<int64_t> epoch(a_epochs.begin() + 9 * e, a_epochs.begin() + 9 * (e + 1));
    epochs.push_back(epoch);
    std::sort(epoch.begin(), epoch.end());
    EXPECT_EQ(epoch, (std::vector<int64_t>{0, 1, 2, 3, 4, 5, 6, 7, 8})) << "epoch " << e;
  }
  // Epochs are shuffled differently (the chance that 4 random orders of 9 are all equal is negligible).
  EXPECT_FALSE(epochs[0] == epochs[1] && epochs[1] == epochs[2] && epochs[2] == epochs[3]);
  EXPECT_EQ(a.position(), (LoaderPosition{4, 0}));
}

TEST(TextLoader, RanksAreDisjointAndCoverTheEpoch) {
  Shards shards("ranks");
  for (const int world : {1, 2, 3, 4}) {
    std::vector<int64_t> all;
    for (int rank = 0; rank < world; ++rank) {
      TextLoader loader(options_for(shards, 1, 5, true, rank, world));
      EXPECT_EQ(loader.windows_per_rank(), 9 / world);
      const std::vector<int64_t> mine = serve(loader, static_cast<int>(loader.windows_per_rank()));
      all.insert(all.end(), mine.begin(), mine.end());
      EXPECT_EQ(loader.position(), (LoaderPosition{1, 0}));
    }
    std::set<int64_t> distinct(all.begin(), all.end());
    EXPECT_EQ(distinct.size(), all.size()) << "ranks overlap with world_size " << world;
    EXPECT_EQ(static_cast<int64_t>(all.size()), 9 / world * world);
    if (9 % world == 0) {
      EXPECT_EQ(distinct.size(), 9u) << "world_size " << world << " must cover every window";
    }
  }
}

TEST(TextLoader, SavedPositionContinuesExactly) {
  Shards shards("resume");
  // B = 2 does not divide the 9 windows, so batches straddle epochs.
  TextLoader original(options_for(shards, 2, 99));
  serve(original, 7);
  const std::string saved = nlohmann::json(original.position()).dump();
  const std::vector<int64_t> continued = serve(original, 10);

  TextLoader restored(options_for(shards, 2, 99));
  restored.set_position(nlohmann::json::parse(saved).get<LoaderPosition>());
  EXPECT_EQ(restored.position(), (LoaderPosition{1, 5}));
  EXPECT_EQ(serve(restored, 10), continued);
}

TEST(TextLoader, TensorBatchesMatchThePointerApi) {
  Shards shards("tensor");
  TextLoader a(options_for(shards, 3, 8)), b(options_for(shards, 3, 8));
  for (int n = 0; n < 4; ++n) {
    const TextLoader::Batch batch = a.next_batch();
    ASSERT_EQ(batch.inputs.shape(), (Shape{3, kT}));
    ASSERT_EQ(batch.targets.dtype(), DType::I32);
    std::vector<int32_t> inputs(3 * kT), targets(3 * kT);
    b.next_batch(inputs.data(), targets.data());
    for (int64_t i = 0; i < 3 * kT; ++i) {
      EXPECT_EQ(batch.inputs.data<int32_t>()[i], inputs[i]);
      EXPECT_EQ(batch.targets.data<int32_t>()[i], targets[i]);
    }
  }
}

TEST(TextLoader, RejectsBadSetup) {
  Shards shards("errors");
  const std::string none = shards.dir / "nothing_*.bin";
  TextLoaderOptions o = options_for(shards, 2);
  o.pattern = none;
  EXPECT_NE(error_message([&] { TextLoader loader(o); }).find(none), std::string::npos);
  o = options_for(shards, 2, 1, true, 0, 10);  // 9 windows cannot feed 10 ranks
  EXPECT_NE(error_message([&] { TextLoader loader(o); }).find(shards.pattern()), std::string::npos);
  EXPECT_THROW(TextLoader(options_for(shards, 2, 1, true, 2, 2)), Error);
  EXPECT_THROW(TextLoader(options_for(shards, 0)), Error);

  TextLoader loader(options_for(shards, 2));
  EXPECT_THROW(loader.set_position({0, 9}), Error);
  EXPECT_THROW(loader.set_position({-1, 0}), Error);
  EXPECT_THROW(nlohmann::json::parse(R"({"epoch": 1})").get<LoaderPosition>(), Error);
  EXPECT_THROW(nlohmann::json::parse(R"({"epoch": 1, "index": "2"})").get<LoaderPosition>(), Error);

  // Out-of-vocabulary tokens are found when the shards open, not when their window is first served.
  o = options_for(shards, 9, 1, false);
  o.vocab_size = 1000;  // shard b's tokens are >= 1000, from its first token on
  const std::string oov = error_message([&] { TextLoader loader(o); });
  EXPECT_NE(oov.find("b_shard.bin"), std::string::npos) << oov;
  EXPECT_NE(oov.find("token 0 (byte offset 1024) is 1000"), std::string::npos) << oov;
  o.vocab_size = 1017;  // exactly covers shard b's largest token, 1016
  EXPECT_NO_THROW(TextLoader loader(o));
}

}  // namespace
}  // namespace loom
