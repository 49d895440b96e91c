#include "core/idx.h"

#include <sys/stat.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <new>

#include "core/error.h"

namespace loom {
namespace {

// An open gzFile, closed when the owner dies (reads through gzclose's result are checked by the callers).
struct GzCloser {
  void operator()(gzFile_s* f) const { gzclose(f); }
};
using GzFile = std::unique_ptr<gzFile_s, GzCloser>;

GzFile open_gz(const std::string& path, const char* mode, const char* verb) {
  // Only regular files are read: gzopen would wait forever on a FIFO without a writer.
  struct stat st {};
  if (mode[0] == 'r' && ::stat(path.c_str(), &st) == 0 && !S_ISREG(st.st_mode))
    fail("IDX file ", path, ": not a regular file");
  errno = 0;
  gzFile f = gzopen(path.c_str(), mode);
  if (!f) fail("IDX file ", path, ": cannot ", verb, " (", errno ? std::strerror(errno) : "zlib error", ")");
  gzbuffer(f, 1 << 17);
  return GzFile(f);
}

std::string gz_message(gzFile f) {
  int code = 0;
  const char* msg = gzerror(f, &code);
  return msg && *msg ? msg : "read error";
}

// Reads up to `bytes` bytes; returns how many arrived before end of file. Throws on a corrupt stream.
size_t read_some(gzFile f, uint8_t* dst, size_t bytes, const std::string& path) {
  size_t done = 0;
  while (done < bytes) {
    const unsigned chunk = static_cast<unsigned>(std::min<size_t>(bytes - done, 1u << 24));
    const int n = gzread(f, dst + done, chunk);
    if (n < 0) fail("IDX file ", path, ": corrupt or unreadable (", gz_message(f), ")");
    if (n == 0) {
      // zlib reports a gzip stream cut short as a soft error (Z_BUF_ERROR) and returns 0 like a clean EOF.
      int code = Z_OK;
      gzerror(f, &code);
      if (code == Z_BUF_ERROR) fail("IDX file ", path, ": the gzip stream ends early (truncated .gz file)");
      break;
    }
    done += static_cast<size_t>(n);
  }
  return done;
}

uint32_t big_endian_u32(const uint8_t* b) {
  return (uint32_t{b[0]} << 24) | (uint32_t{b[1]} << 16) | (uint32_t{b[2]} << 8) | uint32_t{b[3]};
}

// Reads the header of an IDX file with the expected magic and the number of dimensions it implies.
std::vector<int64_t> read_header(gzFile f, const std::string& path, uint32_t expected_magic, const char* kind) {
  const int ndim = static_cast<int>(expected_magic & 0xff);
  uint8_t header[4 * 4];
  const size_t magic_got = read_some(f, header, 4, path);
  if (magic_got < 4) fail("IDX file ", path, ": truncated header (", magic_got, " of 4 magic bytes)");
  const uint32_t magic = big_endian_u32(header);
  if (magic != expected_magic) {
    char got[16], want[16];
    std::snprintf(got, sizeof got, "0x%08x", magic);
    std::snprintf(want, sizeof want, "0x%08x", expected_magic);
    fail("IDX file ", path, ": wrong magic ", got, ", expected ", want, " for uint8 ", kind,
         " (is this the right file, and is it an IDX file?)");
  }
  const size_t dims_got = read_some(f, header + 4, 4 * ndim, path);
  if (dims_got < static_cast<size_t>(4 * ndim))
    fail("IDX file ", path, ": truncated header (", 4 + dims_got, " of ", 4 + 4 * ndim, " bytes)");
  std::vector<int64_t> dims(ndim);
  for (int i = 0; i < ndim; ++i) dims[i] = big_endian_u32(header + 4 + 4 * i);
  return dims;
}

int64_t file_size(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) fail("IDX file ", path, ": cannot stat (", std::strerror(errno), ")");
  return st.st_size;
}

// Checks the `count` data bytes a header announces against what the file can hold, before anything is
// allocated for them. A plain file holds exactly its size after the header. A gzip file inflates to at most
// 1032 times its size (deflate's largest expansion: a 258-byte match per 2 bits), which refuses a mutated
// header at once; within that bound the data is still only allocated as it arrives (see read_data).
void check_announced_size(gzFile f, const std::string& path, int64_t header_bytes, int64_t count) {
  constexpr int64_t kMaxDeflateExpansion = 1032;
  const int64_t bytes = file_size(path);
  if (gzdirect(f)) {
    const int64_t held = bytes - header_bytes;
    if (held < count) fail("IDX file ", path, ": truncated data (", held, " of ", count, " bytes after the header)");
    if (held > count)
      fail("IDX file ", path, ": unexpected bytes after the ", count, " data bytes the header announces (",
           held, " bytes follow the header)");
  } else if (count / kMaxDeflateExpansion > bytes) {
    fail("IDX file ", path, ": the header announces ", count, " data bytes, more than a gzip file of ", bytes,
         " bytes can hold (at most ", kMaxDeflateExpansion, " x ", bytes, " bytes inflated)");
  }
}

// Reads exactly `count` data bytes and checks nothing follows them. The vector grows as data arrives, so a
// gzip stream that ends early fails as "truncated" without the whole announced size ever being allocated;
// running out of memory on a (real) huge stream is an error naming the file, not a bare std::bad_alloc.
std::vector<uint8_t> read_data(gzFile f, const std::string& path, int64_t count) {
  constexpr int64_t kChunk = int64_t{1} << 24;
  std::vector<uint8_t> data;
  while (static_cast<int64_t>(data.size()) < count) {
    const size_t old = data.size();
    const size_t want = static_cast<size_t>(std::min(count - static_cast<int64_t>(old), kChunk));
    try {
      data.resize(old + want);
    } catch (const std::bad_alloc&) {
      fail("IDX file ", path, ": out of memory after reading ", old, " of the ", count,
           " data bytes the header announces");
    }
    const size_t got = read_some(f, data.data() + old, want, path);
    if (got < want)
      fail("IDX file ", path, ": truncated data (", old + got, " of ", count, " bytes after the header)");
  }
  uint8_t extra;
  if (read_some(f, &extra, 1, path) != 0)
    fail("IDX file ", path, ": unexpected bytes after the ", count, " data bytes the header announces");
  return data;
}

void write_all(gzFile f, const void* data, size_t bytes, const std::string& path) {
  const auto* p = static_cast<const uint8_t*>(data);
  while (bytes > 0) {
    const unsigned chunk = static_cast<unsigned>(std::min<size_t>(bytes, 1u << 24));
    if (gzwrite(f, p, chunk) != static_cast<int>(chunk)) fail("IDX file ", path, ": write failed (", gz_message(f), ")");
    p += chunk;
    bytes -= chunk;
  }
}

void write_file(const std::string& path, uint32_t magic, const std::vector<int64_t>& dims, const uint8_t* data,
                size_t bytes) {
  for (int64_t d : dims)
    if (d < 0 || d > 0xffffffffLL) fail("IDX file ", path, ": dimension ", d, " does not fit the format's uint32");
  const bool gzip = path.size() >= 3 && path.compare(path.size() - 3, 3, ".gz") == 0;
  // "T" asks zlib for transparent (uncompressed) writing, so one code path writes both kinds.
  GzFile f = open_gz(path, gzip ? "wb6" : "wbT", "open for writing");
  std::vector<uint8_t> header;
  auto put = [&](uint32_t v) {
    for (int shift = 24; shift >= 0; shift -= 8) header.push_back(static_cast<uint8_t>(v >> shift));
  };
  put(magic);
  for (int64_t d : dims) put(static_cast<uint32_t>(d));
  write_all(f.get(), header.data(), header.size(), path);
  write_all(f.get(), data, bytes, path);
  if (gzclose(f.release()) != Z_OK) fail("IDX file ", path, ": closing after writing failed");
}

}  // namespace

