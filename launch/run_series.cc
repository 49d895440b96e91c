#include "launch/run_series.h"

#include <sys/stat.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>

#include "core/config.h"

namespace loom {
namespace {

constexpr double kGap = std::numeric_limits<double>::quiet_NaN();

// Column name and where a metrics.jsonl step record keeps it (trainer/trainer.cc).
struct Column {
  const char* name;
  const char* pointer;
};
const Column kColumns[] = {
    {"time", "/time"},
    {"loss", "/loss"},
    {"lr", "/lr"},
    {"grad_norm", "/grad_norm"},
    {"tokens_per_s", "/tokens_per_s"},
    {"samples_per_s", "/samples_per_s"},
    {"mfu", "/mfu"},
    {"step_ms", "/ms_per_step"},
    {"data_ms", "/time_ms/data"},
    {"forward_ms", "/time_ms/forward"},
    {"backward_ms", "/time_ms/backward"},
    {"grad_sync_ms", "/time_ms/grad_sync"},
    {"optimizer_ms", "/time_ms/optimizer"},
    {"communication_ms", "/time_ms/communication"},
    {"exposed_communication_ms", "/time_ms/exposed_communication"},
    {"device_bytes", "/memory/device_bytes"},
    {"device_peak_bytes", "/memory/device_peak_bytes"},
    {"host_rss_bytes", "/memory/host_rss_bytes"},
    {"predicted_ms", "/prune/predicted_ms"},
    {"parameters", "/prune/parameters"},
};

double number_at(const nlohmann::json& record, const char* pointer) {
  const nlohmann::json::json_pointer p(pointer);
  if (!record.contains(p)) return kGap;
  const nlohmann::json& v = record.at(p);
  return v.is_number() ? v.get<double>() : kGap;
}

nlohmann::json number_or_null(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(); }

}  // namespace

const std::vector<std::string>& RunSeries::column_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> n;
    for (const Column& c : kColumns) n.push_back(c.name);
    return n;
  }();
  return names;
}

void RunSeries::add(const nlohmann::json& r) {
  if (!r.is_object() || !r.contains("step") || !r["step"].is_number_integer()) return;
  const int64_t step = r["step"].get<int64_t>();
  const double time = number_at(r, "/time");
  if (r.contains("event")) {
    events_.push_back({{"step", step},
                       {"time", number_or_null(time)},
                       {"event", r["event"]},
                       {"checkpoint", r.value("checkpoint", "")}});
    return;
  }
  if (columns_.empty()) columns_.resize(std::size(kColumns));
  steps_.push_back(step);
  for (size_t i = 0; i < std::size(kColumns); ++i) columns_[i].push_back(number_at(r, kColumns[i].pointer));
  if (r.contains("val_loss")) {
    val_["step"].push_back(step);
    val_["time"].push_back(number_or_null(time));
    val_["loss"].push_back(number_or_null(number_at(r, "/val_loss")));
    val_["accuracy"].push_back(number_or_null(number_at(r, "/val_accuracy")));
  }
  const nlohmann::json::json_pointer widths("/prune/widths");
  if (r.contains(widths)) {
    nlohmann::json w = r.at(widths);
    w["step"] = step;
    if (first_widths_.is_null()) first_widths_ = w;
    last_widths_ = std::move(w);
  }
}

void RunSeries::add(const controller::MetricsReport& m) {
  const auto& t = m.step_times();
  nlohmann::json r = {{"step", m.step()},
                      {"time", m.unix_time()},
                      {"loss", m.loss()},
                      {"lr", m.lr()},
                      {"grad_norm", m.grad_norm()},
                      {"tokens_per_s", m.tokens_per_s()},
                      {"mfu", m.mfu()},
                      {"ms_per_step", t.total_ms()},
                      {"time_ms",
                       {{"data", t.data_ms()},
                        {"forward", t.forward_ms()},
                        {"backward", t.backward_ms()},
                        {"grad_sync", t.grad_sync_ms()},
                        {"optimizer", t.optimizer_ms()},
                        {"communication", t.communication_ms()},
                        {"exposed_communication", t.exposed_communication_ms()}}},
                      {"memory", {{"device_bytes", m.device_bytes_in_use()}, {"host_rss_bytes", m.host_rss_bytes()}}}};
  if (m.has_val_loss()) r["val_loss"] = m.val_loss();
  add(r);
}

nlohmann::json RunSeries::to_json(size_t max_points) const {
  // Evenly spaced points, always with the newest: a chart a few hundred pixels wide shows no more, and the
  // page refreshes every second.
  const size_t n = steps_.size();
  const size_t stride = n <= max_points || max_points == 0 ? 1 : (n + max_points - 1) / max_points;
  std::vector<size_t> picked;
  for (size_t i = n == 0 ? 0 : (n - 1) % stride; i < n; i += stride) picked.push_back(i);
  nlohmann::json series = nlohmann::json::object();
  nlohmann::json& steps = series["step"] = nlohmann::json::array();
  for (size_t i : picked) steps.push_back(steps_[i]);
  for (size_t c = 0; c < std::size(kColumns); ++c) {
    nlohmann::json& column = series[kColumns[c].name] = nlohmann::json::array();
    for (size_t i : picked) column.push_back(number_or_null(columns_[c][i]));
  }
  nlohmann::json out = {{"series", std::move(series)}, {"val", val_}, {"events", events_}};
  if (!last_widths_.is_null()) out["widths"] = {{"first", first_widths_}, {"last", last_widths_}};
  return out;
}

bool MetricsFileTail::update() {
  struct stat st {};
  if (::stat(path_.c_str(), &st) != 0) return false;
  if (st.st_ino != inode_ || st.st_size < offset_) {  // replaced (rewound) or truncated: start over
    series_.clear();
    inode_ = st.st_ino;
    offset_ = 0;
    partial_.clear();
  }
  if (st.st_size == offset_) return true;
  std::ifstream in(path_, std::ios::binary);
  if (!in) return false;
  in.seekg(offset_);
  std::string chunk(static_cast<size_t>(st.st_size - offset_), '\0');
  in.read(chunk.data(), static_cast<std::streamsize>(chunk.size()));
  chunk.resize(static_cast<size_t>(in.gcount()));
  offset_ += static_cast<int64_t>(chunk.size());
  partial_ += chunk;
  size_t begin = 0;
  for (size_t end; (end = partial_.find('\n', begin)) != std::string::npos; begin = end + 1) {
    const nlohmann::json record =
        nlohmann::json::parse(partial_.begin() + static_cast<std::ptrdiff_t>(begin),
                              partial_.begin() + static_cast<std::ptrdiff_t>(end), nullptr, false);
    series_.add(record);
  }
  partial_.erase(0, begin);
  return true;
}

nlohmann::json run_folder_summary(const std::string& id, const std::string& dir) {
  nlohmann::json kind;  // null: unknown
  const std::string config = dir + "/config.yaml";
  if (std::filesystem::is_regular_file(config)) {
    try {
      kind = load_run_config(config).model().kind();
    } catch (const std::exception&) {
    }
  }
  std::string name = std::filesystem::path(dir).lexically_normal().filename().string();
  if (name.empty()) name = std::filesystem::path(dir).lexically_normal().parent_path().filename().string();
  return {{"id", id}, {"name", name.empty() ? dir : name}, {"dir", dir}, {"kind", kind}};
}

}  // namespace loom
