#include "trainer/text_source.h"

#include <nlohmann/json.hpp>

namespace loom {
namespace {
Batch to_device(TextLoader::Batch b, Device device) {
  Batch out;
  out.inputs = device.is_cpu() ? b.inputs : b.inputs.to(device);
  out.targets = device.is_cpu() ? b.targets : b.targets.to(device);
  return out;
}
}  // namespace

TextSource::TextSource(const config::RunConfig& cfg, int rank, int world_size) {
  const auto& d = cfg.data();
  TextLoaderOptions o;
  o.batch_size = d.batch_size();
  o.seq_len = d.seq_len();
  o.rank = rank;
  o.world_size = world_size;
  o.seed = cfg.train().seed();
  o.shuffle = d.shuffle();
  o.vocab_size = cfg.model().vocab_size();
  o.pattern = d.train();
  try {
    train_ = std::make_unique<TextLoader>(o);
  } catch (const Error& e) {
    fail("data.train: ", e.what());
  }
  if (d.has_val() && !d.val().empty()) {
    o.pattern = d.val();
    o.shuffle = false;  // every evaluation sees the same windows
    try {
      val_ = std::make_unique<TextLoader>(o);
    } catch (const Error& e) {
      fail("data.val: ", e.what());
    }
  }
}

Batch TextSource::next_train(Device device) { return to_device(train_->next_batch(), device); }

void TextSource::begin_val() {
  if (val_) val_->set_position({0, 0});
  val_served_ = 0;
}

bool TextSource::next_val(Batch& batch, Device device) {
  // Stop before the loader wraps into a second pass over the validation windows.
  if (!val_ || (val_served_ + 1) * val_->options().batch_size > val_->windows_per_rank()) return false;
  batch = to_device(val_->next_batch(), device);
  ++val_served_;
  return true;
}

nlohmann::json TextSource::state() const { return {{"train", train_->position()}}; }

void TextSource::restore(const nlohmann::json& state) {
  if (!state.contains("train")) fail("data state: missing \"train\" position");
  train_->set_position(state.at("train").get<LoaderPosition>());
}

}  // namespace loom
