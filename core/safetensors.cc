#include "core/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "core/atomic_file.h"

namespace loom::safetensors {

static_assert(std::endian::native == std::endian::little, "safetensors data is little-endian; so must the host be");

namespace {

constexpr const char* kMetadataKey = "__metadata__";
// Same bound as the reference (Rust) implementation: a larger header is certainly corrupt.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

// Owns a read-only file descriptor.
class InputFile {
 public:
  explicit InputFile(const std::string& path) : path_(path) {
    // O_NONBLOCK: opening a FIFO would otherwise wait for a writer; it changes nothing for regular files.
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd_ < 0) fail(path, ": cannot open: ", std::strerror(errno));
    struct stat st {};
    const bool stat_ok = ::fstat(fd_, &st) == 0;
    const std::string reason = stat_ok ? "" : std::strerror(errno);
    if (!stat_ok || !S_ISREG(st.st_mode)) {
      ::close(fd_);  // the destructor does not run for a constructor that throws
      if (!stat_ok) fail(path, ": cannot stat: ", reason);
      fail(path, ": not a regular file");
    }
    size_ = static_cast<uint64_t>(st.st_size);
  }
  ~InputFile() { ::close(fd_); }
  InputFile(const InputFile&) = delete;
  InputFile& operator=(const InputFile&) = delete;

  uint64_t size() const { return size_; }
  // Reads exactly `bytes` bytes at `offset` (callers have checked the range against size()).
  void read_at(void* dst, uint64_t bytes, uint64_t offset) const {
    char* p = static_cast<char*>(dst);
    while (bytes > 0) {
      const ssize_t n = ::pread(fd_, p, bytes, static_cast<off_t>(offset));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) fail(path_, ": read failed: ", std::strerror(errno));
      if (n == 0) fail(path_, ": truncated file (unexpected end of file at byte ", offset, ")");
      p += n;
      bytes -= static_cast<uint64_t>(n);
      offset += static_cast<uint64_t>(n);
    }
  }

 private:
  std::string path_;
  int fd_ = -1;
  uint64_t size_ = 0;
};

struct Entry {
  std::string name;
  DType dtype;
  Shape shape;
  uint64_t begin = 0, end = 0;
};

// Parses the header JSON, rejecting duplicate keys at any level (nlohmann would silently keep the last).
// Key order is kept: it orders zero-size tensors, which share their offset with a neighbour.
nlohmann::ordered_json parse_header_json(const std::string& text, const std::string& path) {
  std::vector<std::set<std::string>> keys_per_object;
  std::string duplicate;
  auto callback = [&](int /*depth*/, nlohmann::ordered_json::parse_event_t event, nlohmann::ordered_json& parsed) {
    using E = nlohmann::ordered_json::parse_event_t;
    if (event == E::object_start) keys_per_object.emplace_back();
    if (event == E::object_end) keys_per_object.pop_back();
    if (event == E::key && !keys_per_object.back().insert(parsed.get<std::string>()).second && duplicate.empty())
      duplicate = parsed.get<std::string>();
    return true;
  };
  nlohmann::ordered_json header;
  try {
    header = nlohmann::ordered_json::parse(text, callback);
  } catch (const nlohmann::json::exception& e) {
    fail(path, ": bad safetensors header JSON: ", e.what());
  }
  if (!duplicate.empty()) fail(path, ": bad safetensors header: duplicate key '", duplicate, "'");
  if (!header.is_object()) fail(path, ": bad safetensors header: expected a JSON object, got ", header.type_name());
  return header;
}

uint64_t checked_byte_size(const Shape& shape, DType dtype, const std::string& where) {
  uint64_t n = dtype_size(dtype);
  for (int64_t d : shape) {
    const uint64_t ud = static_cast<uint64_t>(d);
    if (ud != 0 && n > std::numeric_limits<uint64_t>::max() / ud)
      fail(where, ": shape ", shape_str(shape), " overflows");
    n *= ud;
  }
  return n;
}

Entry parse_entry(const std::string& name, const nlohmann::ordered_json& info, const std::string& path) {
  const std::string where = path + ": tensor '" + name + "'";
  if (!info.is_object()) fail(where, ": expected an object with dtype, shape and data_offsets, got ", info.type_name());
  for (const auto& [key, value] : info.items())
    if (key != "dtype" && key != "shape" && key != "data_offsets") fail(where, ": unknown field '", key, "'");
  for (const char* key : {"dtype", "shape", "data_offsets"})
    if (!info.contains(key)) fail(where, ": missing field '", key, "'");
  Entry e;
  e.name = name;
  if (!info["dtype"].is_string()) fail(where, ": dtype must be a string");
  e.dtype = dtype_from_string(info["dtype"].get<std::string>(), where);
  const auto& shape = info["shape"];
  if (!shape.is_array()) fail(where, ": shape must be an array");
  for (const auto& d : shape) {
    if (!d.is_number_unsigned()) fail(where, ": shape ", shape.dump(), " must hold non-negative integers");
    const uint64_t v = d.get<uint64_t>();
    if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) fail(where, ": dimension ", v, " too large");
    e.shape.push_back(static_cast<int64_t>(v));
  }
  const auto& offsets = info["data_offsets"];
  if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() ||
      !offsets[1].is_number_unsigned())
    fail(where, ": data_offsets must be two non-negative integers, got ", offsets.dump());
  e.begin = offsets[0].get<uint64_t>();
  e.end = offsets[1].get<uint64_t>();
  if (e.end < e.begin) fail(where, ": data_offsets ", offsets.dump(), " end before they begin");
  const uint64_t bytes = checked_byte_size(e.shape, e.dtype, where);
  if (e.end - e.begin != bytes)
    fail(where, ": data_offsets ", offsets.dump(), " span ", e.end - e.begin, " bytes but ", dtype_to_string(e.dtype),
         shape_str(e.shape), " needs ", bytes);
  return e;
}

}  // namespace

