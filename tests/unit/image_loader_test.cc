#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/image_loader.h"
#include "core/rng.h"

namespace loom {
namespace {

// Random pixels, except that pixel 0 of image i is i (n <= 256), so a served row can be traced to its image
// when mean = 0 and std = 1 (the row's first value is then i / 255).
std::shared_ptr<ImageDataset> traced_dataset(int64_t n, int64_t c, int64_t h, int64_t w, uint64_t seed) {
  auto d = std::make_shared<ImageDataset>();
  d->count = n;
  d->channels = c;
  d->height = h;
  d->width = w;
  d->num_classes = 7;
  d->pixels.resize(n * c * h * w);
  d->labels.resize(n);
  PhiloxStream rng(seed, 0);
  for (uint8_t& p : d->pixels) p = static_cast<uint8_t>(rng.below(256));
  for (int64_t i = 0; i < n; ++i) {
    d->pixels[i * c * h * w] = static_cast<uint8_t>(i);
    d->labels[i] = static_cast<int32_t>(rng.below(7));
  }
  return d;
}

ImageLoaderOptions identity_options(LoaderMode mode, int64_t batch) {
  ImageLoaderOptions o;
  o.mode = mode;
  o.batch_size = batch;
  o.mean = {0.0f};
  o.std = {1.0f};
  return o;
}

// The dataset index of each valid row (from its traced first pixel; identity normalisation only).
std::vector<int64_t> traced_indices(const ImageBatch& b) {
  std::vector<int64_t> out;
  const int64_t row = b.inputs.numel() / b.inputs.dim(0);
  for (int64_t r = 0; r < b.valid; ++r) out.push_back(std::lround(b.inputs.item(r * row) * 255.0));
  return out;
}

std::vector<float> image_as_float(const ImageDataset& d, int64_t i) {
  const int64_t numel = d.channels * d.height * d.width;
  std::vector<float> out(numel);
  for (int64_t k = 0; k < numel; ++k) out[k] = d.pixels[i * numel + k] / 255.0f;
  return out;
}

void expect_close(const std::vector<float>& got, const std::vector<float>& expected, const std::string& what) {
  ASSERT_EQ(got.size(), expected.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], expected[i], 1e-6) << what << ", element " << i;
}

TEST(ImageLoader, PatchifyEqualsStridedConvolution) {
  const int64_t B = 2, C = 3, H = 8, W = 12, P = 4, D = 5, Hp = H / P, Wp = W / P;
  PhiloxStream rng(42, 0);
  std::vector<float> pixels(B * C * H * W), weight(D * C * P * P), bias(D);
  for (float& v : pixels) v = rng.normal();
  for (float& v : weight) v = rng.normal();
  for (float& v : bias) v = rng.normal();
  const Tensor rows = patchify(Tensor::from_vector(pixels, {B, C, H, W}), P);
  ASSERT_EQ(rows.shape(), (Shape{B, Hp * Wp, C * P * P}));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t d = 0; d < D; ++d)
      for (int64_t py = 0; py < Hp; ++py)
        for (int64_t px = 0; px < Wp; ++px) {
          double conv = bias[d], linear = bias[d];  // Conv2d(C, D, kernel P, stride P) vs. rows @ weight.view(D, -1)^T
          for (int64_t c = 0; c < C; ++c)
            for (int64_t dy = 0; dy < P; ++dy)
              for (int64_t dx = 0; dx < P; ++dx)
                conv += double(weight[((d * C + c) * P + dy) * P + dx]) *
                        pixels[((b * C + c) * H + py * P + dy) * W + px * P + dx];
          for (int64_t k = 0; k < C * P * P; ++k)
            linear += double(weight[d * C * P * P + k]) * rows.item((b * Hp * Wp + py * Wp + px) * C * P * P + k);
          EXPECT_NEAR(linear, conv, 1e-9) << "b " << b << " d " << d << " patch " << py << "," << px;
        }
  EXPECT_THROW(patchify(Tensor::zeros({1, 1, 6, 8}, DType::F32), 4), Error);
  EXPECT_THROW(patchify(Tensor::zeros({1, 6, 8}, DType::F32), 2), Error);
}

