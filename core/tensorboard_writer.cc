#include "core/tensorboard_writer.h"

#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/tensorboard_event.pb.h"

namespace loom {

namespace {

// CRC-32C is hand-written because no maintained library for it is available here: Debian has no
// libcrc32c-dev, zlib only has the IEEE CRC-32, and the installed abseil lacks absl/crc. Event files are a few
// bytes per step, so a byte-at-a-time table is plenty fast.
//
// Reflected CRC with polynomial 0x1EDC6F41 (reversed 0x82F63B78):
//   table[b] = the CRC register after shifting in byte b from zero, 8 times: r = (r >> 1) ^ (r & 1 ? poly : 0)
//   crc = ~0; for each byte: crc = table[(crc ^ byte) & 0xff] ^ (crc >> 8); result ~crc.
constexpr std::array<uint32_t, 256> make_crc32c_table() {
  std::array<uint32_t, 256> table{};
  for (uint32_t b = 0; b < 256; ++b) {
    uint32_t r = b;
    for (int k = 0; k < 8; ++k) r = (r >> 1) ^ ((r & 1u) ? 0x82F63B78u : 0u);
    table[b] = r;
  }
  return table;
}
constexpr std::array<uint32_t, 256> kCrc32cTable = make_crc32c_table();

constexpr char kFileVersion[] = "brain.Event:2";
constexpr size_t kHeaderBytes = 8 + 4;  // length, masked CRC of the length
constexpr size_t kFooterBytes = 4;      // masked CRC of the data

double unix_seconds_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

void put_le(std::string& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
uint64_t get_le(const char* p, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= static_cast<uint64_t>(static_cast<unsigned char>(p[i])) << (8 * i);
  return v;
}

std::string host_name() {
  char name[256] = {0};
  if (gethostname(name, sizeof name - 1) != 0 || name[0] == '\0') return "localhost";
  return name;
}

// One TFRecord: length, its masked CRC, the data, the data's masked CRC.
std::string tfrecord(const std::string& data) {
  std::string record;
  record.reserve(kHeaderBytes + data.size() + kFooterBytes);
  put_le(record, data.size(), 8);
  put_le(record, mask_crc32c(crc32c(record.data(), 8)), 4);
  record += data;
  put_le(record, mask_crc32c(crc32c(data.data(), data.size())), 4);
  return record;
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("TFRecord file ", path, ": cannot open: ", std::strerror(errno));
  std::string bytes{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  if (in.bad()) fail("TFRecord file ", path, ": read failed");
  return bytes;
}

// The records of `bytes` (the file `path`), both CRCs checked. With `stop_at_torn_end`, a record cut short by
// the end of the file (a crash mid-write) ends the list instead of throwing.
std::vector<std::string> parse_tfrecords(const std::string& bytes, const std::string& path, bool stop_at_torn_end) {
  std::vector<std::string> records;
  size_t offset = 0;
  while (offset < bytes.size()) {
    const size_t left = bytes.size() - offset;
    const char* p = bytes.data() + offset;
    if (left < kHeaderBytes) {
      if (stop_at_torn_end) break;
      fail("TFRecord file ", path, ": record at byte offset ", offset, ": truncated header (", left, " of ",
           kHeaderBytes, " bytes)");
    }
    if (static_cast<uint32_t>(get_le(p + 8, 4)) != mask_crc32c(crc32c(p, 8)))
      fail("TFRecord file ", path, ": record at byte offset ", offset, ": length CRC mismatch (corrupt file)");
    const uint64_t length = get_le(p, 8);
    if (length > left - kHeaderBytes || left - kHeaderBytes - length < kFooterBytes) {
      if (stop_at_torn_end) break;
      fail("TFRecord file ", path, ": record at byte offset ", offset, ": truncated (", length,
           " data bytes announced, ", left - kHeaderBytes, " bytes left including the CRC)");
    }
    const char* data = p + kHeaderBytes;
    if (static_cast<uint32_t>(get_le(data + length, 4)) != mask_crc32c(crc32c(data, length)))
      fail("TFRecord file ", path, ": record at byte offset ", offset, ": data CRC mismatch (corrupt file)");
    records.emplace_back(data, length);
    offset += kHeaderBytes + length + kFooterBytes;
  }
  return records;
}

}  // namespace

uint32_t crc32c(const void* data, size_t size) {
  const auto* p = static_cast<const unsigned char*>(data);
  uint32_t crc = 0xFFFFFFFFu;
  for (size_t i = 0; i < size; ++i) crc = kCrc32cTable[(crc ^ p[i]) & 0xffu] ^ (crc >> 8);
  return ~crc;
}

uint32_t mask_crc32c(uint32_t crc) { return ((crc >> 15) | (crc << 17)) + 0xa282ead8u; }

TensorBoardWriter::TensorBoardWriter(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) fail("TensorBoard directory ", dir, ": cannot create: ", ec.message());
  const double now = unix_seconds_now();
  const std::string base =
      dir + "/events.out.tfevents." + std::to_string(static_cast<int64_t>(now)) + "." + host_name();
  // "x": exclusive creation, so a second writer started in the same second gets its own file.
  for (int suffix = 0; !file_; ++suffix) {
    path_ = suffix == 0 ? base : base + "." + std::to_string(suffix);
    file_ = std::fopen(path_.c_str(), "wbx");
    if (!file_ && errno != EEXIST) fail("TensorBoard event file ", path_, ": cannot create: ", std::strerror(errno));
  }
  tensorboard::Event event;
  event.set_wall_time(now);
  event.set_file_version(kFileVersion);
  write_record(event.SerializeAsString());
  flush();
}

TensorBoardWriter::~TensorBoardWriter() {
  if (file_) std::fclose(file_);
}

void TensorBoardWriter::write_scalars(int64_t step, const std::vector<std::pair<std::string, double>>& scalars) {
  if (scalars.empty()) return;
  tensorboard::Event event;
  event.set_wall_time(unix_seconds_now());
  event.set_step(step);
  tensorboard::Summary* summary = event.mutable_summary();
  for (const auto& [tag, value] : scalars) {
    if (tag.empty()) fail("TensorBoard event file ", path_, ": empty tag for a scalar at step ", step);
    tensorboard::Summary::Value* v = summary->add_value();
    v->set_tag(tag);
    v->set_simple_value(static_cast<float>(value));
  }
  write_record(event.SerializeAsString());
  flush();
}

void TensorBoardWriter::flush() {
  if (std::fflush(file_) != 0) fail("TensorBoard event file ", path_, ": flush failed: ", std::strerror(errno));
}

void TensorBoardWriter::write_record(const std::string& data) {
  const std::string record = tfrecord(data);
  if (std::fwrite(record.data(), 1, record.size(), file_) != record.size())
    fail("TensorBoard event file ", path_, ": write failed: ", std::strerror(errno));
}

std::vector<std::string> read_tfrecords(const std::string& path) { return parse_tfrecords(read_bytes(path), path, false); }

std::vector<TensorBoardScalar> read_tensorboard_scalars(const std::string& path) {
  const std::vector<std::string> records = read_tfrecords(path);
  std::vector<TensorBoardScalar> scalars;
  size_t offset = 0;
  for (const std::string& record : records) {
    tensorboard::Event event;
    if (!event.ParseFromString(record))
      fail("TensorBoard event file ", path, ": record at byte offset ", offset, ": not an Event message");
    if (event.has_summary())
      for (const auto& v : event.summary().value())
        if (v.value_case() == tensorboard::Summary::Value::kSimpleValue)
          scalars.push_back({event.step(), v.tag(), v.simple_value(), event.wall_time()});
    offset += kHeaderBytes + record.size() + kFooterBytes;
  }
  return scalars;
}

int64_t rewind_tensorboard_events(const std::string& path, int64_t step) {
  const std::vector<std::string> records = parse_tfrecords(read_bytes(path), path, /*stop_at_torn_end=*/true);
  std::string kept;
  int64_t dropped = 0;
  for (const std::string& record : records) {
    tensorboard::Event event;
    if (!event.ParseFromString(record)) fail("TensorBoard event file ", path, ": a record is not an Event message");
    if (event.what_case() != tensorboard::Event::kFileVersion && event.step() > step) {
      ++dropped;
      continue;
    }
    kept += tfrecord(record);
  }
  write_file_atomically(path, kept);
  return dropped;
}

}  // namespace loom
