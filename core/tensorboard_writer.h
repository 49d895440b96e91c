// TensorBoard event files with scalar summaries, and a validating reader for them.
//
// Format (what TensorFlow's FileWriter writes and TensorBoard reads): a TFRecord file, each record
//   uint64 length (little-endian) | uint32 masked_crc32c(length bytes) | data | uint32 masked_crc32c(data)
// with masked_crc32c(x) = ((crc >> 15) | (crc << 17)) + 0xa282ead8 over the CRC-32C (Castagnoli) of x, and
// data a serialised Event (core/tensorboard_event.proto). The first record is an Event with file_version
// "brain.Event:2"; every later one holds one step's scalars.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

namespace loom {

// CRC-32C (Castagnoli polynomial, reflected, init and final xor 0xffffffff) of `size` bytes at `data`.
uint32_t crc32c(const void* data, size_t size);
// The TFRecord masking of a CRC-32C (so that a CRC stored inside CRC'd data does not look like data).
uint32_t mask_crc32c(uint32_t crc);

class TensorBoardWriter {
 public:
  // Creates `dir` (and parents) if needed and a new event file in it named
  // events.out.tfevents.<unix seconds>.<hostname> (".1", ".2", ... appended when that file already exists, so
  // two writers never share a file), then writes and flushes the file_version record.
  // Throws loom::Error naming the directory or file when it cannot be created or written.
  explicit TensorBoardWriter(const std::string& dir);
  ~TensorBoardWriter();
  TensorBoardWriter(const TensorBoardWriter&) = delete;
  TensorBoardWriter& operator=(const TensorBoardWriter&) = delete;

  // Appends one event at `step` holding every (tag, value) pair as a scalar (TensorBoard stores scalars as
  // f32: values are rounded to float; NaN and infinities are kept as such), stamped with the current wall time,
  // and flushes, so a running TensorBoard sees it at once. Tags name the chart ("train/loss": section "train").
  // Writes nothing when `scalars` is empty. Throws loom::Error naming the file on an empty tag or a write
  // failure.
  void write_scalars(int64_t step, const std::vector<std::pair<std::string, double>>& scalars);
  // Flushes buffered bytes to the operating system (write_scalars already does). Throws loom::Error on failure.
  void flush();
  // The event file's path.
  const std::string& path() const { return path_; }

 private:
  void write_record(const std::string& data);

  std::string path_;
  std::FILE* file_ = nullptr;
};

// One scalar read back from an event file.
struct TensorBoardScalar {
  int64_t step = 0;
  std::string tag;
  float value = 0;
  double wall_time = 0;  // seconds since the Unix epoch
};

// The data of every record of the TFRecord file at `path`, in order, after checking both CRCs of each.
// Throws loom::Error naming the file and the byte offset of the bad record when the file cannot be read, a CRC
// does not match, or the file ends inside a record (a file cut exactly between records reads as the records
// before the cut: the format cannot tell).
std::vector<std::string> read_tfrecords(const std::string& path);

// Rewinds the event file at `path` to `step` for a run that resumes there: keeps the file_version record and
// every event at or before `step`, drops the later ones (and a record torn by a crash at the end of the file),
// and replaces the file atomically (core/atomic_file.h), so no reader ever sees a step twice. Returns how
// many events were dropped. Throws loom::Error naming the file when it cannot be read or written, or holds a
// corrupt record before its end.
int64_t rewind_tensorboard_events(const std::string& path, int64_t step);

// Every scalar (Summary.Value with simple_value) of the event file at `path`, in file order. Validates the
// records as read_tfrecords does, and throws loom::Error naming the file and offset when a record is not an
// Event. Other kinds of values (images, histograms, ...) written by other tools are skipped.
std::vector<TensorBoardScalar> read_tensorboard_scalars(const std::string& path);

}  // namespace loom
