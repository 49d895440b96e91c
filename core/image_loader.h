// Image classification data for ViT / DeiT: an in-memory uint8 dataset served as float batches.
//
// Pipeline for one image (all on the host, per sample):
//   uint8 [C, Hs, Ws] --/255--> [0, 1] --bilinear resize (only if the size differs)--> [C, H, W]
//   --train only: zero-pad by p, random H x W crop, then horizontal flip with p = 0.5-->
//   --normalise (v - mean[c]) / std[c]--> written as an image [C, H, W] or as patch rows [Np, C*P*P].
// The padding is black (0 before normalisation), as torchvision's RandomCrop(padding) followed by Normalize.
//
// Determinism: an image's augmentation is a pure function of (seed, epoch, dataset index) drawn from a
// counter-based Philox stream, so it never depends on batch composition, rank count or thread count. The
// epoch order is a Fisher-Yates shuffle drawn from (seed, epoch). A loader's position is (epoch, index) and
// restoring it replays exactly the batches an uninterrupted loader would have produced.
//
// Patch layout: patch (py, px) is row py * (W / P) + px of the output, and its C*P*P values are ordered
// (c, dy, dx) -- the order of Conv2d's weight [D, C, P, P] flattened per output channel (timm's
// patch_embed.proj.weight), so a linear layer with weight [D, C*P*P] over the rows equals the strided conv.
//
// Thread-safety: an ImageLoader is used by one thread at a time; several loaders may share one dataset
// (it is immutable once loaded). The loader itself may use `threads` worker threads inside next().
#pragma once
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/idx.h"
#include "core/tensor.h"

namespace loom {

// Images in memory: uint8 pixels [count, channels, height, width] (planar per image) and int32 labels.
struct ImageDataset {
  int64_t count = 0, channels = 1, height = 0, width = 0;
  int num_classes = 0;
  std::vector<uint8_t> pixels;
  std::vector<int32_t> labels;

  // Throws loom::Error naming `what` unless the sizes agree and every label is in [0, num_classes).
  void validate(const std::string& what) const;
};

// Moves IDX images (one channel) and labels into an ImageDataset; validate()s it.
ImageDataset image_dataset_from_idx(IdxDataset&& idx, int num_classes);

// read_idx_dataset() + image_dataset_from_idx(): errors name the files.
ImageDataset load_idx_dataset(const std::string& images_path, const std::string& labels_path, int num_classes);

// Fashion-MNIST training-set statistics after scaling pixels to [0, 1].
inline constexpr float kFashionMnistMean = 0.2860f;
inline constexpr float kFashionMnistStd = 0.3530f;

enum class LoaderMode {
  kTrain,  // shuffled (if enabled), augmented, endless: an epoch's end continues into the next epoch
  kEval,   // in dataset order, no augmentation, one pass with a final partial batch
};

struct ImageLoaderOptions {
  LoaderMode mode = LoaderMode::kTrain;
  int64_t batch_size = 0;     // images per batch on this rank; required, > 0
  int64_t image_size = 0;     // output height = width; 0 keeps the stored size (no resize)
  int64_t patch_size = 0;     // 0: images [B, C, H, W]; P > 0: patch rows [B, (H/P)*(W/P), C*P*P]
  std::vector<float> mean;    // per channel, or one value for all; empty: Fashion-MNIST's (1 channel only)
  std::vector<float> std;     // same rules as mean; every value > 0
  bool shuffle = true;        // train only
  int64_t crop_padding = 2;   // train only; 0 disables the random crop
  bool horizontal_flip = true;  // train only
  uint64_t seed = 1337;
  int rank = 0, world = 1;    // data-parallel rank and size: each rank sees a disjoint share
  int threads = 1;            // worker threads building a batch (results do not depend on it)
};

struct ImageBatch {
  Tensor inputs;      // f32 on the CPU: [B, C, H, W] or [B, Np, C*P*P] (see ImageLoaderOptions::patch_size)
  Tensor labels;      // i32 [B]
  int64_t valid = 0;  // rows [0, valid) are real; later rows (eval's last batch only) have zero inputs and
                      // label -1, which cross_entropy ignores; inputs.narrow0(0, valid) gives the exact batch
};

// The crop offsets (in the padded image, each in [0, 2 * padding]) and flip chosen for one sample.
struct Augmentation {
  int64_t crop_y = 0, crop_x = 0;
  bool flip = false;
};

// The augmentation of dataset item `index` in `epoch`: a pure function of its arguments. With padding 0 the
// crop is the identity (offsets = 0); with allow_flip false, flip is false.
Augmentation draw_augmentation(uint64_t seed, int64_t epoch, int64_t index, int64_t padding, bool allow_flip);

// Applies an augmentation to a float image [C, H, W] (CPU, f32): out(c, y, x) = in(c, y + crop_y - padding,
// x' + crop_x - padding) with x' = W - 1 - x when flipping (crop, then flip), and 0 outside the image.
Tensor augment_image(const Tensor& image, const Augmentation& augmentation, int64_t padding);

// The permutation of [0, n) used as epoch `epoch`'s order: a pure function of (n, seed, epoch).
std::vector<int64_t> epoch_permutation(int64_t n, uint64_t seed, int64_t epoch);

// Bilinear resize of a float image [C, H, W] to [C, out_h, out_w] with half-pixel centres (PyTorch's
// align_corners=False, no antialiasing): source coordinate (dst + 0.5) * in / out - 0.5, clamped to the image.
Tensor resize_bilinear(const Tensor& image, int64_t out_h, int64_t out_w);

// images f32 [B, C, H, W] (CPU) -> patch rows f32 [B, (H/P)*(W/P), C*P*P] in the layout described above.
// Throws unless H and W are multiples of `patch`.
Tensor patchify(const Tensor& images, int64_t patch);

class ImageLoader {
 public:
  // Shares the dataset; throws loom::Error naming the offending option (or the dataset) on bad input.
  ImageLoader(std::shared_ptr<const ImageDataset> data, ImageLoaderOptions options);

