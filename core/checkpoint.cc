#include "core/checkpoint.h"

#include <fcntl.h>
#include <stdio.h>  // renameat2, RENAME_EXCHANGE (glibc, _GNU_SOURCE)
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <regex>
#include <set>
#include <sstream>

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/run_dir_lock.h"

namespace loom {
namespace {

namespace fs = std::filesystem;

constexpr const char* kModelFile = "model.safetensors";
constexpr const char* kOptimizerFile = "optimizer.safetensors";
constexpr const char* kStateFile = "state.json";
constexpr const char* kModelShapeFile = "model.json";
constexpr const char* kFormat = "loom-checkpoint-1";
constexpr int64_t kMaxStep = 99999999;  // eight digits in the directory name

std::string dir_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "ckpt_%08lld", static_cast<long long>(step));
  return buf;
}

// The step of a directory named ckpt_<8 digits>, or -1.
int64_t step_of(const std::string& name) {
  if (name.size() != 13 || name.compare(0, 5, "ckpt_") != 0) return -1;
  if (!std::all_of(name.begin() + 5, name.end(), [](char c) { return c >= '0' && c <= '9'; })) return -1;
  return std::stoll(name.substr(5));
}

bool is_complete(const fs::path& dir) {
  std::error_code ec;
  for (const char* f : {kModelFile, kOptimizerFile, kStateFile})
    if (!fs::is_regular_file(dir / f, ec)) return false;
  return true;
}

// Puts the new checkpoint `tmp` at `final_dir`. If final_dir already exists, the two are swapped in one
// atomic step (renameat2 RENAME_EXCHANGE) so the step's checkpoint is never missing, and the old one
// (now at `tmp`) is removed afterwards.
void move_into_place(const fs::path& tmp, const fs::path& final_dir) {
  if (::rename(tmp.c_str(), final_dir.c_str()) == 0) return;
  const int rename_errno = errno;
  if (rename_errno != ENOTEMPTY && rename_errno != EEXIST)
    fail(final_dir.string(), ": cannot rename ", tmp.string(), " into place: ", std::strerror(rename_errno));
  if (::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, final_dir.c_str(), RENAME_EXCHANGE) != 0)
    fail(final_dir.string(), ": cannot replace the existing checkpoint: ", std::strerror(errno));
}

// Parses JSON text, rejecting a key that appears twice in one object (nlohmann keeps the last one silently,
// so a hand-edited or corrupted state.json could say two things at once).
nlohmann::json parse_json_without_duplicate_keys(std::istream& in, const std::string& file) {
  struct Frame {
    std::set<std::string> keys;
    std::string current;
  };
  std::vector<Frame> objects;
  const auto path_to = [&](const std::string& key) {
    std::string path;
    for (size_t i = 0; i + 1 < objects.size(); ++i) path += objects[i].current + ".";
    return path + key;
  };
  using Event = nlohmann::json::parse_event_t;
  const nlohmann::json::parser_callback_t reject_duplicates = [&](int, Event event, nlohmann::json& parsed) {
    if (event == Event::object_start) {
      objects.emplace_back();
    } else if (event == Event::object_end) {
      if (!objects.empty()) objects.pop_back();
    } else if (event == Event::key && !objects.empty()) {
      const std::string key = parsed.get<std::string>();
      if (!objects.back().keys.insert(key).second) fail(file, ": duplicate key \"", path_to(key), "\"");
      objects.back().current = key;
    }
    return true;
  };
  try {
    return nlohmann::json::parse(in, reject_duplicates);
  } catch (const nlohmann::json::exception& e) {
    fail(file, ": bad JSON: ", e.what());
  }
}

nlohmann::json read_state(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) fail(file.string(), ": cannot open");
  const nlohmann::json state = parse_json_without_duplicate_keys(in, file.string());
  if (!state.is_object()) fail(file.string(), ": expected a JSON object");
  if (!state.contains("format") || state["format"] != kFormat)
    fail(file.string(), ": not a loom checkpoint (expected \"format\": \"", kFormat, "\")");
  if (!state.contains("step")) fail(file.string(), ": missing integer \"step\"");
  state_integer(state, "step", 0, kMaxStep, file.string());
  return state;
}

}  // namespace