const char* dtype_to_string(DType dtype) {
  switch (dtype) {
    case DType::F32:
      return "F32";
    case DType::F64:
      return "F64";
    case DType::BF16:
      return "BF16";
    case DType::F16:
      return "F16";
    case DType::I32:
      return "I32";
    case DType::U16:
      return "U16";
  }
  fail("safetensors: unknown dtype ", static_cast<int>(dtype));
}

DType dtype_from_string(const std::string& name, const std::string& what) {
  for (DType t : {DType::F32, DType::F64, DType::BF16, DType::F16, DType::I32, DType::U16})
    if (name == dtype_to_string(t)) return t;
  static const std::set<std::string> kValidButUnsupported = {"BOOL", "U8",      "I8",      "I16",     "U32",
                                                             "I64",  "U64",     "F8_E4M3", "F8_E5M2", "F8_E8M0",
                                                             "F4",   "F6_E2M3", "F6_E3M2", "C64"};
  if (kValidButUnsupported.count(name))
    fail(what, ": unsupported dtype '", name, "' (supported: F32, F64, BF16, F16, I32, U16)");
  fail(what, ": unknown dtype '", name, "'");
}

void write(const std::string& path, const NamedTensors& tensors, const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header;
  if (!metadata.empty()) header[kMetadataKey] = metadata;
  std::set<std::string> names;
  std::vector<Tensor> host;
  uint64_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    LOOM_CHECK(!name.empty() && name != kMetadataKey, path, ": invalid tensor name '", name, "'");
    LOOM_CHECK(names.insert(name).second, path, ": duplicate tensor name '", name, "'");
    LOOM_CHECK(tensor.defined(), path, ": tensor '", name, "' is undefined");
    host.push_back(tensor.device().is_cpu() ? tensor : tensor.to(Device::cpu()));
    const uint64_t bytes = tensor.nbytes();
    header[name] = {{"dtype", dtype_to_string(tensor.dtype())},
                    {"shape", tensor.shape()},
                    {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text;
  try {
    text = header.empty() ? "{}" : header.dump();
  } catch (const nlohmann::json::exception& e) {
    fail(path, ": cannot encode safetensors header (names and metadata must be valid UTF-8): ", e.what());
  }
  text.append((8 - (8 + text.size()) % 8) % 8, ' ');  // data starts 8-byte aligned
  const uint64_t header_len = text.size();
  char len_bytes[8];
  std::memcpy(len_bytes, &header_len, 8);

  AtomicFileWriter out(path);
  out.write(len_bytes, 8);
  out.write(text);
  for (const Tensor& t : host) out.write(t.raw(), t.nbytes());
  out.commit();
}

File read(const std::string& path) {
  InputFile in(path);
  if (in.size() < 8) fail(path, ": truncated file: ", in.size(), " bytes, too short for a safetensors header");
  uint64_t header_len = 0;
  in.read_at(&header_len, 8, 0);
  if (header_len > in.size() - 8)
    fail(path, ": header length ", header_len, " exceeds the file size (", in.size(), " bytes)");
  if (header_len > kMaxHeaderBytes) fail(path, ": header length ", header_len, " exceeds the 100 MB limit");
  std::string text(header_len, '\0');
  in.read_at(text.data(), header_len, 8);
  if (text.empty() || text[0] != '{') fail(path, ": bad safetensors header JSON: it must start with '{'");
  const nlohmann::ordered_json header = parse_header_json(text, path);

  File file;
  std::vector<Entry> entries;
  for (const auto& [name, info] : header.items()) {
    if (name == kMetadataKey) {
      if (!info.is_object()) fail(path, ": __metadata__ must be an object of strings");
      for (const auto& [key, value] : info.items()) {
        if (!value.is_string()) fail(path, ": __metadata__ value for '", key, "' must be a string, got ", value.dump());
        file.metadata[key] = value.get<std::string>();
      }
      continue;
    }
    entries.push_back(parse_entry(name, info, path));
  }

  // Data must be packed in offset order: each tensor starts where the previous one ended.
  std::stable_sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t expected = 0;
  for (const Entry& e : entries) {
    if (e.begin != expected)
      fail(path, ": tensor '", e.name, "': data_offsets [", e.begin, ", ", e.end, "] ",
           e.begin < expected ? "overlap the previous tensor" : "leave a gap after the previous tensor",
           " (expected begin ", expected, ")");
    expected = e.end;
  }
  const uint64_t data_start = 8 + header_len;
  const uint64_t available = in.size() - data_start;
  if (expected > available)
    fail(path, ": truncated file: tensors need ", expected, " data bytes but only ", available, " follow the header");
  if (expected < available)
    fail(path, ": ", available - expected, " bytes after the last tensor are not covered by the header");

  for (const Entry& e : entries) {
    Tensor t = Tensor::empty(e.shape, e.dtype);
    if (e.end > e.begin) in.read_at(t.raw(), e.end - e.begin, data_start + e.begin);
    file.tensors.emplace_back(e.name, std::move(t));
  }
  return file;
}

}  // namespace loom::safetensors
