#include "launch/request_checks.h"

#include <cmath>
#include <filesystem>

#include "launch/process_gang.h"

namespace loom {

namespace fs = std::filesystem;
using Code = JobError::Code;

namespace {

[[noreturn]] void refuse(const char* rpc, const std::string& what) {
  throw JobError(Code::kInvalidArgument, std::string(rpc) + ": " + what);
}

bool printable(const std::string& s) {
  for (unsigned char c : s)
    if (c < 0x20 || c >= 0x7f) return false;
  return true;
}

void check_name(const char* rpc, const char* field, const std::string& value, bool required) {
  if (required && value.empty()) refuse(rpc, std::string(field) + " is missing");
  if (value.size() > kMaxNameBytes || !printable(value))
    refuse(rpc, std::string(field) + " " + quoted(value) + " must be at most " + std::to_string(kMaxNameBytes) +
                    " printable ASCII characters");
}

void check_count(const char* rpc, const char* field, int64_t value) {
  if (value < 0) refuse(rpc, std::string(field) + " must be >= 0, got " + std::to_string(value));
}

void check_amount(const char* rpc, const char* field, double value) {
  if (!std::isfinite(value) || value < 0)
    refuse(rpc, std::string(field) + " must be finite and >= 0, got " + std::to_string(value));
}

void check_step_times(const char* rpc, const controller::StepTimes& t) {
  check_amount(rpc, "step_times.data_ms", t.data_ms());
  check_amount(rpc, "step_times.forward_backward_ms", t.forward_backward_ms());
  check_amount(rpc, "step_times.optimizer_ms", t.optimizer_ms());
  check_amount(rpc, "step_times.total_ms", t.total_ms());
  check_amount(rpc, "step_times.communication_ms", t.communication_ms());
  check_amount(rpc, "step_times.exposed_communication_ms", t.exposed_communication_ms());
  check_amount(rpc, "step_times.forward_ms", t.forward_ms());
  check_amount(rpc, "step_times.backward_ms", t.backward_ms());
  check_amount(rpc, "step_times.grad_sync_ms", t.grad_sync_ms());
}

// a is b, or lies inside it (compares whole path components).
bool within(const fs::path& a, const fs::path& b) {
  auto ai = a.begin(), bi = b.begin();
  for (; bi != b.end(); ++ai, ++bi)
    if (ai == a.end() || *ai != *bi) return false;
  return true;
}

fs::path resolved(const std::string& path) {
  std::error_code ec;
  fs::path p = fs::weakly_canonical(fs::absolute(path), ec);
  if (ec) throw JobError(Code::kInvalidArgument, "SubmitJob: train.out_dir " + quoted(path) + ": " + ec.message());
  // weakly_canonical keeps a trailing separator ("a/b/" -> "a/b/"): drop it so components compare equal.
  return p.has_filename() ? p : p.parent_path();
}

}  // namespace

std::string quoted(const std::string& text) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out = "\"";
  for (size_t i = 0; i < text.size() && i < 64; ++i) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    if (c < 0x20 || c >= 0x7f || c == '"' || c == '\\') {
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
    } else {
      out += static_cast<char>(c);
    }
  }
  if (text.size() > 64) out += "...(" + std::to_string(text.size()) + " bytes)";
  return out + "\"";
}

void check_submit_request(const controller::SubmitJobRequest& r) {
  constexpr const char* rpc = "SubmitJob";
  if (!r.has_config()) refuse(rpc, "missing config");
  if (!r.has_world_size() || r.world_size() < 1 || r.world_size() > kMaxWorldSize)
    refuse(rpc, "world_size must be in [1, " + std::to_string(kMaxWorldSize) + "], got " +
                    std::to_string(r.world_size()));
  if (r.has_max_restarts() && (r.max_restarts() < 0 || r.max_restarts() > kMaxRestarts))
    refuse(rpc, "max_restarts must be in [0, " + std::to_string(kMaxRestarts) + "], got " +
                    std::to_string(r.max_restarts()));
  check_name(rpc, "name", r.name(), false);
  if (static_cast<size_t>(r.args_size()) > kMaxArgs)
    refuse(rpc, "at most " + std::to_string(kMaxArgs) + " args, got " + std::to_string(r.args_size()));
  for (const std::string& a : r.args())
    if (a.size() > kMaxArgBytes || !printable(a))
      refuse(rpc, "argument " + quoted(a) + " must be at most " + std::to_string(kMaxArgBytes) +
                      " printable ASCII characters");
}