std::string checkpoint_dir(const std::string& out_dir, int64_t step) {
  LOOM_CHECK(step >= 0 && step <= kMaxStep, "checkpoint step ", step, " out of range [0, ", kMaxStep, "]");
  return (fs::path(out_dir) / dir_name(step)).string();
}

void save_checkpoint(const std::string& out_dir, int64_t step, const CheckpointContents& contents) {
  const fs::path final_dir = checkpoint_dir(out_dir, step);
  LOOM_CHECK(contents.state.is_null() || contents.state.is_object(), final_dir.string(),
             ": checkpoint state must be a JSON object, got ", contents.state.type_name());
  nlohmann::json state = contents.state.is_null() ? nlohmann::json::object() : contents.state;
  if (state.contains("step"))
    LOOM_CHECK(state["step"] == step, final_dir.string(), ": state has step ", state["step"].dump(),
               " but saving step ", step);
  state["format"] = kFormat;
  state["step"] = step;

  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec) fail(out_dir, ": cannot create checkpoint directory: ", ec.message());
  static std::atomic<uint64_t> counter{0};
  const fs::path tmp = fs::path(out_dir) / detail::concat(".", dir_name(step), ".tmp.", ::getpid(), ".", counter++);
  try {
    if (!fs::create_directory(tmp, ec) || ec) fail(tmp.string(), ": cannot create temporary directory: ", ec.message());
    const std::map<std::string, std::string> metadata = {{"format", "pt"}, {"loom_step", std::to_string(step)}};
    std::map<std::string, std::string> model_metadata = metadata;
    if (!contents.model_shape.is_null()) {
      model_metadata["loom_model"] = contents.model_shape.dump();
      write_file_atomically((tmp / kModelShapeFile).string(), contents.model_shape.dump(2) + "\n");
    }
    safetensors::write((tmp / kModelFile).string(), contents.model, model_metadata);
    safetensors::write((tmp / kOptimizerFile).string(), contents.optimizer, metadata);
    write_file_atomically((tmp / kStateFile).string(), state.dump(2) + "\n");
    fsync_directory(tmp.string());
    move_into_place(tmp, final_dir);
    fsync_directory(out_dir);
  } catch (...) {
    fs::remove_all(tmp, ec);  // best effort: the original error is the one to report
    throw;
  }
  fs::remove_all(tmp, ec);  // the replaced checkpoint, if move_into_place swapped one out
  if (ec) fail(tmp.string(), ": cannot remove the replaced checkpoint: ", ec.message());
}

CheckpointContents load_checkpoint(const std::string& dir) {
  const fs::path d(dir);
  LOOM_CHECK(fs::is_directory(d), dir, ": not a checkpoint directory");
  for (const char* f : {kModelFile, kOptimizerFile, kStateFile})
    LOOM_CHECK(fs::is_regular_file(d / f), dir, ": incomplete checkpoint, missing ", f);
  CheckpointContents c;
  c.state = read_state(d / kStateFile);
  c.model = safetensors::read((d / kModelFile).string()).tensors;
  c.optimizer = safetensors::read((d / kOptimizerFile).string()).tensors;
  if (fs::is_regular_file(d / kModelShapeFile)) {
    std::ifstream in(d / kModelShapeFile);
    try {
      c.model_shape = nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& e) {
      fail((d / kModelShapeFile).string(), ": not valid JSON: ", e.what());
    }
  }
  return c;
}

int64_t checkpoint_step(const std::string& dir) {
  return read_state(fs::path(dir) / kStateFile)["step"].get<int64_t>();
}

std::vector<std::pair<int64_t, std::string>> list_checkpoints(const std::string& out_dir) {
  std::vector<std::pair<int64_t, std::string>> found;
  std::error_code ec;
  if (!fs::is_directory(out_dir, ec)) return found;
  for (const fs::directory_entry& e : fs::directory_iterator(out_dir, ec)) {
    const int64_t step = step_of(e.path().filename().string());
    if (step >= 0 && e.is_directory(ec) && is_complete(e.path())) found.emplace_back(step, e.path().string());
  }
  if (ec) fail(out_dir, ": cannot list checkpoints: ", ec.message());
  std::sort(found.begin(), found.end());
  return found;
}

