#include <gtest/gtest.h>
#include <sys/resource.h>
#include <zlib.h>

#include <cstdio>
#include <cstdlib>

#include <fstream>
#include <functional>
#include <initializer_list>
#include <iterator>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/idx.h"
#include "core/rng.h"
#include "tests/common/test_util.h"

namespace loom {
namespace {

IdxImages random_images(int64_t count, int64_t rows, int64_t cols, uint64_t seed) {
  IdxImages images{count, rows, cols, std::vector<uint8_t>(count * rows * cols)};
  PhiloxStream rng(seed, 0);
  for (uint8_t& p : images.pixels) p = static_cast<uint8_t>(rng.below(256));
  return images;
}

std::vector<uint8_t> random_labels(int64_t count, int num_classes, uint64_t seed) {
  std::vector<uint8_t> labels(count);
  PhiloxStream rng(seed, 1);
  for (uint8_t& l : labels) l = static_cast<uint8_t>(rng.below(num_classes));
  return labels;
}

std::vector<uint8_t> file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_bytes(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

// gzip-compresses `bytes` into `path` with zlib directly (independent of the code under test).
void write_gzip_bytes(const std::string& path, const std::vector<uint8_t>& bytes) {
  gzFile f = gzopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  if (!bytes.empty()) {
    ASSERT_EQ(gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size())), int(bytes.size()));
  }
  ASSERT_EQ(gzclose(f), Z_OK);
}

// Expects `fn` to throw loom::Error whose message contains every one of `parts`.
void expect_error(const std::function<void()>& fn, std::initializer_list<std::string> parts) {
  try {
    fn();
    ADD_FAILURE() << "no loom::Error thrown";
  } catch (const Error& e) {
    for (const std::string& part : parts)
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << "message: " << e.what() << "\nlacks: " << part;
  }
}

TEST(Idx, RoundTripsPlainAndGzip) {
  testing::TempDir dir;
  const IdxImages images = random_images(5, 3, 7, 11);
  const std::vector<uint8_t> labels = random_labels(5, 10, 12);
  for (const std::string suffix : {"", ".gz"}) {
    const std::string image_path = dir / ("images.idx" + suffix), label_path = dir / ("labels.idx" + suffix);
    write_idx_images(image_path, images);
    write_idx_labels(label_path, labels);
    const std::vector<uint8_t> raw = file_bytes(image_path);
    ASSERT_GE(raw.size(), 4u);
    if (suffix.empty()) {
      EXPECT_EQ(raw.size(), 16u + images.pixels.size());
      EXPECT_EQ(std::vector<uint8_t>(raw.begin(), raw.begin() + 4), (std::vector<uint8_t>{0, 0, 8, 3}));
      EXPECT_EQ(std::vector<uint8_t>(raw.begin() + 4, raw.begin() + 16),
                (std::vector<uint8_t>{0, 0, 0, 5, 0, 0, 0, 3, 0, 0, 0, 7}));
    } else {
      EXPECT_EQ(raw[0], 0x1f);  // gzip magic
      EXPECT_EQ(raw[1], 0x8b);
    }
    const IdxImages back = read_idx_images(image_path);
    EXPECT_EQ(back.count, 5);
    EXPECT_EQ(back.rows, 3);
    EXPECT_EQ(back.cols, 7);
    EXPECT_EQ(back.pixels, images.pixels);
    EXPECT_EQ(read_idx_labels(label_path, 10), labels);
    const IdxDataset both = read_idx_dataset(image_path, label_path, 10);
    EXPECT_EQ(both.images.pixels, images.pixels);
    EXPECT_EQ(both.labels, labels);
  }
}

TEST(Idx, ReadsGzipWrittenByZlibAndEmptySets) {
  testing::TempDir dir;
  const IdxImages images = random_images(3, 2, 2, 5);
  write_idx_images(dir / "plain", images);
  write_gzip_bytes(dir / "other.gz", file_bytes(dir / "plain"));
  EXPECT_EQ(read_idx_images(dir / "other.gz").pixels, images.pixels);

  write_idx_images(dir / "empty.gz", IdxImages{0, 28, 28, {}});
  const IdxImages empty = read_idx_images(dir / "empty.gz");
  EXPECT_EQ(empty.count, 0);
  EXPECT_EQ(empty.rows, 28);
  EXPECT_TRUE(empty.pixels.empty());
}

TEST(Idx, MissingFileIsNamed) {
  expect_error([] { read_idx_images("/nonexistent/dir/images.idx"); }, {"/nonexistent/dir/images.idx", "cannot open"});
}

TEST(Idx, WrongMagicIsNamed) {
  testing::TempDir dir;
  write_idx_labels(dir / "labels.gz", random_labels(4, 10, 1));
  write_idx_images(dir / "images", random_images(4, 2, 2, 2));
  expect_error([&] { read_idx_images(dir / "labels.gz"); }, {dir / "labels.gz", "wrong magic 0x00000801", "0x00000803"});
  expect_error([&] { read_idx_labels(dir / "images", 10); }, {dir / "images", "wrong magic 0x00000803", "0x00000801"});
  write_bytes(dir / "text", {'h', 'e', 'l', 'l', 'o', '\n'});
  expect_error([&] { read_idx_images(dir / "text"); }, {dir / "text", "wrong magic"});
}

TEST(Idx, TruncatedHeaderIsNamed) {
  testing::TempDir dir;
  write_bytes(dir / "two_bytes", {0, 0});
  expect_error([&] { read_idx_images(dir / "two_bytes"); }, {dir / "two_bytes", "truncated header"});
  write_bytes(dir / "short_dims", {0, 0, 8, 3, 0, 0, 0, 5, 0, 0});
  expect_error([&] { read_idx_images(dir / "short_dims"); }, {dir / "short_dims", "truncated header", "10 of 16"});
  write_gzip_bytes(dir / "short_dims.gz", {0, 0, 8, 1, 0});
  expect_error([&] { read_idx_labels(dir / "short_dims.gz", 10); }, {dir / "short_dims.gz", "truncated header"});
  write_bytes(dir / "empty", {});
  expect_error([&] { read_idx_labels(dir / "empty", 10); }, {dir / "empty", "truncated header"});
}

TEST(Idx, TruncatedDataIsNamed) {
  testing::TempDir dir;
  write_idx_images(dir / "full", random_images(6, 5, 4, 3));
  std::vector<uint8_t> bytes = file_bytes(dir / "full");
  bytes.resize(bytes.size() - 7);
  write_bytes(dir / "cut", bytes);
  expect_error([&] { read_idx_images(dir / "cut"); }, {dir / "cut", "truncated data", "113 of 120"});
  write_gzip_bytes(dir / "cut.gz", bytes);
  expect_error([&] { read_idx_images(dir / "cut.gz"); }, {dir / "cut.gz", "truncated data"});

  // A gzip stream cut in the middle (the decompressed bytes may end anywhere, even inside the header).
  write_idx_images(dir / "big.gz", random_images(50, 8, 8, 4));
  std::vector<uint8_t> compressed = file_bytes(dir / "big.gz");
  compressed.resize(compressed.size() / 2);
  write_bytes(dir / "half.gz", compressed);
  expect_error([&] { read_idx_images(dir / "half.gz"); }, {dir / "half.gz", "gzip stream ends early"});

  write_idx_labels(dir / "labels", {1, 2, 3});
  std::vector<uint8_t> labels = file_bytes(dir / "labels");
  labels.pop_back();
  write_bytes(dir / "labels_cut", labels);
  expect_error([&] { read_idx_labels(dir / "labels_cut", 10); }, {dir / "labels_cut", "truncated data", "2 of 3"});
}

TEST(Idx, TrailingBytesAreAnError) {
  testing::TempDir dir;
  write_idx_labels(dir / "labels", {1, 2, 3});
  std::vector<uint8_t> bytes = file_bytes(dir / "labels");
  bytes.push_back(0);
  write_bytes(dir / "long", bytes);
  expect_error([&] { read_idx_labels(dir / "long", 10); }, {dir / "long", "unexpected bytes"});
}

TEST(Idx, ZeroImageSizeIsAnError) {
  testing::TempDir dir;
  write_bytes(dir / "flat", {0, 0, 8, 3, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 4});
  expect_error([&] { read_idx_images(dir / "flat"); }, {dir / "flat", "zero dimension"});
}

TEST(Idx, CountMismatchNamesBothFiles) {
  testing::TempDir dir;
  write_idx_images(dir / "images.gz", random_images(5, 2, 3, 6));
  write_idx_labels(dir / "labels.gz", random_labels(4, 10, 7));
  expect_error([&] { read_idx_dataset(dir / "images.gz", dir / "labels.gz", 10); },
               {dir / "images.gz", dir / "labels.gz", "5 images but 4 labels"});
}

TEST(Idx, LabelOutOfRangeIsNamed) {
  testing::TempDir dir;
  write_idx_labels(dir / "labels", {0, 9, 3, 10, 2});
  EXPECT_EQ(read_idx_labels(dir / "labels", 11).size(), 5u);
  expect_error([&] { read_idx_labels(dir / "labels", 10); }, {dir / "labels", "label 10 of item 3", "0..9"});
  expect_error([&] { read_idx_labels(dir / "labels", 0); }, {dir / "labels", "num_classes 0"});
  write_idx_images(dir / "images", random_images(5, 1, 1, 8));
  expect_error([&] { read_idx_dataset(dir / "images", dir / "labels", 10); }, {dir / "labels", "label 10"});
}

TEST(Idx, WriterRejectsInconsistentImages) {
  testing::TempDir dir;
  expect_error([&] { write_idx_images(dir / "bad", IdxImages{2, 3, 3, std::vector<uint8_t>(17)}); },
               {dir / "bad", "17 pixels"});
  expect_error([&] { write_idx_labels("/nonexistent/dir/labels", {1}); }, {"/nonexistent/dir/labels"});
}

}  // namespace
}  // namespace loom

