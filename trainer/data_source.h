// Where the training loop gets its micro-batches: token windows for GPT (trainer/text_source.h) or images for
// ViT. A source is deterministic given its seed and rank, and can save and restore its position so that a
// resumed run sees exactly the batches an uninterrupted run would have seen.
#pragma once
#include <nlohmann/json.hpp>

#include "trainer/models/model.h"

namespace loom {

class DataSource {
 public:
  virtual ~DataSource() = default;
  // The next training micro-batch, on `device`.
  virtual Batch next_train(Device device) = 0;
  // Restarts the validation set from its beginning (every evaluation sees the same batches).
  virtual void begin_val() = 0;
  // The next validation batch; false when the validation set is exhausted (or there is none).
  virtual bool next_val(Batch& batch, Device device) = 0;
  // The training position, to save in checkpoints, and its restoration.
  virtual nlohmann::json state() const = 0;
  virtual void restore(const nlohmann::json& state) = 0;
};

}  // namespace loom