std::string latest_checkpoint(const std::string& out_dir) {
  const auto all = list_checkpoints(out_dir);
  return all.empty() ? "" : all.back().second;
}

std::string new_run_id() {
  std::random_device device;
  std::uniform_int_distribution<uint64_t> any;
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(any(device)));
  return buf;
}

std::string checkpoint_run_id(const std::string& checkpoint_dir) {
  std::ifstream in(fs::path(checkpoint_dir) / kStateFile);
  const nlohmann::json state = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (!state.is_object() || !state.contains("run_id") || !state["run_id"].is_string()) return "";
  return state["run_id"].get<std::string>();
}

void prune_checkpoints(const std::string& out_dir, int keep_last, const std::string& run_id,
                       const std::string& keep_also) {
  LOOM_CHECK(keep_last >= 0, out_dir, ": keep_last must be >= 0 (0 keeps all), got ", keep_last);
  LOOM_CHECK(!run_id.empty(), out_dir, ": prune_checkpoints needs the run's id");
  if (keep_last == 0) return;
  std::vector<std::pair<int64_t, std::string>> own;
  for (auto& checkpoint : list_checkpoints(out_dir))
    if (checkpoint_run_id(checkpoint.second) == run_id) own.push_back(std::move(checkpoint));
  if (own.size() <= static_cast<size_t>(keep_last)) return;
  std::error_code ec;
  for (size_t i = 0; i + keep_last < own.size(); ++i) {
    if (!keep_also.empty() && fs::equivalent(own[i].second, keep_also, ec)) continue;
    // Renamed away first, so a crash mid-removal leaves a hidden directory, not a half-deleted checkpoint.
    const fs::path doomed =
        fs::path(out_dir) / detail::concat(".", fs::path(own[i].second).filename().string(), ".deleting.", ::getpid());
    fs::rename(own[i].second, doomed, ec);
    if (!ec) fs::remove_all(doomed, ec);
    if (ec) fail(own[i].second, ": cannot remove old checkpoint: ", ec.message());
  }
  fsync_directory(out_dir);
}

int64_t state_integer(const nlohmann::json& state, const std::string& key, int64_t min, int64_t max,
                      const std::string& file) {
  if (!state.is_object() || !state.contains(key)) fail(file, ": missing integer \"", key, "\"");
  const nlohmann::json& v = state.at(key);
  if (!v.is_number_integer()) fail(file, ": \"", key, "\": expected an integer, got ", v.dump());
  // Unsigned JSON numbers beyond int64 are out of every range here; compare without narrowing.
  const bool beyond_int64 = v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX);
  const int64_t value = beyond_int64 ? 0 : v.get<int64_t>();
  if (beyond_int64 || value < min || value > max)
    fail(file, ": \"", key, "\": ", v.dump(), " is out of range [", min, ", ", max, "]");
  return value;
}

int remove_stale_checkpoint_temporaries(const RunDirectoryLock& lock) {
  // Exactly the names save_checkpoint and prune_checkpoints give their hidden directories.
  static const std::regex temporary(R"(\.ckpt_[0-9]{8}\.(tmp\.[0-9]+\.[0-9]+|deleting\.[0-9]+))");
  int removed = 0;
  std::error_code ec;
  for (const fs::directory_entry& e : fs::directory_iterator(lock.dir(), ec)) {
    if (!std::regex_match(e.path().filename().string(), temporary) || !e.is_directory(ec) || e.is_symlink(ec))
      continue;
    fs::remove_all(e.path(), ec);
    if (ec) fail(e.path().string(), ": cannot remove a stale temporary checkpoint directory: ", ec.message());
    ++removed;
  }
  if (ec) fail(lock.dir(), ": cannot list the run folder: ", ec.message());
  if (removed > 0) fsync_directory(lock.dir());
  return removed;
}

}  // namespace loom
