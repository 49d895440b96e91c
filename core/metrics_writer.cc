#include "core/metrics_writer.h"

#include <cerrno>
#include <cstring>
#include <filesystem>

#include <fstream>

#include "core/atomic_file.h"
#include "core/error.h"

namespace loom {

MetricsWriter::MetricsWriter(const std::string& path) : path_(path) {
  const auto parent = std::filesystem::path(path).parent_path();
  if (!parent.empty()) std::filesystem::create_directories(parent);
  file_ = std::fopen(path.c_str(), "a");
  if (!file_) fail("metrics file ", path, ": cannot open for appending: ", std::strerror(errno));
}

MetricsWriter::~MetricsWriter() {
  if (file_) std::fclose(file_);
}

void MetricsWriter::write(const nlohmann::json& record) {
  const std::string line = record.dump() + "\n";
  if (std::fwrite(line.data(), 1, line.size(), file_) != line.size() || std::fflush(file_) != 0)
    fail("metrics file ", path_, ": write failed: ", std::strerror(errno));
}

int64_t rewind_metrics_file(const std::string& path, int64_t step) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    if (!std::filesystem::exists(path)) return 0;
    fail("metrics file ", path, ": cannot open for reading: ", std::strerror(errno));
  }
  std::string kept;
  int64_t dropped = 0;
  for (std::string line; std::getline(in, line);) {
    const nlohmann::json record = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (record.is_object() && record.contains("step") && record["step"].is_number_integer() &&
        record["step"].get<int64_t>() <= step)
      kept += line + "\n";
    else
      ++dropped;
  }
  if (in.bad()) fail("metrics file ", path, ": read failed");
  in.close();
  write_file_atomically(path, kept);
  return dropped;
}

}  // namespace loom