void check_register_request(const controller::RegisterRequest& r) {
  constexpr const char* rpc = "Register";
  check_name(rpc, "job_id", r.job_id(), true);
  if (r.host().empty() || r.host().size() > 255 ||
      r.host().find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-") !=
          std::string::npos)
    refuse(rpc, "host " + quoted(r.host()) + " must be 1 to 255 characters of [A-Za-z0-9._-]");
  check_name(rpc, "device", r.device(), false);
  // pid_t has 32 bits: a wider value would name another process once narrowed (P + 2^32 is P).
  if (r.pid() < 1 || r.pid() > kMaxLinuxPid)
    refuse(rpc, "pid " + std::to_string(r.pid()) + " outside [1, " + std::to_string(kMaxLinuxPid) + "]");
}

void check_heartbeat_request(const controller::HeartbeatRequest& r) {
  constexpr const char* rpc = "Heartbeat";
  check_count(rpc, "step", r.step());
  check_count(rpc, "host_rss_bytes", r.host_rss_bytes());
  check_step_times(rpc, r.step_times());
}

void check_metrics_report(const controller::MetricsReport& r) {
  constexpr const char* rpc = "ReportMetrics";
  check_count(rpc, "step", r.step());
  check_count(rpc, "host_rss_bytes", r.host_rss_bytes());
  check_count(rpc, "device_bytes_in_use", r.device_bytes_in_use());
  check_amount(rpc, "tokens_per_s", r.tokens_per_s());
  check_amount(rpc, "mfu", r.mfu());
  check_amount(rpc, "lr", r.lr());
  check_step_times(rpc, r.step_times());
}

void check_control_request(const controller::ControlRequest& r) {
  constexpr const char* rpc = "Control";
  if (!r.has_action()) refuse(rpc, "missing action");
  if (r.action() == controller::ControlRequest::PAUSE) check_count(rpc, "step (pause)", r.step());
}

std::string check_out_dir(const std::string& out_dir, const OutDirRules& rules) {
  const auto bad = [&](const std::string& why) -> JobError {
    return JobError(Code::kInvalidArgument, "SubmitJob: train.out_dir " + quoted(out_dir) + " " + why);
  };
  if (out_dir.empty()) throw bad("is empty");
  if (out_dir.find('\0') != std::string::npos) throw bad("holds a NUL byte");
  const fs::path given(out_dir), path = resolved(out_dir);
  const fs::path root = resolved(rules.runs_root), jobs = resolved(rules.jobs_dir), own = resolved(rules.own_job_dir);
  if (!rules.allow_outside_root) {
    for (const auto& part : given)
      if (part == "..")
        throw bad("has a \"..\" part (SubmitJob's allow_out_dir_outside_root, admin only, lifts this)");
    if (!within(path, root) || path == root)
      throw bad("resolves to " + path.string() + ", outside the runs root " + root.string() +
                " (SubmitJob's allow_out_dir_outside_root, admin only, lifts this)");
  }
  if ((within(path, jobs) && !(within(path, own) && path != own)) || within(jobs, path))
    throw bad("resolves to " + path.string() + ", which overlaps the controller's jobs folder " + jobs.string() +
              " (only a folder inside the job's own " + own.string() + " may be used)");
  for (const auto& [job_id, busy] : rules.busy_out_dirs)
    if (within(path, busy) || within(busy, path))
      throw bad("resolves to " + path.string() + ", which overlaps the out_dir " + busy + " of the live job " + job_id);
  return path.string();
}

}  // namespace loom
