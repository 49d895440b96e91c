// IDX files: the MNIST / Fashion-MNIST array format (http://yann.lecun.com/exdb/mnist/).
//
// Layout: a 4-byte big-endian magic 0x0000TTNN (TT = element type, 0x08 = uint8; NN = number of dimensions),
// NN big-endian uint32 dimension sizes, then the elements in row-major order. Loom reads the two uint8 kinds
// used for image classification: images 0x00000803 [count, rows, cols] and labels 0x00000801 [count].
//
// Files may be plain or gzip-compressed; both are read through zlib's gzread, which passes plain files through
// unchanged, so the name's suffix does not matter when reading. Writing compresses when the path ends in ".gz".
//
// Errors: every function throws loom::Error naming the file and the reason (cannot open, wrong magic, truncated
// header, truncated data, trailing bytes, zero or absurd dimensions, label out of range, image/label count
// mismatch, out of memory). Memory: the data size a header announces is checked against the file before
// anything is allocated for it (a plain file must hold exactly that many bytes after the header; a gzip file
// can inflate to at most 1032 times its size), and gzip data is allocated only as it is inflated.
// Thread-safety: the functions share no state; call them from any thread.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace loom {

inline constexpr uint32_t kIdxImagesMagic = 0x00000803;
inline constexpr uint32_t kIdxLabelsMagic = 0x00000801;

// uint8 images [count, rows, cols], row-major: pixel (n, y, x) is pixels[(n * rows + y) * cols + x].
struct IdxImages {
  int64_t count = 0, rows = 0, cols = 0;
  std::vector<uint8_t> pixels;
};

// Images and their labels, checked to pair up (same count, labels < num_classes).
struct IdxDataset {
  IdxImages images;
  std::vector<uint8_t> labels;
};

// Reads an image file (magic 0x00000803). rows and cols must be positive; count may be zero.
IdxImages read_idx_images(const std::string& path);

// Reads a label file (magic 0x00000801) and checks every label is in [0, num_classes) (num_classes in 1..256).
std::vector<uint8_t> read_idx_labels(const std::string& path, int num_classes);

// Reads both files and checks they hold the same number of items; the error names both files.
IdxDataset read_idx_dataset(const std::string& images_path, const std::string& labels_path, int num_classes);

// Writes IDX files (gzip-compressed when `path` ends in ".gz"); used by tests and data-preparation tools.
// Throws if the images' sizes do not match pixels.size() or the file cannot be written.
void write_idx_images(const std::string& path, const IdxImages& images);
void write_idx_labels(const std::string& path, const std::vector<uint8_t>& labels);

}  // namespace loom
