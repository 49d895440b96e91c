// DataSource over IDX image files (core/image_loader.h) for ViT/DeiT: augmented, shuffled training batches of
// patch rows split by data-parallel rank, and the whole test split in order for evaluation.
#pragma once
#include <memory>

#include "core/config.pb.h"
#include "core/image_loader.h"
#include "trainer/data_source.h"

namespace loom {

class ImageSource final : public DataSource {
 public:
  // Loads data.train/data.train_labels (and data.val/data.val_labels when set). Errors name the field.
  ImageSource(const config::RunConfig& cfg, int rank, int world_size);
  Batch next_train(Device device) override;
  void begin_val() override;
  bool next_val(Batch& batch, Device device) override;
  nlohmann::json state() const override;
  void restore(const nlohmann::json& state) override;

 private:
  std::unique_ptr<ImageLoader> train_, val_;
};

}  // namespace loom