TEST(ImageLoader, PatchOptionEqualsPatchifyOfImages) {
  auto data = traced_dataset(9, 2, 6, 6, 3);
  ImageLoaderOptions o = identity_options(LoaderMode::kTrain, 4);
  o.mean = {0.1f, 0.2f};
  o.std = {0.5f, 0.25f};
  ImageLoader images(data, o);
  o.patch_size = 3;
  ImageLoader patches(data, o);
  EXPECT_EQ(patches.input_shape(), (Shape{4, 4, 18}));
  for (int step = 0; step < 4; ++step) {
    ImageBatch a, b;
    ASSERT_TRUE(images.next(a));
    ASSERT_TRUE(patches.next(b));
    EXPECT_EQ(patchify(a.inputs, 3).to_vector(), b.inputs.to_vector()) << "step " << step;
    EXPECT_EQ(a.labels.to_vector(), b.labels.to_vector());
  }
  o.patch_size = 4;
  EXPECT_THROW(ImageLoader(data, o), Error);
}

TEST(ImageLoader, NormalisesPerChannel) {
  auto data = traced_dataset(3, 2, 3, 5, 9);
  ImageLoaderOptions o = identity_options(LoaderMode::kEval, 3);
  o.mean = {0.25f, 0.5f};
  o.std = {0.5f, 2.0f};
  ImageLoader loader(data, o);
  ImageBatch b;
  ASSERT_TRUE(loader.next(b));
  ASSERT_EQ(b.inputs.shape(), (Shape{3, 2, 3, 5}));
  for (int64_t i = 0; i < b.inputs.numel(); ++i) {
    const int64_t c = (i / 15) % 2;
    const double expected = (data->pixels[i] / 255.0 - o.mean[c]) / o.std[c];
    EXPECT_NEAR(b.inputs.item(i), expected, 1e-6) << "element " << i;
  }
  for (int64_t i = 0; i < 3; ++i) EXPECT_EQ(b.labels.item(i), data->labels[i]);
}

TEST(ImageLoader, DefaultsToFashionMnistStatistics) {
  auto data = traced_dataset(2, 1, 4, 4, 10);
  ImageLoaderOptions o;
  o.mode = LoaderMode::kEval;
  o.batch_size = 2;
  ImageLoader loader(data, o);
  ImageBatch b;
  ASSERT_TRUE(loader.next(b));
  for (int64_t i = 0; i < b.inputs.numel(); ++i)
    EXPECT_NEAR(b.inputs.item(i), (data->pixels[i] / 255.0 - 0.2860) / 0.3530, 1e-5);
  // Multi-channel data needs explicit statistics; mismatched counts and non-positive std are errors.
  auto rgb = traced_dataset(2, 3, 4, 4, 11);
  EXPECT_THROW(ImageLoader(rgb, o), Error);
  o.mean = {0.5f, 0.5f};
  o.std = {0.2f};
  EXPECT_THROW(ImageLoader(rgb, o), Error);
  o.mean = {0.5f};
  o.std = {0.0f};
  EXPECT_THROW(ImageLoader(rgb, o), Error);
  o.std = {0.2f};
  EXPECT_NO_THROW(ImageLoader(rgb, o));
}

