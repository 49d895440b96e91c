// DataSource over llm.c token shards (core/text_loader.h): training windows shuffled by seed and split by
// data-parallel rank; validation windows in order from the start of the validation shards.
#pragma once
#include <memory>
#include <optional>

#include "core/config.pb.h"
#include "core/text_loader.h"
#include "trainer/data_source.h"

namespace loom {

class TextSource final : public DataSource {
 public:
  // Opens data.train (and data.val when set). Throws loom::Error naming the field and pattern on failure.
  TextSource(const config::RunConfig& cfg, int rank, int world_size);
  Batch next_train(Device device) override;
  void begin_val() override;
  bool next_val(Batch& batch, Device device) override;
  nlohmann::json state() const override;
  void restore(const nlohmann::json& state) override;

 private:
  std::unique_ptr<TextLoader> train_, val_;
  int64_t val_served_ = 0;
};

}  // namespace loom
