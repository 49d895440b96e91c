// The controller's jobs: their state machine, the processes that run them, failure detection, restarts (on
// the hosts still reachable, shrunk as parallel.elastic allows) and the journal that lets a restarted
// controller take them up again. The gRPC service (launch/controller_service.h) and the dashboard
// (launch/dashboard_server.h) are views on it.
//
// A job goes PENDING -> RUNNING -> (RESTARTING -> RUNNING)* -> FINISHED | STOPPED | FAILED. Running a job
// means one gang of processes (launch/process_gang.h): a keeper leading a new session that runs `LAUNCHER
// [--hostfile JOBS_DIR/<id>/hosts_<n>.txt] --np N --loom LOOM -- train JOBS_DIR/<id>/config.yaml ARGS...
// [LAYOUT OVERRIDES] train.resume=latest`, with the job's address, id, token and attempt in the environment
// (forwarded to every rank with mpirun -x) and no secret of the controller (see SupervisorOptions::secrets).
// With a host list (SupervisorOptions::hosts) every attempt first probes the hosts (host_probe, in parallel,
// each bounded by probe_timeout_ms) and places the job on those that answer: fit_layout
// (launch/job_supervisor_layout.h) keeps parallel.data or shrinks it down to parallel.elastic.min_data,
// raising train.grad_accum_steps so the global batch stays; no fitting layout fails the job.
//
// A job has failed when its launcher exits non-zero, when a registered rank misses heartbeats for
// heartbeat_timeout_ms, or when not every rank has registered register_timeout_ms after the start (or, with
// stall_timeout_ms, when no rank completes a step for that long). Then every process of the session gets
// SIGKILL (found by the supervisor in /proc; a pid from a request is never signalled), and the job starts again
// (train.resume=latest picks the newest complete checkpoint) unless it has already been restarted
// max_restarts times, in which case it is FAILED. Every state change is logged and kept in the job's events.
//
// The journal: every change of a job's state, control, attempt or layout replaces JOBS_DIR/<id>/job.json
// (a controller::JobRecord, written atomically) holding no token, only SHA-256 hashes of the job's tokens. The
// constructor reads them back: finished jobs are kept as they were; a running attempt whose keeper is still the
// same process (Gang::adopt) is supervised again, its ranks registering anew (Heartbeat answers
// register_again) within register_timeout_ms; an attempt that ended while no controller ran is judged by the
// wait status its keeper left, and restarted from its checkpoint when it failed; a job that was still waiting
// for its hosts is placed again. Attempts started by a restarted controller get a new job token (its hash
// joins the others; tokens handed out earlier stay valid).
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
#include "launch/process_gang.h"
#include "launch/request_checks.h"

namespace loom {

struct SupervisorOptions {
  std::string launcher;        // launch/loom-mpirun
  std::string loom_binary;     // build/loom (passed as --loom)
  std::string keeper;          // loom-gang-keeper: leads each attempt's session (launch/process_gang.h)
  // Per job <id>/config.yaml, <id>/job.json (the journal), <id>/attempt_<n>.log and .status, <id>/hosts_<n>.txt.
  std::string jobs_dir;
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
  // The cluster's hosts and slots (serve --hostfile); each attempt's launcher gets a hostfile of those that
  // answered the probe. Empty: no host list (the launcher's own defaults; no probing, no elastic shrinking).
  std::vector<controller::HostSlots> hosts;
  // A shell command run with the host as $1 (sh -c COMMAND probe HOST); exit status 0 within probe_timeout_ms
  // means the host is up. Runs in its own session with the controller's environment without its secrets.
  // When the hosts that are up fit no layout, that counts as a failed attempt: the job probes again
  // probe_timeout_ms later while restarts are left.
  std::string host_probe = "exec ssh -o BatchMode=yes -o ConnectTimeout=5 -- \"$1\" true";
  int probe_timeout_ms = 10000;
  // On destruction, leave the jobs' processes running (the journal still says running) for the next
  // controller on this jobs folder to take up; by default they are killed and the jobs marked failed.
  bool leave_jobs_running = false;
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
  // key=value, world_size equal to parallel.data x parallel.tensor, parallel.elastic.min_data at most
  // parallel.data; train.out_dir allowed by check_out_dir: inside runs_root, not in the jobs folder but inside
  // the job's own, not overlapping a live job's out_dir), writes the config file and starts the job (with a
  // host list: probes the hosts first, the job PENDING meanwhile). Throws JobError(kInvalidArgument) on a bad
  // request.
  controller::SubmitJobReply submit(const controller::SubmitJobRequest& request);

