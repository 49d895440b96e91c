#include "core/image_loader.h"

#include <algorithm>
#include <cmath>
#include <thread>
#include <utility>

#include "core/error.h"
#include "core/rng.h"

namespace loom {
namespace {

// Philox stream ids: augmentation of (epoch, index) uses epoch << 32 | index (epoch < 2^31, index < 2^32);
// the shuffle of an epoch sets the top bit, so the two kinds of draw never share a stream.
constexpr uint64_t kShuffleStreamTag = uint64_t{1} << 63;
constexpr int64_t kMaxEpoch = (int64_t{1} << 31) - 1;

void check_cpu_f32(const Tensor& t, int ndim, const char* fn, const char* expected) {
  if (!t.defined() || t.ndim() != ndim || t.dtype() != DType::F32 || !t.device().is_cpu())
    fail(fn, ": expects an f32 CPU tensor ", expected, ", got ", t.defined() ? t.str() : "an undefined tensor");
}

// Bilinear, half-pixel centres: src = (dst + 0.5) * in / out - 0.5, clamped below at 0; the upper neighbour
// is clamped to the last row/column, so the edges replicate (PyTorch align_corners=False).
void resize_bilinear_raw(const float* in, int64_t channels, int64_t in_h, int64_t in_w, float* out, int64_t out_h,
                         int64_t out_w) {
  const double scale_y = static_cast<double>(in_h) / out_h, scale_x = static_cast<double>(in_w) / out_w;
  for (int64_t oy = 0; oy < out_h; ++oy) {
    const double sy = std::max(0.0, (oy + 0.5) * scale_y - 0.5);
    const int64_t y0 = std::min(static_cast<int64_t>(sy), in_h - 1), y1 = std::min(y0 + 1, in_h - 1);
    const float wy = static_cast<float>(sy - y0);
    for (int64_t ox = 0; ox < out_w; ++ox) {
      const double sx = std::max(0.0, (ox + 0.5) * scale_x - 0.5);
      const int64_t x0 = std::min(static_cast<int64_t>(sx), in_w - 1), x1 = std::min(x0 + 1, in_w - 1);
      const float wx = static_cast<float>(sx - x0);
      for (int64_t c = 0; c < channels; ++c) {
        const float* plane = in + c * in_h * in_w;
        const float top = (1 - wx) * plane[y0 * in_w + x0] + wx * plane[y0 * in_w + x1];
        const float bottom = (1 - wx) * plane[y1 * in_w + x0] + wx * plane[y1 * in_w + x1];
        out[(c * out_h + oy) * out_w + ox] = (1 - wy) * top + wy * bottom;
      }
    }
  }
}

// out(c, y, x) = in(c, y + crop_y - pad, x' + crop_x - pad), x' = flip ? W - 1 - x : x; 0 outside the image.
void augment_raw(const float* in, int64_t channels, int64_t h, int64_t w, const Augmentation& a, int64_t pad,
                 float* out) {
  for (int64_t c = 0; c < channels; ++c)
    for (int64_t y = 0; y < h; ++y) {
      const int64_t sy = y + a.crop_y - pad;
      for (int64_t x = 0; x < w; ++x) {
        const int64_t sx = (a.flip ? w - 1 - x : x) + a.crop_x - pad;
        const bool inside = sy >= 0 && sy < h && sx >= 0 && sx < w;
        out[(c * h + y) * w + x] = inside ? in[(c * h + sy) * w + sx] : 0.0f;
      }
    }
}

// patches[py * (W/P) + px][(c * P + dy) * P + dx] = image[c][py * P + dy][px * P + dx]
void patchify_raw(const float* image, int64_t channels, int64_t h, int64_t w, int64_t p, float* patches) {
  const int64_t patches_x = w / p, row = channels * p * p;
  for (int64_t c = 0; c < channels; ++c)
    for (int64_t y = 0; y < h; ++y)
      for (int64_t x = 0; x < w; ++x) {
        const int64_t patch = (y / p) * patches_x + x / p;
        patches[patch * row + (c * p + y % p) * p + x % p] = image[(c * h + y) * w + x];
      }
}

// Per-channel statistics: one value per channel, one value for all, or (empty) Fashion-MNIST's for 1 channel.
std::vector<float> channel_values(const std::vector<float>& given, int64_t channels, float fashion_default,
                                  const char* name) {
  if (given.empty()) {
    if (channels != 1)
      fail("ImageLoader: ", name, " is empty but the dataset has ", channels,
           " channels; the Fashion-MNIST default applies to 1-channel data only, so set it per channel");
    return {fashion_default};
  }
  if (given.size() == 1) return std::vector<float>(channels, given[0]);
  if (static_cast<int64_t>(given.size()) != channels)
    fail("ImageLoader: ", name, " has ", given.size(), " values but the dataset has ", channels, " channels");
  return given;
}

}  // namespace

void ImageDataset::validate(const std::string& what) const {
  if (count < 0 || channels < 1 || height < 1 || width < 1)
    fail(what, ": bad image dataset shape [", count, ", ", channels, ", ", height, ", ", width, "]");
  if (static_cast<int64_t>(pixels.size()) != count * channels * height * width)
    fail(what, ": ", pixels.size(), " pixels do not fill ", count, " images of ", channels, "x", height, "x", width);
  if (static_cast<int64_t>(labels.size()) != count) fail(what, ": ", labels.size(), " labels for ", count, " images");
  if (num_classes < 1) fail(what, ": num_classes must be positive, got ", num_classes);
  for (size_t i = 0; i < labels.size(); ++i)
    if (labels[i] < 0 || labels[i] >= num_classes)
      fail(what, ": label ", labels[i], " of item ", i, " is outside 0..", num_classes - 1);
}

ImageDataset image_dataset_from_idx(IdxDataset&& idx, int num_classes) {
  ImageDataset data;
  data.count = idx.images.count;
  data.channels = 1;
  data.height = idx.images.rows;
  data.width = idx.images.cols;
  data.num_classes = num_classes;
  data.pixels = std::move(idx.images.pixels);
  data.labels.assign(idx.labels.begin(), idx.labels.end());
  data.validate("IDX dataset");
  return data;
}

ImageDataset load_idx_dataset(const std::string& images_path, const std::string& labels_path, int num_classes) {
  return image_dataset_from_idx(read_idx_dataset(images_path, labels_path, num_classes), num_classes);
}

Augmentation draw_augmentation(uint64_t seed, int64_t epoch, int64_t index, int64_t padding, bool allow_flip) {
  LOOM_CHECK(epoch >= 0 && epoch <= kMaxEpoch && index >= 0 && index < (int64_t{1} << 32) && padding >= 0,
             "draw_augmentation: epoch ", epoch, ", index ", index, ", padding ", padding, " out of range");
  PhiloxStream rng(seed, (static_cast<uint64_t>(epoch) << 32) | static_cast<uint64_t>(index));
  // Always three draws at fixed positions, so enabling one augmentation does not change the other's values.
  const uint64_t span = static_cast<uint64_t>(2 * padding + 1);
  Augmentation a;
  a.crop_y = static_cast<int64_t>(rng.below(span));
  a.crop_x = static_cast<int64_t>(rng.below(span));
  a.flip = rng.below(2) == 1 && allow_flip;
  return a;
}

Tensor augment_image(const Tensor& image, const Augmentation& augmentation, int64_t padding) {
  check_cpu_f32(image, 3, "augment_image", "[C, H, W]");
  LOOM_CHECK(padding >= 0 && augmentation.crop_y >= 0 && augmentation.crop_y <= 2 * padding &&
                 augmentation.crop_x >= 0 && augmentation.crop_x <= 2 * padding,
             "augment_image: crop offsets (", augmentation.crop_y, ", ", augmentation.crop_x,
             ") must lie in [0, 2 * padding = ", 2 * padding, "]");
  Tensor out = Tensor::empty(image.shape(), DType::F32);
  augment_raw(image.data<float>(), image.dim(0), image.dim(1), image.dim(2), augmentation, padding,
              out.data<float>());
  return out;
}

std::vector<int64_t> epoch_permutation(int64_t n, uint64_t seed, int64_t epoch) {
  LOOM_CHECK(n >= 0 && epoch >= 0, "epoch_permutation: n ", n, ", epoch ", epoch);
  std::vector<int64_t> order(n);
  for (int64_t i = 0; i < n; ++i) order[i] = i;
  // Fisher-Yates, drawing from a stream of its own (see kShuffleStreamTag).
  PhiloxStream rng(seed, kShuffleStreamTag | static_cast<uint64_t>(epoch));
  for (int64_t i = n - 1; i > 0; --i) std::swap(order[i], order[rng.below(static_cast<uint64_t>(i + 1))]);
  return order;
}

Tensor resize_bilinear(const Tensor& image, int64_t out_h, int64_t out_w) {
  check_cpu_f32(image, 3, "resize_bilinear", "[C, H, W]");
  LOOM_CHECK(out_h > 0 && out_w > 0, "resize_bilinear: output size ", out_h, "x", out_w, " must be positive");
  Tensor out = Tensor::empty({image.dim(0), out_h, out_w}, DType::F32);
  resize_bilinear_raw(image.data<float>(), image.dim(0), image.dim(1), image.dim(2), out.data<float>(), out_h,
                      out_w);
  return out;
}

Tensor patchify(const Tensor& images, int64_t patch) {
  check_cpu_f32(images, 4, "patchify", "[B, C, H, W]");
  const int64_t batch = images.dim(0), channels = images.dim(1), h = images.dim(2), w = images.dim(3);
  if (patch < 1 || h % patch != 0 || w % patch != 0)
    fail("patchify: patch size ", patch, " does not divide the image size ", h, "x", w);
  const int64_t image_numel = channels * h * w;
  Tensor out = Tensor::empty({batch, (h / patch) * (w / patch), channels * patch * patch}, DType::F32);
  for (int64_t b = 0; b < batch; ++b)
    patchify_raw(images.data<float>() + b * image_numel, channels, h, w, patch, out.data<float>() + b * image_numel);
  return out;
}

ImageLoader::ImageLoader(std::shared_ptr<const ImageDataset> data, ImageLoaderOptions options)
    : data_(std::move(data)), options_(std::move(options)) {
  if (!data_) fail("ImageLoader: no dataset given");
  data_->validate("ImageLoader dataset");
  const ImageLoaderOptions& o = options_;
  if (o.batch_size < 1) fail("ImageLoader: batch_size must be positive, got ", o.batch_size);
  if (o.image_size < 0) fail("ImageLoader: image_size must be >= 0 (0 keeps the stored size), got ", o.image_size);
  if (o.patch_size < 0) fail("ImageLoader: patch_size must be >= 0 (0 outputs images), got ", o.patch_size);
  if (o.crop_padding < 0) fail("ImageLoader: crop_padding must be >= 0, got ", o.crop_padding);
  if (o.world < 1 || o.rank < 0 || o.rank >= o.world)
    fail("ImageLoader: rank ", o.rank, " is not in a world of size ", o.world);
  if (o.threads < 1) fail("ImageLoader: threads must be positive, got ", o.threads);
  if (data_->count >= (int64_t{1} << 32)) fail("ImageLoader: ", data_->count, " images exceed the 2^32 limit");
  height_ = o.image_size > 0 ? o.image_size : data_->height;
  width_ = o.image_size > 0 ? o.image_size : data_->width;
  mean_ = channel_values(o.mean, data_->channels, kFashionMnistMean, "mean");
  std_ = channel_values(o.std, data_->channels, kFashionMnistStd, "std");
  for (float s : std_)
    if (!(s > 0) || !std::isfinite(s)) fail("ImageLoader: std values must be positive and finite, got ", s);
  const int64_t c = data_->channels;
  if (o.patch_size > 0) {
    if (height_ % o.patch_size != 0 || width_ % o.patch_size != 0)
      fail("ImageLoader: patch_size ", o.patch_size, " does not divide the image size ", height_, "x", width_);
    input_shape_ = {o.batch_size, (height_ / o.patch_size) * (width_ / o.patch_size), c * o.patch_size * o.patch_size};
  } else {
    input_shape_ = {o.batch_size, c, height_, width_};
  }
  if (o.mode == LoaderMode::kTrain) {
    share_ = data_->count / o.world;
    if (share_ < 1)
      fail("ImageLoader: ", data_->count, " training images cannot give each of ", o.world, " ranks one");
  } else {
    share_ = std::max<int64_t>(0, (data_->count - o.rank + o.world - 1) / o.world);
  }
}

int64_t ImageLoader::eval_batches() const {
  const int64_t largest_share = (data_->count + options_.world - 1) / options_.world;
  return (largest_share + options_.batch_size - 1) / options_.batch_size;
}

const std::vector<int64_t>& ImageLoader::order_for(int64_t epoch) const {
  if (order_epoch_ != epoch) {
    order_ = epoch_permutation(data_->count, options_.seed, epoch);
    order_epoch_ = epoch;
  }
  return order_;
}

int64_t ImageLoader::sample_index(int64_t epoch, int64_t k) const {
  LOOM_CHECK(k >= 0 && k < share_ && epoch >= 0, "ImageLoader: sample ", k, " of epoch ", epoch,
             " is outside this rank's ", share_, " samples");
  // Interleaved split: rank r takes positions r, r + w, r + 2w, ... of the epoch order.
  const int64_t position = options_.rank + options_.world * k;
  const bool shuffled = options_.mode == LoaderMode::kTrain && options_.shuffle;
  return shuffled ? order_for(epoch)[position] : position;
}

// One image through the pipeline described in the header. scratch holds the stored image plus two output-size
// images; `out` receives the image [C, H, W] or its patch rows [Np, C*P*P].
void ImageLoader::render(int64_t index, int64_t epoch, float* scratch, float* out) const {
  const ImageDataset& d = *data_;
  const int64_t c = d.channels, stored_numel = c * d.height * d.width, numel = c * height_ * width_;
  const uint8_t* src = d.pixels.data() + index * stored_numel;
  float* stored = scratch;
  float* image = scratch + stored_numel;
  float* augmented = image + numel;
  for (int64_t i = 0; i < stored_numel; ++i) stored[i] = src[i] * (1.0f / 255.0f);
  if (height_ != d.height || width_ != d.width)
    resize_bilinear_raw(stored, c, d.height, d.width, image, height_, width_);
  else
    image = stored;
  const ImageLoaderOptions& o = options_;
  if (o.mode == LoaderMode::kTrain && (o.crop_padding > 0 || o.horizontal_flip)) {
    const Augmentation a = draw_augmentation(o.seed, epoch, index, o.crop_padding, o.horizontal_flip);
    augment_raw(image, c, height_, width_, a, o.crop_padding, augmented);
    image = augmented;
  }
  const int64_t plane = height_ * width_;
  float* normalised = o.patch_size > 0 ? augmented : out;  // patchify reads from `augmented` in place
  for (int64_t ch = 0; ch < c; ++ch) {
    const float mean = mean_[ch], inv_std = 1.0f / std_[ch];
    for (int64_t i = 0; i < plane; ++i) normalised[ch * plane + i] = (image[ch * plane + i] - mean) * inv_std;
  }
  if (o.patch_size > 0) patchify_raw(normalised, c, height_, width_, o.patch_size, out);
}

bool ImageLoader::next(ImageBatch& batch) {
  const int64_t b_size = options_.batch_size;
  const bool train = options_.mode == LoaderMode::kTrain;
  if (!train && index_ >= eval_batches() * b_size) return false;

  // Decide the (dataset index, epoch) of every row first, sequentially; then render rows independently.
  std::vector<std::pair<int64_t, int64_t>> rows;  // (dataset index, epoch); eval padding rows are left out
  int64_t epoch = epoch_, index = index_;
  for (int64_t b = 0; b < b_size; ++b) {
    if (train) {
      rows.emplace_back(sample_index(epoch, index), epoch);
      if (++index == share_) {
        index = 0;
        LOOM_CHECK(++epoch <= kMaxEpoch, "ImageLoader: epoch count exceeds ", kMaxEpoch);
      }
    } else {
      if (index < share_) rows.emplace_back(sample_index(0, index), 0);
      ++index;
    }
  }
  epoch_ = epoch;
  index_ = index;

  const int64_t valid = static_cast<int64_t>(rows.size());
  const int64_t row_numel = shape_numel(input_shape_) / b_size;
  batch.inputs = Tensor::empty(input_shape_, DType::F32);
  batch.labels = Tensor::empty({b_size}, DType::I32);
  batch.valid = valid;
  float* inputs = batch.inputs.data<float>();
  int32_t* labels = batch.labels.data<int32_t>();
  std::fill(inputs + valid * row_numel, inputs + b_size * row_numel, 0.0f);
  std::fill(labels + valid, labels + b_size, -1);

  const ImageDataset& d = *data_;
  const int64_t scratch_numel = d.channels * (d.height * d.width + 2 * height_ * width_);
  const int64_t workers = std::min<int64_t>(options_.threads, std::max<int64_t>(valid, 1));
  std::vector<std::vector<float>> scratch(workers, std::vector<float>(scratch_numel));
  auto work = [&](int64_t worker) {
    for (int64_t r = worker; r < valid; r += workers) {
      render(rows[r].first, rows[r].second, scratch[worker].data(), inputs + r * row_numel);
      labels[r] = d.labels[rows[r].first];
    }
  };
  std::vector<std::thread> threads;
  for (int64_t t = 1; t < workers; ++t) threads.emplace_back(work, t);
  work(0);
  for (std::thread& t : threads) t.join();
  return true;
}

void ImageLoader::restart() {
  epoch_ = 0;
  index_ = 0;
}

nlohmann::json ImageLoader::position() const { return {{"epoch", epoch_}, {"index", index_}}; }

void ImageLoader::set_position(const nlohmann::json& position) {
  auto field = [&](const char* name) -> int64_t {
    if (!position.is_object() || !position.contains(name) || !position.at(name).is_number_integer())
      fail("ImageLoader position: field \"", name, "\" is missing or not an integer in ", position.dump());
    return position.at(name).get<int64_t>();
  };
  const int64_t epoch = field("epoch"), index = field("index");
  if (options_.mode == LoaderMode::kTrain) {
    if (epoch < 0 || epoch > kMaxEpoch || index < 0 || index >= share_)
      fail("ImageLoader position: epoch ", epoch, ", index ", index, " is outside epochs 0..", kMaxEpoch,
           " and indices 0..", share_ - 1, " of this rank's training share");
  } else if (epoch != 0 || index < 0 || index > eval_batches() * options_.batch_size) {
    fail("ImageLoader position: epoch ", epoch, ", index ", index, " is outside the evaluation pass (epoch 0, ",
         "indices 0..", eval_batches() * options_.batch_size, ")");
  }
  epoch_ = epoch;
  index_ = index;
}

}  // namespace loom
