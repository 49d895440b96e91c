// Helpers shared by the unit tests: temporary directories and small synthetic data sources.
#pragma once
#include <filesystem>
#include <functional>
#include <string>

#include "core/rng.h"
#include "trainer/data_source.h"

namespace loom::testing {

// A fresh empty directory under the system temp dir, removed when the object dies. `label` only makes the
// name easier to recognise.
class TempDir {
 public:
  explicit TempDir(const std::string& label = "");
  ~TempDir();
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }
  // Writes `contents` to `name` (creating parent folders) and returns the file's path.
  std::string file(const std::string& name, const std::string& contents) const;

 private:
  std::string path_;
};

// The message of the loom::Error that `f` throws, or "(no loom::Error thrown)".
std::string error_message(const std::function<void()>& f);

// What `<build>/loom ARGS` (a shell command line's arguments) printed on stdout and stderr together, and its
// exit status (128 + the signal when a signal ended it; -1 when it could not be started).
struct CommandOutcome {
  int status = -1;
  std::string output;
};
CommandOutcome run_loom(const std::string& args);

// "<line>:<column>" (1-based, as the config loader reports positions) of byte `offset` of `text`.
std::string line_column(const std::string& text, size_t offset);

// Random token sequences, a pure function of (seed, position): batches can be replayed from a saved position.
// Targets are the inputs shifted by one within a (T+1)-token window, as in the real text loader.
class SyntheticTokens final : public DataSource {
 public:
  SyntheticTokens(int64_t batch, int64_t seq, int64_t vocab, uint64_t seed)
      : batch_(batch), seq_(seq), vocab_(vocab), seed_(seed) {}
  Batch next_train(Device device) override { return make(position_++, device); }
  void begin_val() override { val_position_ = 0; }
  bool next_val(Batch& b, Device device) override {
    if (val_position_ >= 2) return false;
    b = make(1000000 + val_position_++, device);
    return true;
  }
  nlohmann::json state() const override { return {{"position", position_}}; }
  void restore(const nlohmann::json& s) override { position_ = s.at("position").get<int64_t>(); }

 private:
  Batch make(int64_t index, Device device) const;
  int64_t batch_, seq_, vocab_;
  uint64_t seed_;
  int64_t position_ = 0, val_position_ = 0;
};

// Always the same batch (for overfitting tests).
class FixedBatch final : public DataSource {
 public:
  explicit FixedBatch(Batch b) : batch_(std::move(b)) {}
  Batch next_train(Device) override { return batch_; }
  void begin_val() override { served_ = false; }
  bool next_val(Batch& b, Device) override {
    if (served_) return false;
    b = batch_;
    served_ = true;
    return true;
  }
  nlohmann::json state() const override { return nlohmann::json::object(); }
  void restore(const nlohmann::json&) override {}

 private:
  Batch batch_;
  bool served_ = false;
};

}  // namespace loom::testing
