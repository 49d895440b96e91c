#include "tests/common/test_util.h"

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdio>
#include <fstream>

namespace loom::testing {

TempDir::TempDir(const std::string& label) {
  static std::atomic<int> counter{0};
  path_ = (std::filesystem::temp_directory_path() /
           ("loom_test_" + std::to_string(getpid()) + "_" + std::to_string(counter++) + (label.empty() ? "" : "_" + label)))
              .string();
  std::filesystem::remove_all(path_);
  std::filesystem::create_directories(path_);
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

std::string TempDir::file(const std::string& name, const std::string& contents) const {
  const std::filesystem::path p = std::filesystem::path(path_) / name;
  std::filesystem::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary) << contents;
  return p.string();
}

std::string error_message(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no loom::Error thrown)";
}

CommandOutcome run_loom(const std::string& args) {
  const std::string cmd = std::string(LOOM_BINARY_DIR) + "/loom " + args + " 2>&1";
  CommandOutcome o;
  FILE* pipe = popen(cmd.c_str(), "r");
  if (!pipe) return o;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), pipe)) > 0) o.output.append(buf.data(), n);
  const int raw = pclose(pipe);
  o.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : 128 + WTERMSIG(raw);
  return o;
}

std::string line_column(const std::string& text, size_t offset) {
  const size_t line_start = offset == 0 ? 0 : text.rfind('\n', offset - 1) + 1;  // npos + 1 == 0: the first line
  const auto line = 1 + std::count(text.begin(), text.begin() + static_cast<std::ptrdiff_t>(offset), '\n');
  return std::to_string(line) + ":" + std::to_string(offset - line_start + 1);
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
