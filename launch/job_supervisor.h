// The controller's jobs: their state machine, the processes that run them, failure detection and restarts.
// The gRPC service (launch/controller_service.h) and the dashboard (launch/dashboard_server.h) are views on it.
//
// A job goes PENDING -> RUNNING -> (RESTARTING -> RUNNING)* -> FINISHED | STOPPED | FAILED. Running a job
// means one session of processes (launch/process_gang.h): `LAUNCHER --np N --loom LOOM -- train
// JOBS_DIR/<id>/config.yaml ARGS... train.resume=latest`, started as the leader of a new session, with the
// job's address, id, token and attempt in the environment (forwarded to every rank with mpirun -x) and no
// secret of the controller (see SupervisorOptions::secrets). A job has failed when that process exits
// non-zero, when a registered rank misses heartbeats for heartbeat_timeout_ms, or when not every rank has
// registered register_timeout_ms after the start (or, with stall_timeout_ms, when no rank completes a step for
// that long). Then every process of the session gets SIGKILL (found by the supervisor in /proc; a pid from a
// request is never signalled), and the job starts again (train.resume=latest picks the newest complete
// checkpoint) unless it has already been restarted max_restarts times, in which case it is FAILED. Every state
// change is logged and kept in the job's events.
//
// Thread-safety: every public method may be called from any thread (one mutex guards all jobs); a monitor
// thread started by the constructor checks the jobs every 50 ms until the destructor, which kills the sessions
// of jobs still running.
#pragma once
#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <ostream>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"
#include "launch/controller.pb.h"
#include "launch/request_checks.h"

namespace loom {

struct SupervisorOptions {
  std::string launcher;        // launch/loom-mpirun
  std::string loom_binary;     // build/loom (passed as --loom)
  std::string jobs_dir;        // per job <id>/config.yaml and <id>/attempt_<n>.log
  // Every job's train.out_dir must lie inside this folder (unless the admin's SubmitJobRequest says
  // allow_out_dir_outside_root); "" = the folder that holds jobs_dir (runs/ for runs/controller).
  std::string runs_root;
  // Values that never reach a job (the admin token): an inherited environment variable whose name or value
  // holds one is left out of the launcher's environment, and so are inherited LOOM_CONTROLLER_* and LOOM_JOB_*
  // variables (the job gets only its own: address, CA, id, token, attempt, heartbeat interval).
  std::vector<std::string> secrets;
  std::string worker_address;  // the controller address handed to workers (LOOM_CONTROLLER_ADDRESS)
  std::string worker_ca_file;  // root certificate workers use for TLS ("" = plaintext)
  std::vector<std::string> launcher_args;  // extra launcher options, e.g. {"--cpu"}
  int heartbeat_interval_ms = 1000;
  int heartbeat_timeout_ms = 10000;
  int register_timeout_ms = 120000;
  // > 0: an attempt in which no rank completes a step for this long (while not paused) has failed: a deadlock
  // that leaves the heartbeat threads alive. Off by default: first steps, validation and checkpoints can be long.
  int stall_timeout_ms = 0;
  int max_restarts = 3;
  size_t max_metrics_per_job = 100000;  // oldest reports are dropped beyond this
  std::ostream* log = nullptr;          // state changes (default: std::cerr)
};

class JobSupervisor {
 public:
  explicit JobSupervisor(SupervisorOptions options);
  ~JobSupervisor();
  JobSupervisor(const JobSupervisor&) = delete;
  JobSupervisor& operator=(const JobSupervisor&) = delete;

  // Validates the request (check_submit_request; config complete and loadable with its args, args
  // key=value, world_size equal to parallel.data x parallel.tensor; train.out_dir allowed by check_out_dir:
  // inside runs_root, not in the jobs folder but inside the job's own, not overlapping a live job's out_dir),
  // writes the config file and starts the job. Throws JobError(kInvalidArgument) on a bad request.
  controller::SubmitJobReply submit(const controller::SubmitJobRequest& request);

