#include "core/metrics_writer.h"

#include <cerrno>
#include <cstring>
#include <filesystem>

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

}  // namespace loom
