#include "trainer/image_source.h"

#include <algorithm>
#include <thread>

namespace loom {
namespace {

std::shared_ptr<const ImageDataset> load(const std::string& images, const std::string& labels, int classes,
                                         const char* field) {
  if (labels.empty()) fail("data.", field, "_labels: required for image data");
  try {
    return std::make_shared<const ImageDataset>(load_idx_dataset(images, labels, classes));
  } catch (const Error& e) {
    fail("data.", field, ": ", e.what());
  }
}

Batch to_device(const ImageBatch& b, Device device) {
  Batch out;
  out.inputs = b.inputs.narrow0(0, b.valid);
  out.targets = b.labels.narrow0(0, b.valid);
  if (!device.is_cpu()) {
    out.inputs = out.inputs.to(device);
    out.targets = out.targets.to(device);
  }
  return out;
}

}  // namespace

ImageSource::ImageSource(const config::RunConfig& cfg, int rank, int world_size) {
  const auto& d = cfg.data();
  const auto& m = cfg.model();
  ImageLoaderOptions o;
  o.batch_size = d.batch_size();
  o.image_size = m.image_size();
  o.patch_size = m.patch_size();
  o.mean.assign(d.mean().begin(), d.mean().end());
  o.std.assign(d.std().begin(), d.std().end());
  o.shuffle = d.shuffle();
  o.crop_padding = d.crop_padding();
  o.horizontal_flip = d.horizontal_flip();
  o.seed = cfg.train().seed();
  o.rank = rank;
  o.world = world_size;
  o.threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  train_ = std::make_unique<ImageLoader>(load(d.train(), d.train_labels(), m.num_classes(), "train"), o);
  if (d.has_val() && !d.val().empty()) {
    o.mode = LoaderMode::kEval;
    val_ = std::make_unique<ImageLoader>(load(d.val(), d.val_labels(), m.num_classes(), "val"), o);
  }
}

Batch ImageSource::next_train(Device device) {
  ImageBatch b;
  train_->next(b);
  return to_device(b, device);
}

void ImageSource::begin_val() {
  if (val_) val_->restart();
}

bool ImageSource::next_val(Batch& batch, Device device) {
  ImageBatch b;
  if (!val_ || !val_->next(b)) return false;
  batch = to_device(b, device);
  return true;
}

nlohmann::json ImageSource::state() const { return {{"train", train_->position()}}; }

void ImageSource::restore(const nlohmann::json& state) {
  if (!state.contains("train")) fail("data state: missing \"train\" position");
  train_->set_position(state.at("train"));
}

}  // namespace loom