namespace loom {
namespace {

std::vector<uint8_t> images_header(uint32_t count, uint32_t rows, uint32_t cols) {
  std::vector<uint8_t> header = {0, 0, 8, 3};
  for (uint32_t v : {count, rows, cols})
    for (int shift = 24; shift >= 0; shift -= 8) header.push_back(static_cast<uint8_t>(v >> shift));
  return header;
}

// A header announcing 6e6 Fashion-MNIST-sized images (4.7 GB) over one image of data: refused by comparing
// the announced size with what the file can hold, before anything is allocated or inflated.
TEST(Idx, HeaderAnnouncingMoreThanTheFileCanHoldIsRefusedUpFront) {
  testing::TempDir dir;
  std::vector<uint8_t> bytes = images_header(6'000'000, 28, 28);
  bytes.resize(bytes.size() + 28 * 28, 7);
  write_gzip_bytes(dir / "huge.gz", bytes);
  expect_error([&] { read_idx_images(dir / "huge.gz"); },
               {dir / "huge.gz", "announces 4704000000 data bytes, more than a gzip file of"});
  write_bytes(dir / "huge", bytes);
  expect_error([&] { read_idx_images(dir / "huge"); }, {dir / "huge", "truncated data (784 of 4704000000 bytes"});
}

// rows x cols of two uint32 dimensions used to overflow int64 (undefined; found by tests/fuzz/fuzz_idx) and
// let a 1-image file with 2^32-1 x 2^32-1 pixels and no data through.
TEST(Idx, HugeImageDimensionsAreRefusedWithoutOverflow) {
  testing::TempDir dir;
  write_bytes(dir / "wide", images_header(1, 0xffffffffu, 0xffffffffu));
  expect_error([&] { read_idx_images(dir / "wide"); }, {dir / "wide", "4294967295x4294967295 is implausibly large"});
  write_bytes(dir / "tall", images_header(1, (1u << 30) + 1, 1));
  expect_error([&] { read_idx_images(dir / "tall"); }, {dir / "tall", "is implausibly large"});
}

#if !defined(__SANITIZE_ADDRESS__)  // ASan reserves terabytes of shadow memory: an address-space limit breaks it
// In a death-test child: caps the address space 256 MB above its current size, reads `path` and exits 0 if
// that ends in a loom::Error naming the file and the lack of memory (printed to stderr), non-zero otherwise.
[[noreturn]] void read_images_under_memory_cap(const std::string& path) {
  std::ifstream status("/proc/self/status");
  int64_t vm_kb = -1;
  for (std::string line; std::getline(status, line);)
    if (line.rfind("VmSize:", 0) == 0) vm_kb = std::stoll(line.substr(7));
  const rlim_t limit = static_cast<rlim_t>(vm_kb + (256 << 10)) * 1024;
  const rlimit cap{limit, limit};
  if (vm_kb < 0 || setrlimit(RLIMIT_AS, &cap) != 0) std::_Exit(2);
  try {
    read_idx_images(path);
    std::_Exit(3);  // the cap did not bite: the test would prove nothing
  } catch (const Error& e) {
    const std::string message = e.what();
    std::fprintf(stderr, "%s\n", message.c_str());
    const bool named = message.find(path) != std::string::npos && message.find("out of memory") != std::string::npos;
    std::_Exit(named ? 0 : 4);
  } catch (const std::bad_alloc&) {
    std::_Exit(5);
  }
}

// A gzip file that really inflates to more than the memory available (384 MB of zeros from a ~0.4 MB file,
// within deflate's 1032:1 limit) ends in a loom::Error naming the file, not in a bare std::bad_alloc. The
// read runs in a child process with a capped address space.
TEST(Idx, RunningOutOfMemoryOnAHugeGzipStreamNamesTheFile) {
  testing::TempDir dir;
  const std::string path = dir / "bomb.gz";
  constexpr uint32_t kCount = 384, kSide = 1024;  // 384 images of 1 MB
  {
    gzFile f = gzopen(path.c_str(), "wb1R");  // run-length strategy: fast on zeros
    ASSERT_NE(f, nullptr);
    const std::vector<uint8_t> header = images_header(kCount, kSide, kSide);
    ASSERT_EQ(gzwrite(f, header.data(), header.size()), int(header.size()));
    const std::vector<uint8_t> image(size_t{kSide} * kSide, 0);
    for (uint32_t i = 0; i < kCount; ++i) ASSERT_EQ(gzwrite(f, image.data(), image.size()), int(image.size()));
    ASSERT_EQ(gzclose(f), Z_OK);
  }
  ASSERT_LT(file_bytes(path).size(), size_t{4} << 20);
  EXPECT_EXIT(read_images_under_memory_cap(path), ::testing::ExitedWithCode(0), "bomb.gz: out of memory after reading");
}
#endif

}  // namespace
}  // namespace loom
