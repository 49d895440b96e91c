// The memory check before a run allocates (trainer/memory_estimate.h) on a GPU: the CUDA allocator reports what
// the device can still give (cudaMemGetInfo's free bytes plus its cached blocks), a run that cannot fit stops
// before allocating with the estimate and that figure, and the estimate agrees with what real bf16 steps hold.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <iostream>
#include <sstream>

#include "core/allocator.h"
#include "core/config.h"
#include "core/token_shards.h"
#include "kernels/backend.h"
#include "tests/common/test_util.h"
#include "trainer/memory_estimate.h"
#include "trainer/run.h"
#include "trainer/trainer.h"

namespace loom {
namespace {

class CudaMemoryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU visible";
    backend_ = make_backend(Device::cuda(0));
  }
  std::unique_ptr<Backend> backend_;
};

TEST_F(CudaMemoryTest, AvailableBytesAreTheFreeMemoryPlusTheCachedBlocks) {
  Allocator& cuda = allocator_for(Device::cuda(0));
  size_t free = 0, total = 0;
  ASSERT_EQ(cudaMemGetInfo(&free, &total), cudaSuccess);
  const int64_t before = cuda.available_bytes();
  EXPECT_GE(before, static_cast<int64_t>(free) - (64 << 20));  // other processes may take a little meanwhile
  EXPECT_LE(before, static_cast<int64_t>(total));
  constexpr size_t kBlock = size_t{512} << 20;
  void* p = cuda.allocate(kBlock);
  const int64_t held = cuda.available_bytes();
  EXPECT_NEAR(static_cast<double>(before - held), static_cast<double>(kBlock), 64.0 * (1 << 20));
  cuda.deallocate(p, kBlock);  // cached, not returned to CUDA: still available to this process
  EXPECT_NEAR(static_cast<double>(cuda.available_bytes()), static_cast<double>(before), 64.0 * (1 << 20));
}

// Issue 15: a model too large for the GPU ran 28 s, then failed with "out of memory allocating 10509778944
// bytes". Now it stops before allocating, naming the estimate and the device's free memory.
TEST_F(CudaMemoryTest, ARunThatCannotFitStopsBeforeAllocating) {
  testing::TempDir dir;
  const config::RunConfig cfg = parse_run_config(
      "model: {kind: gpt, n_layer: 48, d_model: 8192, n_head: 64}\n"
      "data: {train: unused, batch_size: 32, seq_len: 1024}\n"
      "train: {max_steps: 10, device: cuda, progress: false, out_dir: \"" + dir / "huge" + "\"}\n",
      "huge.yaml");
  const int64_t before = static_cast<int64_t>(allocator_for(Device::cuda(0)).bytes_in_use());
  std::ostringstream log;
  const std::string error = testing::error_message([&] { run_training(cfg, log); });
  std::cout << error << "\n";
  EXPECT_EQ(error.rfind("memory: the run needs about ", 0), 0u) << error;
  EXPECT_NE(error.find(" on cuda:0 but only "), std::string::npos) << error;
  EXPECT_NE(error.find("free there; stopping before allocating"), std::string::npos) << error;
  EXPECT_LT(static_cast<int64_t>(allocator_for(Device::cuda(0)).bytes_in_use()) - before, 64 << 20);
}

// What bf16 steps of a GPT on the GPU hold (the allocator's bytes in use after two steps, everything live),
// against the estimate.
TEST_F(CudaMemoryTest, AgreesWithWhatRealStepsHoldOnTheGpu) {
  testing::TempDir dir;
  std::vector<int32_t> tokens(1 << 16);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<int32_t>((i * 7 + i / 13) % 50257);
  write_shard(dir / "train_000000.bin", tokens);
  const config::RunConfig cfg = parse_run_config(
      "model: {kind: gpt, n_layer: 6, d_model: 768, n_head: 12}\n"
      "data: {train: \"" + dir / "train_*.bin" + "\", batch_size: 8, seq_len: 1024}\n"
      "train: {max_steps: 2, device: cuda, progress: false, log_every: 0, checkpoint_every: -1, val_batches: 0, "
      "out_dir: \"" + dir / "run" + "\"}\n",
      "gpt.yaml");
  Allocator& cuda = allocator_for(Device::cuda(0));
  const int64_t before = static_cast<int64_t>(cuda.bytes_in_use());
  const DType compute = select_compute_dtype(Device::cuda(0), cfg.train());
  auto model = build_model(cfg, *backend_, compute);
  auto data = build_data_source(cfg, 0, 1);
  std::ostringstream log;
  Trainer trainer(cfg, *model, *data, log);
  trainer.run();
  const int64_t held = static_cast<int64_t>(cuda.bytes_in_use()) - before;
  const MemoryEstimate e = estimate_training_memory(resolve_model_shape(cfg), cfg, *backend_, compute);
  std::cout << "estimate " << e.describe() << ", held after two steps " << format_bytes(static_cast<double>(held))
            << "\n";
  EXPECT_NEAR(static_cast<double>(e.total()), static_cast<double>(held), 0.15 * static_cast<double>(held));
}

}  // namespace
}  // namespace loom
