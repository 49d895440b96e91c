// The tiny ViT config on the real Fashion-MNIST files (Debian's dataset-fashion-mnist, installed by
// scripts/setup.sh) must reach at least 85 % top-1 accuracy on the 10,000 test images, training on the CPU.
// The budget is 10 minutes on a 2-core machine; the log prints the time taken.
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <sstream>

#include "core/config.h"
#include "tests/common/test_util.h"
#include "trainer/run.h"

namespace loom {
namespace {

TEST(VitFashionMnist, ReachesEightyFivePercentOnTheTestSet) {
  const std::string config = std::string(LOOM_SOURCE_DIR) + "/configs/vit_tiny_fmnist.yaml";
  ASSERT_TRUE(std::filesystem::exists("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"))
      << "Fashion-MNIST is missing: run scripts/setup.sh (Debian package dataset-fashion-mnist)";
  testing::TempDir out;
  const config::RunConfig cfg = load_run_config(
      config, {"train.out_dir=" + out.path(), "train.device=cpu", "train.progress=false", "train.checkpoint_every=0"});
  std::ostringstream log;
  const auto t0 = std::chrono::steady_clock::now();
  const TrainResult r = run_training(cfg, log);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::cout << log.str() << "trained in " << seconds << " s\n";
  EXPECT_GE(r.last_val_accuracy, 0.85);
}

}  // namespace
}  // namespace loom
