#include "tests/common/test_util.h"

#include <unistd.h>

#include <atomic>

namespace loom::testing {

TempDir::TempDir() {
  static std::atomic<int> counter{0};
  path_ = (std::filesystem::temp_directory_path() /
           ("loom_test_" + std::to_string(getpid()) + "_" + std::to_string(counter++)))
              .string();
  std::filesystem::remove_all(path_);
  std::filesystem::create_directories(path_);
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

Batch SyntheticTokens::make(int64_t index, Device device) const {
  PhiloxStream rng(seed_, static_cast<uint64_t>(index));
  std::vector<int32_t> window(static_cast<size_t>(batch_ * (seq_ + 1)));
  for (auto& t : window) t = static_cast<int32_t>(rng.below(static_cast<uint64_t>(vocab_)));
  std::vector<int32_t> in, tgt;
  for (int64_t b = 0; b < batch_; ++b)
    for (int64_t i = 0; i < seq_; ++i) {
      in.push_back(window[b * (seq_ + 1) + i]);
      tgt.push_back(window[b * (seq_ + 1) + i + 1]);
    }
  Batch batch;
  batch.inputs = Tensor::from_ints(in, {batch_, seq_}).to(device);
  batch.targets = Tensor::from_ints(tgt, {batch_, seq_}).to(device);
  return batch;
}

}  // namespace loom::testing
