// TensorBoard event files: the CRC-32C against published check values, the TFRecord framing recomputed here
// from the format's definition, scalars written and read back, the file_version record first, and the reader
// rejecting every single-byte corruption and every cut inside a record.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <set>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "core/tensorboard_event.pb.h"
#include "core/tensorboard_writer.h"
#include "tests/common/test_util.h"

namespace loom {
namespace {

using testing::error_message;
using testing::TempDir;

std::string file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

uint32_t read_u32_le(const std::string& s, size_t at) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= static_cast<uint32_t>(static_cast<unsigned char>(s[at + i])) << (8 * i);
  return v;
}

double unix_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// The only file in `dir` (the writer creates exactly one).
std::string only_file(const std::string& dir) {
  std::vector<std::string> files;
  for (const auto& e : std::filesystem::directory_iterator(dir)) files.push_back(e.path().string());
  EXPECT_EQ(files.size(), 1u) << dir;
  return files.empty() ? "" : files[0];
}

// Writes steps 1..steps with three scalars each (loss decreasing, a large and a small value); returns the path.
std::string write_run(const std::string& dir, int steps) {
  TensorBoardWriter w(dir);
  for (int s = 1; s <= steps; ++s)
    w.write_scalars(s, {{"train/loss", 5.0 / s}, {"perf/tokens_per_s", 1.5e5 + s}, {"train/lr", 6e-4 * s / steps}});
  return w.path();
}

TEST(TensorBoardCrc32c, MatchesPublishedCheckValues) {
  // "123456789" is the standard CRC check input; the 32-byte vectors are RFC 3720 (iSCSI) appendix B.4.
  EXPECT_EQ(crc32c("123456789", 9), 0xE3069283u);
  std::vector<unsigned char> bytes(32, 0x00);
  EXPECT_EQ(crc32c(bytes.data(), bytes.size()), 0x8A9136AAu);
  std::fill(bytes.begin(), bytes.end(), 0xFF);
  EXPECT_EQ(crc32c(bytes.data(), bytes.size()), 0x62A8AB43u);
  for (int i = 0; i < 32; ++i) bytes[i] = static_cast<unsigned char>(i);
  EXPECT_EQ(crc32c(bytes.data(), bytes.size()), 0x46DD794Eu);
  for (int i = 0; i < 32; ++i) bytes[i] = static_cast<unsigned char>(31 - i);
  EXPECT_EQ(crc32c(bytes.data(), bytes.size()), 0x113FDB5Cu);
  EXPECT_EQ(crc32c("", 0), 0u);
}

TEST(TensorBoardCrc32c, MaskIsTheTfRecordRotation) {
  for (uint32_t crc : {0u, 1u, 0xE3069283u, 0xFFFFFFFFu, 0x80000000u}) {
    const uint32_t rotated = (crc >> 15) | (crc << 17);
    EXPECT_EQ(mask_crc32c(crc), static_cast<uint32_t>(rotated + 0xa282ead8u)) << crc;
  }
}

TEST(TensorBoardWriter, FileIsNamedAsTensorBoardExpectsAndStartsWithTheVersionRecord) {
  TempDir dir("tb");
  const double before = unix_now();
  const std::string path = write_run(dir / "nested/run", 0);
  const double after = unix_now();
  EXPECT_EQ(only_file(dir / "nested/run"), path);
  const std::string name = std::filesystem::path(path).filename().string();
  const std::string prefix = "events.out.tfevents.";
  ASSERT_EQ(name.rfind(prefix, 0), 0u) << name;
  const std::string rest = name.substr(prefix.size());
  const size_t dot = rest.find('.');
  ASSERT_NE(dot, std::string::npos) << name;
  const int64_t seconds = std::stoll(rest.substr(0, dot));
  EXPECT_GE(seconds, static_cast<int64_t>(before));
  EXPECT_LE(seconds, static_cast<int64_t>(after));
  EXPECT_FALSE(rest.substr(dot + 1).empty()) << "host name missing: " << name;

  // The framing, recomputed from the format's definition rather than through the reader.
  const std::string bytes = file_bytes(path);
  ASSERT_GE(bytes.size(), 16u);
  uint64_t length = 0;
  for (int i = 0; i < 8; ++i) length |= static_cast<uint64_t>(static_cast<unsigned char>(bytes[i])) << (8 * i);
  ASSERT_EQ(bytes.size(), 8 + 4 + length + 4) << "one record only";
  const auto masked = [](uint32_t c) { return static_cast<uint32_t>(((c >> 15) | (c << 17)) + 0xa282ead8u); };
  EXPECT_EQ(read_u32_le(bytes, 8), masked(crc32c(bytes.data(), 8)));
  EXPECT_EQ(read_u32_le(bytes, 12 + length), masked(crc32c(bytes.data() + 12, length)));

  tensorboard::Event event;
  ASSERT_TRUE(event.ParseFromString(bytes.substr(12, length)));
  EXPECT_EQ(event.what_case(), tensorboard::Event::kFileVersion);
  EXPECT_EQ(event.file_version(), "brain.Event:2");
  EXPECT_GE(event.wall_time(), before - 1);
  EXPECT_LE(event.wall_time(), after + 1);
  EXPECT_TRUE(read_tensorboard_scalars(path).empty());
}

TEST(TensorBoardWriter, ScalarsReadBack) {
  TempDir dir("tb");
  const double before = unix_now();
  TensorBoardWriter w(dir.path());
  // Values of every magnitude, including exact zero at step 0 (a proto3 zero outside a oneof would be dropped).
  PhiloxStream rng(31, 0);
  std::vector<std::vector<std::pair<std::string, double>>> written;
  for (int64_t step = 0; step < 7; ++step) {
    written.push_back({{"train/loss", step == 0 ? 0.0 : 10.0 / (step + 1) + rng.normal() * 1e-3},
                       {"perf/mfu", rng.uniform()},
                       {"perf/tokens_per_s", 4.65e5 * (1 + rng.uniform())},
                       {"train/grad_norm", std::pow(10.0, -6 + static_cast<double>(step))}});
    w.write_scalars(step * 10, written.back());
    // Flushed: the file holds the step before the writer is closed (a dashboard reads it live).
    EXPECT_EQ(read_tensorboard_scalars(w.path()).size(), 4 * written.size());
  }
  w.write_scalars(99, {});  // nothing written for an empty list
  const double after = unix_now();

  const std::vector<TensorBoardScalar> got = read_tensorboard_scalars(w.path());
  ASSERT_EQ(got.size(), 4 * written.size());
  size_t k = 0;
  for (size_t s = 0; s < written.size(); ++s) {
    for (const auto& [tag, value] : written[s]) {
      const TensorBoardScalar& g = got[k++];
      EXPECT_EQ(g.step, static_cast<int64_t>(s) * 10);
      EXPECT_EQ(g.tag, tag);
      EXPECT_EQ(g.value, static_cast<float>(value)) << tag << " at step " << g.step;
      EXPECT_NEAR(g.value, value, 1e-7 * std::fabs(value)) << tag;
      EXPECT_GE(g.wall_time, before - 1);
      EXPECT_LE(g.wall_time, after + 1);
    }
  }
  // Wall times never go backwards along the file.
  for (size_t i = 1; i < got.size(); ++i) EXPECT_GE(got[i].wall_time, got[i - 1].wall_time);
}

TEST(TensorBoardWriter, NonFiniteValuesAndNegativeStepsSurvive) {
  TempDir dir("tb");
  TensorBoardWriter w(dir.path());
  w.write_scalars(-3, {{"a", std::numeric_limits<double>::quiet_NaN()},
                       {"b", std::numeric_limits<double>::infinity()},
                       {"c", 1e300}});  // beyond float: becomes +inf, as TensorBoard stores f32
  const auto got = read_tensorboard_scalars(w.path());
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(got[0].step, -3);
  EXPECT_TRUE(std::isnan(got[0].value));
  EXPECT_EQ(got[1].value, std::numeric_limits<float>::infinity());
  EXPECT_EQ(got[2].value, std::numeric_limits<float>::infinity());
}

TEST(TensorBoardWriter, TwoWritersInOneDirectoryGetTheirOwnFiles) {
  TempDir dir("tb");
  TensorBoardWriter a(dir.path()), b(dir.path()), c(dir.path());
  EXPECT_EQ(std::set<std::string>({a.path(), b.path(), c.path()}).size(), 3u);
  a.write_scalars(1, {{"x", 1}});
  b.write_scalars(1, {{"x", 2}});
  EXPECT_EQ(read_tensorboard_scalars(a.path()).at(0).value, 1.f);
  EXPECT_EQ(read_tensorboard_scalars(b.path()).at(0).value, 2.f);
  EXPECT_TRUE(read_tensorboard_scalars(c.path()).empty());
}

TEST(TensorBoardWriter, BadInputNamesTheFile) {
  TempDir dir("tb");
  TensorBoardWriter w(dir.path());
  const std::string msg = error_message([&] { w.write_scalars(1, {{"ok", 1}, {"", 2}}); });
  EXPECT_NE(msg.find(w.path()), std::string::npos) << msg;
  EXPECT_NE(msg.find("empty tag"), std::string::npos) << msg;

  // A directory that cannot be created: a regular file is in the way.
  const std::string blocker = dir.file("blocker", "x");
  const std::string msg2 = error_message([&] { TensorBoardWriter bad(blocker + "/run"); });
  EXPECT_NE(msg2.find(blocker), std::string::npos) << msg2;

  const std::string missing = dir / "missing.tfevents";
  const std::string msg3 = error_message([&] { read_tensorboard_scalars(missing); });
  EXPECT_NE(msg3.find(missing), std::string::npos) << msg3;
}

TEST(TensorBoardReader, EveryFlippedByteIsDetected) {
  TempDir dir("tb");
  const std::string path = write_run(dir / "run", 2);
  const std::string good = file_bytes(path);
  ASSERT_EQ(read_tensorboard_scalars(path).size(), 6u);
  const std::string bad = dir / "corrupt";
  for (size_t i = 0; i < good.size(); ++i) {
    for (unsigned char flip : {0x01, 0xFF}) {  // a single bit; the whole byte
      std::string bytes = good;
      bytes[i] = static_cast<char>(static_cast<unsigned char>(bytes[i]) ^ flip);
      write_bytes(bad, bytes);
      const std::string msg = error_message([&] { read_tensorboard_scalars(bad); });
      ASSERT_NE(msg.find(bad), std::string::npos) << "byte " << i << " ^ " << int{flip} << " undetected: " << msg;
      ASSERT_NE(msg.find("byte offset"), std::string::npos) << msg;
    }
  }
}

TEST(TensorBoardReader, EveryCutInsideARecordIsDetected) {
  TempDir dir("tb");
  const std::string path = write_run(dir / "run", 2);
  const std::string good = file_bytes(path);
  const std::vector<std::string> records = read_tfrecords(path);
  ASSERT_EQ(records.size(), 3u);  // version + 2 steps
  std::set<size_t> boundaries = {0};
  size_t end = 0;
  for (const auto& r : records) boundaries.insert(end += 8 + 4 + r.size() + 4);
  ASSERT_EQ(end, good.size());

  const std::string cut = dir / "cut";
  for (size_t size = 0; size < good.size(); ++size) {
    write_bytes(cut, good.substr(0, size));
    if (boundaries.count(size)) {
      // Between records the format cannot tell: the records before the cut read back.
      size_t n = 0;
      for (size_t b : boundaries) n += (b > 0 && b <= size);
      EXPECT_EQ(read_tfrecords(cut).size(), n) << "cut at " << size;
    } else {
      const std::string msg = error_message([&] { read_tfrecords(cut); });
      ASSERT_NE(msg.find(cut), std::string::npos) << "cut at " << size << " undetected: " << msg;
      ASSERT_NE(msg.find("truncated"), std::string::npos) << msg;
    }
  }
}

TEST(TensorBoardReader, ReportsTheOffsetOfTheBadRecord) {
  TempDir dir("tb");
  const std::string path = write_run(dir / "run", 2);
  std::string bytes = file_bytes(path);
  const std::vector<std::string> records = read_tfrecords(path);
  const size_t second = 8 + 4 + records[0].size() + 4;
  bytes[second + 12] ^= 0x10;  // first data byte of the second record
  write_bytes(path, bytes);
  const std::string msg = error_message([&] { read_tensorboard_scalars(path); });
  EXPECT_NE(msg.find("byte offset " + std::to_string(second) + ":"), std::string::npos) << msg;
  EXPECT_NE(msg.find("data CRC"), std::string::npos) << msg;
}

TEST(TensorBoardReader, RejectsARecordThatIsNotAnEvent) {
  // Valid framing around bytes that are not an Event: an unterminated varint field.
  TempDir dir("tb");
  const std::string data = "\x10\xff\xff";
  std::string bytes;
  for (int i = 0; i < 8; ++i) bytes.push_back(static_cast<char>(i == 0 ? data.size() : 0));
  const auto put_u32 = [&](uint32_t v) {
    for (int i = 0; i < 4; ++i) bytes.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  };
  put_u32(mask_crc32c(crc32c(bytes.data(), 8)));
  bytes += data;
  put_u32(mask_crc32c(crc32c(data.data(), data.size())));
  const std::string path = dir.file("events.out.tfevents.0.bad", bytes);
  ASSERT_EQ(read_tfrecords(path).size(), 1u);
  const std::string msg = error_message([&] { read_tensorboard_scalars(path); });
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  EXPECT_NE(msg.find("not an Event"), std::string::npos) << msg;
}

}  // namespace
}  // namespace loom