  // The address handed to jobs started from now on (LOOM_CONTROLLER_ADDRESS).
  void set_worker_address(const std::string& address);

  // True when the job exists and `token` is one of its tokens (SHA-256 hashes compared in constant time).
  bool job_token_matches(const std::string& job_id, const std::string& token) const;

  // Worker calls. Throw JobError: kNotFound (unknown job), kInvalidArgument (a field out of range, see
  // request_checks.h), kStaleAttempt (Register from an attempt that is not the current one; Heartbeat answers
  // stale=true), kPermissionDenied (Register of a pid on this host that is no descendant of the job's
  // keeper). A registered pid is shown in the status only; nothing signals it. Heartbeat of a rank of the
  // current attempt that has not registered (the controller was restarted) answers register_again=true.
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
  struct Probe {
    controller::HostSlots host;
    pid_t pid = -1;  // leads a session of its own; a child of ours not yet reaped while > 0
    bool up = false;
  };
  struct Job {
    std::string id, name, config_path, out_dir, log_path;
    std::string resolved_out_dir;  // absolute, symbolic links resolved (check_out_dir)
    // The token handed to the attempts this controller process starts; held in memory only (the journal has
    // hashes). Empty for a job taken up from the journal until its next attempt makes a new one.
    std::string token;
    std::vector<std::string> token_hashes;  // hex SHA-256 of every token of the job
    std::vector<std::string> args;
    std::string device_flag;  // --cpu / --gpu for the launcher from train.device ("" for auto)
    int world_size = 1, max_restarts = 0, attempt = 0, restarts = 0;
    controller::JobLayout submitted, layout;  // as submitted; the current (or last) attempt's
    int min_data = 1;                          // parallel.elastic.min_data (submitted.data() without it)
    std::string last_checkpoint;
    controller::JobState state = controller::PENDING;
    std::unique_ptr<Gang> gang;  // the current attempt's processes (null between attempts)
    std::string claim_file;      // the current attempt's keeper claims it here (launch/process_gang.h)
    std::string status_file;     // where its keeper writes the launcher's wait status
    bool placing = false;        // probing the hosts for the next attempt (then started, or retried)
    Clock::time_point probe_at;  // when the probes start (a retry waits probe_timeout_ms)
    std::vector<Probe> probes;   // hosts being probed now
    Clock::time_point probes_started;
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
  // Places the next attempt after `delay`: probes the hosts (with a host list) or starts it. Nothing starts
  // before the workers' address is known (set_worker_address): until then the monitor thread waits.
  void begin_attempt(Job& job, std::chrono::milliseconds delay = std::chrono::milliseconds(0));
  void start_attempt(Job& job, const controller::JobLayout& layout);
  void start_probes(Job& job);
  // While placing: starts the probes when due (or, without a host list, the attempt), collects their
  // answers, and once all have answered starts the attempt on the hosts that are up, or, when no layout fits
  // them, counts a restart and probes again later.
  void check_probes(Job& job);
  void stop_probes(Job& job);
  std::vector<std::pair<std::string, std::string>> job_variables(const Job& job) const;
  // The controller's environment without its secrets (and without LOOM_CONTROLLER_* / LOOM_JOB_*).
  std::vector<std::string> clean_environment() const;
  std::vector<std::string> job_environment(const Job& job) const;
  void kill_gang(Job& job);
  void fail_attempt(Job& job, const std::string& reason);
  // The launcher has exited (or the keeper is gone): kills what is left of the gang and ends the attempt by
  // the launcher's wait status (nullopt: unknown, a failure). `when` is appended to the event's message.
  void end_attempt(Job& job, std::optional<int> wait_status, const std::string& when);
  void check_job(Job& job);
  void monitor_loop();
  controller::JobStatusReply status_of(const Job& job) const;
  // The journal (launch/job_supervisor_journal.cc).
  void journal(const Job& job) const;
  controller::JobRecord record_of(const Job& job) const;
  void recover();
  void recover_job(const controller::JobRecord& record);

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
// True for the states a job does not leave (finished, stopped, failed).
bool job_is_over(controller::JobState state);

}  // namespace loom