IdxImages read_idx_images(const std::string& path) {
  GzFile f = open_gz(path, "rb", "open");
  const std::vector<int64_t> dims = read_header(f.get(), path, kIdxImagesMagic, "images [count, rows, cols]");
  IdxImages images;
  images.count = dims[0];
  images.rows = dims[1];
  images.cols = dims[2];
  if (images.rows <= 0 || images.cols <= 0)
    fail("IDX file ", path, ": image size ", images.rows, "x", images.cols, " has a zero dimension");
  // Each factor is checked before the product is formed (two uint32 dimensions can overflow int64); then
  // count (< 2^32) x rows x cols (<= 2^30) fits int64 too.
  constexpr int64_t kMaxImageBytes = int64_t{1} << 30;
  if (images.rows > kMaxImageBytes || images.cols > kMaxImageBytes || images.rows * images.cols > kMaxImageBytes)
    fail("IDX file ", path, ": image size ", images.rows, "x", images.cols, " is implausibly large");
  const int64_t bytes = images.count * images.rows * images.cols;
  check_announced_size(f.get(), path, 4 + 4 * 3, bytes);
  images.pixels = read_data(f.get(), path, bytes);
  return images;
}

std::vector<uint8_t> read_idx_labels(const std::string& path, int num_classes) {
  if (num_classes < 1 || num_classes > 256)
    fail("IDX file ", path, ": num_classes ", num_classes, " is outside 1..256 (uint8 labels)");
  GzFile f = open_gz(path, "rb", "open");
  const std::vector<int64_t> dims = read_header(f.get(), path, kIdxLabelsMagic, "labels [count]");
  check_announced_size(f.get(), path, 4 + 4 * 1, dims[0]);
  std::vector<uint8_t> labels = read_data(f.get(), path, dims[0]);
  for (size_t i = 0; i < labels.size(); ++i)
    if (labels[i] >= num_classes)
      fail("IDX file ", path, ": label ", int{labels[i]}, " of item ", i, " is outside 0..", num_classes - 1,
           " (num_classes = ", num_classes, ")");
  return labels;
}

IdxDataset read_idx_dataset(const std::string& images_path, const std::string& labels_path, int num_classes) {
  IdxDataset data;
  data.images = read_idx_images(images_path);
  data.labels = read_idx_labels(labels_path, num_classes);
  if (static_cast<int64_t>(data.labels.size()) != data.images.count)
    fail("IDX files ", images_path, " and ", labels_path, " do not pair up: ", data.images.count, " images but ",
         data.labels.size(), " labels");
  return data;
}

void write_idx_images(const std::string& path, const IdxImages& images) {
  if (images.count < 0 || images.rows < 0 || images.cols < 0 ||
      static_cast<int64_t>(images.pixels.size()) != images.count * images.rows * images.cols)
    fail("IDX file ", path, ": cannot write ", images.count, "x", images.rows, "x", images.cols, " images from ",
         images.pixels.size(), " pixels");
  write_file(path, kIdxImagesMagic, {images.count, images.rows, images.cols}, images.pixels.data(),
             images.pixels.size());
}

void write_idx_labels(const std::string& path, const std::vector<uint8_t>& labels) {
  write_file(path, kIdxLabelsMagic, {static_cast<int64_t>(labels.size())}, labels.data(), labels.size());
}

}  // namespace loom