TEST(ImageLoader, BilinearResizeByHand) {
  // 2x2 -> 4x4, half-pixel centres: source x = -0.25, 0.25, 0.75, 1.25 -> clamped weights 0, .25, .75, 1.
  const Tensor out = resize_bilinear(Tensor::from_vector({0, 1, 0, 1}, {1, 2, 2}), 4, 4);
  const std::vector<float> row = {0.0f, 0.25f, 0.75f, 1.0f};
  for (int64_t y = 0; y < 4; ++y)
    for (int64_t x = 0; x < 4; ++x) EXPECT_FLOAT_EQ(out.item(y * 4 + x), row[x]) << y << "," << x;
  // Same size is the identity; the loader resizes only when asked for another size.
  const Tensor img = Tensor::from_vector({1, 2, 3, 4, 5, 6}, {1, 2, 3});
  EXPECT_EQ(resize_bilinear(img, 2, 3).to_vector(), img.to_vector());

  auto data = traced_dataset(2, 1, 3, 3, 12);
  ImageLoaderOptions o = identity_options(LoaderMode::kEval, 2);
  o.image_size = 5;
  ImageLoader loader(data, o);
  EXPECT_EQ(loader.input_shape(), (Shape{2, 1, 5, 5}));
  ImageBatch b;
  ASSERT_TRUE(loader.next(b));
  const Tensor expected = resize_bilinear(Tensor::from_vector(image_as_float(*data, 1), {1, 3, 3}), 5, 5);
  expect_close(b.inputs.narrow0(1, 2).to_vector(), expected.to_vector(), "resized image 1");
}

