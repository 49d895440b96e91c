// Field checks of the controller's requests (launch/controller.proto), before the supervisor acts on them, and
// where a job may write (train.out_dir). Every check that fails throws JobError naming the request and the
// field; the service turns the code into a gRPC status (INVALID_ARGUMENT, PERMISSION_DENIED, ...).
//
// Limits: names and ids at most kMaxNameBytes printable ASCII characters; a host name at most 255 characters
// of [A-Za-z0-9._-]; override arguments at most kMaxArgs of at most kMaxArgBytes, no control characters (a
// NUL would cut an argv entry short of what was checked); pids in [1, kMaxLinuxPid]; steps, byte counts and
// restart counts >= 0; times, throughput, MFU and learning rates finite and >= 0. Loss and gradient norm may
// be anything (a diverging run reports NaN, and the dashboard shows it).
//
// Thread-safety: the functions are pure (check_out_dir reads the file system).
#pragma once
#include <string>
#include <vector>

#include "core/error.h"
#include "launch/controller.pb.h"

namespace loom {

// A request the supervisor refuses; `code` says why (the service maps it onto a gRPC status code).
class JobError : public Error {
 public:
  enum class Code { kInvalidArgument, kNotFound, kStaleAttempt, kPermissionDenied };
  JobError(Code code, const std::string& what) : Error(what), code_(code) {}
  Code code() const { return code_; }

 private:
  Code code_;
};

constexpr size_t kMaxNameBytes = 128;
constexpr size_t kMaxArgs = 256;
constexpr size_t kMaxArgBytes = 4096;
constexpr int kMaxWorldSize = 65536;
constexpr int kMaxRestarts = 1000;

// `text` for an error message: at most 64 characters, control and non-ASCII bytes as \xNN, in quotes.
std::string quoted(const std::string& text);

void check_submit_request(const controller::SubmitJobRequest& request);
void check_register_request(const controller::RegisterRequest& request);
void check_heartbeat_request(const controller::HeartbeatRequest& request);
void check_metrics_report(const controller::MetricsReport& report);
void check_control_request(const controller::ControlRequest& request);

// Where a job may write. `out_dir` is resolved as the job's processes will resolve it: relative to the
// controller's working directory, following the symbolic links of the parts that exist.
struct OutDirRules {
  std::string runs_root;    // out_dir must lie strictly inside (unless allow_outside_root)
  std::string jobs_dir;     // the controller's job folders and admin token: only inside own_job_dir
  std::string own_job_dir;  // JOBS_DIR/<id> of the job being submitted
  std::vector<std::pair<std::string, std::string>> busy_out_dirs;  // (job id, resolved out_dir) of live jobs
  bool allow_outside_root = false;  // the admin's SubmitJobRequest.allow_out_dir_outside_root
};
// Returns the resolved, absolute out_dir. Throws JobError(kInvalidArgument) naming train.out_dir when it is
// empty, has a ".." part or lies outside runs_root (both allowed with allow_outside_root), or when it is, holds
// or lies in the jobs folder (other than inside own_job_dir) or another live job's out_dir (never allowed).
std::string check_out_dir(const std::string& out_dir, const OutDirRules& rules);

}  // namespace loom
