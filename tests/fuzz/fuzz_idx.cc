// Fuzz target: IDX files, plain and gzip (core/idx.h).
//
// Input: byte 0 selects the mode, the rest is the file. Bit 0: read as images (0) or labels (1). Bit 1: gzip
// the rest first (so mutations of the header reach the parser through a valid gzip stream); otherwise the rest
// is the file as it is (plain IDX, or corrupt gzip from the .gz seeds). Properties: every read either throws
// loom::Error or returns arrays whose sizes agree with the header, and no read allocates more than the file
// can hold (the harness's -rss_limit_mb catches that).
#include <zlib.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "core/error.h"
#include "core/idx.h"
#include "fuzz_support.h"

namespace {

std::string gzip(std::string_view raw) {
  z_stream z{};
  // 15 + 16: a gzip (not zlib) wrapper.
  if (deflateInit2(&z, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK) std::abort();
  std::string out(deflateBound(&z, raw.size()) + 32, '\0');
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(raw.data()));
  z.avail_in = static_cast<uInt>(raw.size());
  z.next_out = reinterpret_cast<Bytef*>(out.data());
  z.avail_out = static_cast<uInt>(out.size());
  if (deflate(&z, Z_FINISH) != Z_STREAM_END) std::abort();
  out.resize(z.total_out);
  deflateEnd(&z);
  return out;
}

void require(bool ok, const char* what) {
  if (ok) return;
  std::fprintf(stderr, "fuzz_idx: %s\n", what);
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const int mode = data[0];
  const std::string_view rest = loom::fuzz::as_text(data + 1, size - 1);
  const loom::fuzz::MemoryFile file((mode & 2) ? std::string_view(gzip(rest)) : rest);
  try {
    if (mode & 1) {
      const std::vector<uint8_t> labels = loom::read_idx_labels(file.path(), 10);
      for (uint8_t label : labels) require(label < 10, "a label outside num_classes passed");
    } else {
      const loom::IdxImages images = loom::read_idx_images(file.path());
      require(images.rows > 0 && images.cols > 0 &&
                  static_cast<int64_t>(images.pixels.size()) == images.count * images.rows * images.cols,
              "accepted images disagree with their header");
    }
  } catch (const loom::Error&) {
  }
  return 0;
}