TEST(ImageLoader, CropAndFlipByHand) {
  // in = [[1 2 3 4], [5 6 7 8], [9 10 11 12]], padding 1.
  const Tensor in = Tensor::from_vector({1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, {1, 3, 4});
  EXPECT_EQ(augment_image(in, {1, 1, false}, 1).to_vector(), in.to_vector());  // centre crop: identity
  EXPECT_EQ(augment_image(in, {1, 1, true}, 1).to_vector(),
            (std::vector<float>{4, 3, 2, 1, 8, 7, 6, 5, 12, 11, 10, 9}));
  EXPECT_EQ(augment_image(in, {1, 0, false}, 1).to_vector(),  // shifted right: zero column on the left
            (std::vector<float>{0, 1, 2, 3, 0, 5, 6, 7, 0, 9, 10, 11}));
  EXPECT_EQ(augment_image(in, {0, 2, true}, 1).to_vector(),  // shifted down, cropped right, then mirrored
            (std::vector<float>{0, 0, 0, 0, 0, 4, 3, 2, 0, 8, 7, 6}));
  EXPECT_EQ(augment_image(in, {2, 1, false}, 1).to_vector(),
            (std::vector<float>{5, 6, 7, 8, 9, 10, 11, 12, 0, 0, 0, 0}));
  EXPECT_THROW(augment_image(in, {3, 0, false}, 1), Error);
}

TEST(ImageLoader, TrainingRowsAreTheDrawnAugmentation) {
  auto data = traced_dataset(5, 2, 4, 6, 13);
  ImageLoaderOptions o = identity_options(LoaderMode::kTrain, 5);
  o.shuffle = false;
  o.crop_padding = 2;
  o.seed = 77;
  ImageLoader loader(data, o);
  for (int64_t epoch = 0; epoch < 2; ++epoch) {
    ImageBatch b;
    ASSERT_TRUE(loader.next(b));
    for (int64_t i = 0; i < 5; ++i) {
      const Augmentation a = draw_augmentation(77, epoch, i, 2, true);
      const Tensor expected = augment_image(Tensor::from_vector(image_as_float(*data, i), {2, 4, 6}), a, 2);
      expect_close(b.inputs.narrow0(i, i + 1).to_vector(), expected.to_vector(),
                   "epoch " + std::to_string(epoch) + " image " + std::to_string(i));
    }
  }
}

TEST(ImageLoader, AugmentationDrawsAreDeterministicAndSpread) {
  int flips = 0;
  std::set<int64_t> offsets_y, offsets_x;
  int differ_epoch = 0, differ_seed = 0;
  for (int64_t i = 0; i < 2000; ++i) {
    const Augmentation a = draw_augmentation(5, 3, i, 2, true), again = draw_augmentation(5, 3, i, 2, true);
    EXPECT_TRUE(a.crop_y == again.crop_y && a.crop_x == again.crop_x && a.flip == again.flip);
    const Augmentation next_epoch = draw_augmentation(5, 4, i, 2, true), other_seed = draw_augmentation(6, 3, i, 2, true);
    differ_epoch += next_epoch.crop_y != a.crop_y || next_epoch.crop_x != a.crop_x || next_epoch.flip != a.flip;
    differ_seed += other_seed.crop_y != a.crop_y || other_seed.crop_x != a.crop_x || other_seed.flip != a.flip;
    flips += a.flip;
    offsets_y.insert(a.crop_y);
    offsets_x.insert(a.crop_x);
    EXPECT_FALSE(draw_augmentation(5, 3, i, 2, false).flip);
    const Augmentation no_pad = draw_augmentation(5, 3, i, 0, true);
    EXPECT_EQ(no_pad.crop_y, 0);
    EXPECT_EQ(no_pad.crop_x, 0);
  }
  EXPECT_GT(flips, 900);  // p = 0.5 over 2000 draws
  EXPECT_LT(flips, 1100);
  EXPECT_EQ(offsets_y, (std::set<int64_t>{0, 1, 2, 3, 4}));
  EXPECT_EQ(offsets_x, (std::set<int64_t>{0, 1, 2, 3, 4}));
  EXPECT_GT(differ_epoch, 1800);  // identical by chance with p = 1/50
  EXPECT_GT(differ_seed, 1800);
}

// Concatenated rows and labels of `steps` training batches.
std::pair<std::vector<float>, std::vector<float>> train_stream(std::shared_ptr<ImageDataset> data,
                                                               ImageLoaderOptions o, int steps) {
  ImageLoader loader(data, o);
  std::vector<float> rows, labels;
  for (int s = 0; s < steps; ++s) {
    ImageBatch b;
    EXPECT_TRUE(loader.next(b));
    EXPECT_EQ(b.valid, o.batch_size);
    const std::vector<float> r = b.inputs.to_vector(), l = b.labels.to_vector();
    rows.insert(rows.end(), r.begin(), r.end());
    labels.insert(labels.end(), l.begin(), l.end());
  }
  return {rows, labels};
}

TEST(ImageLoader, SamplesIndependentOfBatchingAndThreads) {
  auto data = traced_dataset(12, 1, 5, 5, 14);
  ImageLoaderOptions o = identity_options(LoaderMode::kTrain, 4);
  o.seed = 3;
  const auto reference = train_stream(data, o, 6);  // 24 samples: two epochs
  o.batch_size = 3;
  o.threads = 3;
  const auto rebatched = train_stream(data, o, 8);
  EXPECT_EQ(rebatched.first, reference.first);
  EXPECT_EQ(rebatched.second, reference.second);
  o.seed = 4;
  EXPECT_NE(train_stream(data, o, 8).first, reference.first);
}

TEST(ImageLoader, ShufflesDeterministicallyPerEpoch) {
  const std::vector<int64_t> p = epoch_permutation(50, 9, 0);
  std::vector<int64_t> sorted = p;
  std::sort(sorted.begin(), sorted.end());
  for (int64_t i = 0; i < 50; ++i) EXPECT_EQ(sorted[i], i);
  EXPECT_EQ(epoch_permutation(50, 9, 0), p);
  EXPECT_NE(epoch_permutation(50, 9, 1), p);
  EXPECT_NE(epoch_permutation(50, 10, 0), p);

  auto data = traced_dataset(10, 1, 2, 2, 15);
  ImageLoaderOptions o = identity_options(LoaderMode::kTrain, 5);
  o.crop_padding = 0;
  o.horizontal_flip = false;
  o.seed = 9;
  ImageLoader loader(data, o);
  for (int64_t epoch = 0; epoch < 3; ++epoch) {
    std::vector<int64_t> seen;
    for (int half = 0; half < 2; ++half) {
      ImageBatch b;
      ASSERT_TRUE(loader.next(b));
      for (int64_t i : traced_indices(b)) seen.push_back(i);
    }
    EXPECT_EQ(seen, epoch_permutation(10, 9, epoch)) << "epoch " << epoch;
  }
  o.shuffle = false;
  ImageLoader in_order(data, o);
  ImageBatch b;
  ASSERT_TRUE(in_order.next(b));
  EXPECT_EQ(traced_indices(b), (std::vector<int64_t>{0, 1, 2, 3, 4}));
}

TEST(ImageLoader, RankSplitsAreDisjointAndCovering) {
  auto data = traced_dataset(23, 1, 2, 2, 16);
  for (LoaderMode mode : {LoaderMode::kTrain, LoaderMode::kEval}) {
    for (int world : {1, 3}) {
      std::vector<int64_t> seen;
      std::vector<int64_t> batches_per_rank;
      for (int rank = 0; rank < world; ++rank) {
        ImageLoaderOptions o = identity_options(mode, 4);
        o.crop_padding = 0;
        o.horizontal_flip = false;
        o.rank = rank;
        o.world = world;
        ImageLoader loader(data, o);
        int64_t batches = 0;
        if (mode == LoaderMode::kTrain) {
          EXPECT_EQ(loader.samples_per_epoch(), 23 / world);
          for (int64_t k = 0; k < loader.samples_per_epoch(); ++k) seen.push_back(loader.sample_index(1, k));
        } else {
          ImageBatch b;
          while (loader.next(b)) {
            ++batches;
            for (int64_t i : traced_indices(b)) seen.push_back(i);
          }
          batches_per_rank.push_back(batches);
        }
      }
      std::set<int64_t> unique(seen.begin(), seen.end());
      EXPECT_EQ(unique.size(), seen.size()) << "ranks overlap, world " << world;
      if (mode == LoaderMode::kEval) {
        EXPECT_EQ(seen.size(), 23u) << "eval must cover the whole set, world " << world;
        EXPECT_EQ(std::set<int64_t>(batches_per_rank.begin(), batches_per_rank.end()).size(), 1u);
      } else {
        EXPECT_EQ(seen.size(), static_cast<size_t>(23 / world * world));
        const std::vector<int64_t> order = epoch_permutation(23, 1337, 1);
        for (int64_t i : seen) EXPECT_LT(std::find(order.begin(), order.end(), i) - order.begin(), 23 / world * world);
      }
    }
  }
  ImageLoaderOptions o = identity_options(LoaderMode::kTrain, 4);
  o.world = 24;
  EXPECT_THROW(ImageLoader(data, o), Error);  // a rank would get no training image
  o.world = 2;
  o.rank = 2;
  EXPECT_THROW(ImageLoader(data, o), Error);
}

TEST(ImageLoader, EvalServesAllInOrderWithPartialBatch) {
  auto data = traced_dataset(10, 1, 3, 3, 17);
  ImageLoaderOptions o = identity_options(LoaderMode::kEval, 4);
  ImageLoader loader(data, o);
  EXPECT_EQ(loader.eval_batches(), 3);
  std::vector<int64_t> seen;
  std::vector<ImageBatch> batches;
  ImageBatch b;
  while (loader.next(b)) batches.push_back(b);
  ASSERT_EQ(batches.size(), 3u);
  EXPECT_EQ(batches[0].valid, 4);
  EXPECT_EQ(batches[2].valid, 2);
  for (const ImageBatch& batch : batches) {
    EXPECT_EQ(batch.inputs.shape(), (Shape{4, 1, 3, 3}));
    for (int64_t i : traced_indices(batch)) seen.push_back(i);
  }
  EXPECT_EQ(seen, (std::vector<int64_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}));
  for (int64_t r = 0; r < 4; ++r) {
    const double expected_label = r < 2 ? data->labels[8 + r] : -1;
    EXPECT_EQ(batches[2].labels.item(r), expected_label);
  }
  for (int64_t i = 2 * 9; i < 4 * 9; ++i) EXPECT_EQ(batches[2].inputs.item(i), 0.0) << "padding element " << i;
  // No augmentation in eval: rows are the plain images.
  expect_close(batches[1].inputs.narrow0(0, 1).to_vector(), image_as_float(*data, 4), "eval image 4");
  loader.restart();
  ASSERT_TRUE(loader.next(b));
  EXPECT_EQ(b.inputs.to_vector(), batches[0].inputs.to_vector());
}