  // Fills `batch` with the next batch and returns true; in eval mode returns false (leaving `batch` alone)
  // once this rank's share has been served. Train mode never returns false.
  bool next(ImageBatch& batch);
  // Back to the first batch (epoch 0, index 0): the start of the next evaluation pass.
  void restart();

  // The position of the next batch as {"epoch": e, "index": i}, i counting this rank's samples within the
  // epoch. Restoring it (same dataset, options and world size) gives exactly the batches that would follow.
  nlohmann::json position() const;
  // Throws loom::Error naming the field when the json is malformed or out of range for this loader.
  void set_position(const nlohmann::json& position);

  // Samples this rank serves per epoch. Train: floor(count / world) (the count % world remainder is left out
  // of each epoch, a different part each epoch when shuffled). Eval: ceil((count - rank) / world), so the
  // ranks together cover the set exactly once.
  int64_t samples_per_epoch() const { return share_; }
  // Eval: batches per pass, equal on every rank (a rank with fewer samples pads more) so ranks stay in step.
  int64_t eval_batches() const;
  // Shape of ImageBatch::inputs.
  const Shape& input_shape() const { return input_shape_; }
  // The dataset index of this rank's k-th sample of `epoch` (k < samples_per_epoch()).
  int64_t sample_index(int64_t epoch, int64_t k) const;

 private:
  void render(int64_t index, int64_t epoch, float* scratch, float* out) const;
  const std::vector<int64_t>& order_for(int64_t epoch) const;

  std::shared_ptr<const ImageDataset> data_;
  ImageLoaderOptions options_;
  int64_t height_ = 0, width_ = 0, share_ = 0;
  Shape input_shape_;
  std::vector<float> mean_, std_;
  int64_t epoch_ = 0, index_ = 0;
  mutable int64_t order_epoch_ = -1;  // the epoch whose permutation order_ holds
  mutable std::vector<int64_t> order_;
};

}  // namespace loom