  // The address handed to jobs started from now on (LOOM_CONTROLLER_ADDRESS).
  void set_worker_address(const std::string& address);

  // True when the job exists and `token` is its token (compared in constant time).
  bool job_token_matches(const std::string& job_id, const std::string& token) const;

  // Worker calls. Throw JobError: kNotFound (unknown job), kInvalidArgument (a field out of range, see
  // request_checks.h), kStaleAttempt (Register from an attempt that is not the current one; Heartbeat answers
  // stale=true), kPermissionDenied (Register of a pid on this host that is no descendant of the job's
  // launcher). A registered pid is shown in the status only; nothing signals it.
  controller::RegisterReply register_rank(const controller::RegisterRequest& request);
  controller::HeartbeatReply heartbeat(const controller::HeartbeatRequest& request);
  void report_metrics(const controller::MetricsReport& report);

  // Operator calls. Throw JobError (kNotFound, kInvalidArgument for a missing action).
  controller::ControlReply control(const controller::ControlRequest& request);
  controller::JobStatusReply status(const std::string& job_id) const;
  controller::ListJobsReply list() const;
  // The job's metrics reports (oldest first) with step > after_step.
  std::vector<controller::MetricsReport> metrics(const std::string& job_id, int64_t after_step) const;

  // Blocks until the job has reports with step > after_step (returned in `out`), the job is over, or
  // `deadline` passes. Returns false once the job is over and nothing newer is left to return.
  bool wait_metrics(const std::string& job_id, int64_t after_step, std::chrono::steady_clock::time_point deadline,
                    std::vector<controller::MetricsReport>* out) const;

 private:
  using Clock = std::chrono::steady_clock;
  struct Rank {
    controller::RankStatus status;
    Clock::time_point last_heartbeat;
  };
  struct Job {
    std::string id, name, token, config_path, out_dir, log_path;
    std::string resolved_out_dir;  // absolute, symbolic links resolved (check_out_dir)
    std::vector<std::string> args;
    std::string device_flag;  // --cpu / --gpu for the launcher from train.device ("" for auto)
    int world_size = 1, max_restarts = 0, attempt = 0, restarts = 0;
    controller::JobState state = controller::PENDING;
    pid_t pid = -1;  // the launcher: leader of the job's session, a child of ours not yet reaped
    Clock::time_point started;
    int64_t progress_step = -1;         // highest step any rank of this attempt reported
    Clock::time_point progress_time;    // when it was reached (or the attempt started / was resumed)
    controller::ControlState control;
    std::map<int, Rank> ranks;
    std::vector<controller::MetricsReport> metrics;
    int64_t steps_total = 0;     // every report counted, also those `metrics` has dropped or replaced
    double tokens_total = 0;
    std::optional<double> last_val_loss;
    std::vector<controller::JobEvent> events;
  };

  Job& find(const std::string& job_id);
  const Job& find(const std::string& job_id) const;
  void set_state(Job& job, controller::JobState state, const std::string& message);
  void start_attempt(Job& job);
  std::vector<std::pair<std::string, std::string>> job_variables(const Job& job) const;
  std::vector<std::string> job_environment(const Job& job) const;
  void kill_gang(Job& job);
  void fail_attempt(Job& job, const std::string& reason);
  void check_job(Job& job);
  void monitor_loop();
  controller::JobStatusReply status_of(const Job& job) const;

  SupervisorOptions options_;
  mutable std::mutex mu_;
  mutable std::condition_variable changed_;  // metrics arrived or a job's state changed
  std::map<std::string, std::unique_ptr<Job>> jobs_;
  int next_job_number_ = 1;
  bool shutting_down_ = false;
  std::thread monitor_;
};

// A 256-bit random token in hex (from the OS's random device).
std::string random_token();
// Constant-time equality of two secrets (no early exit on the first differing byte).
bool secrets_equal(const std::string& a, const std::string& b);
// Lower-case name of a state ("running").
std::string job_state_name(controller::JobState state);

}  // namespace loom