TEST(ImageLoader, ResumedPositionGivesIdenticalBatches) {
  auto data = traced_dataset(10, 1, 4, 4, 18);
  ImageLoaderOptions o = identity_options(LoaderMode::kTrain, 4);
  o.patch_size = 2;
  ImageLoader original(data, o);
  ImageBatch b;
  for (int s = 0; s < 2; ++s) ASSERT_TRUE(original.next(b));
  const std::string saved = original.position().dump();
  EXPECT_EQ(nlohmann::json::parse(saved), (nlohmann::json{{"epoch", 0}, {"index", 8}}));
  std::vector<std::vector<float>> expected;
  for (int s = 0; s < 4; ++s) {  // crosses into epochs 1 and 2
    ASSERT_TRUE(original.next(b));
    expected.push_back(b.inputs.to_vector());
    expected.push_back(b.labels.to_vector());
  }
  ImageLoader resumed(data, o);
  resumed.set_position(nlohmann::json::parse(saved));
  for (int s = 0; s < 4; ++s) {
    ASSERT_TRUE(resumed.next(b));
    EXPECT_EQ(b.inputs.to_vector(), expected[2 * s]) << "batch " << s;
    EXPECT_EQ(b.labels.to_vector(), expected[2 * s + 1]) << "batch " << s;
  }
  EXPECT_EQ(resumed.position(), original.position());
  EXPECT_THROW(resumed.set_position(nlohmann::json{{"epoch", 1}}), Error);
  EXPECT_THROW(resumed.set_position(nlohmann::json{{"epoch", 1}, {"index", 10}}), Error);
  EXPECT_THROW(resumed.set_position(nlohmann::json{{"epoch", "1"}, {"index", 0}}), Error);
}

TEST(ImageLoader, RejectsBadOptions) {
  auto data = traced_dataset(4, 1, 4, 4, 19);
  ImageLoaderOptions o = identity_options(LoaderMode::kTrain, 0);
  EXPECT_THROW(ImageLoader(data, o), Error);
  o.batch_size = 2;
  o.threads = 0;
  EXPECT_THROW(ImageLoader(data, o), Error);
  o.threads = 1;
  o.crop_padding = -1;
  EXPECT_THROW(ImageLoader(data, o), Error);
  o.crop_padding = 1;
  EXPECT_THROW(ImageLoader(nullptr, o), Error);
  data->labels[2] = 7;  // num_classes is 7
  EXPECT_THROW(ImageLoader(data, o), Error);
}

TEST(ImageLoader, LoadsFashionMnistTestSet) {
  const std::string dir = "/usr/share/datasets/fashion-mnist";
  const std::string images = dir + "/t10k-images-idx3-ubyte.gz", labels = dir + "/t10k-labels-idx1-ubyte.gz";
  if (!std::filesystem::exists(images) || !std::filesystem::exists(labels))
    GTEST_SKIP() << "Fashion-MNIST not installed (" << images << "); install the Debian package dataset-fashion-mnist";
  auto data = std::make_shared<ImageDataset>(load_idx_dataset(images, labels, 10));
  EXPECT_EQ(data->count, 10000);
  EXPECT_EQ(data->height, 28);
  EXPECT_EQ(data->width, 28);
  std::vector<int64_t> per_class(10);
  for (int32_t l : data->labels) {
    ASSERT_TRUE(l >= 0 && l < 10);
    ++per_class[l];
  }
  for (int64_t n : per_class) EXPECT_EQ(n, 1000);  // the test set is balanced
  ImageLoaderOptions o;
  o.mode = LoaderMode::kEval;
  o.batch_size = 4096;
  o.patch_size = 7;
  ImageLoader loader(data, o);
  ImageBatch b;
  int64_t served = 0;
  while (loader.next(b)) {
    EXPECT_EQ(b.inputs.shape(), (Shape{4096, 16, 49}));
    served += b.valid;
  }
  EXPECT_EQ(served, 10000);
}

}  // namespace
}  // namespace loom
