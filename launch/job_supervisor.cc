#include "launch/job_supervisor.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <regex>

#include "core/config.h"
#include "launch/process_gang.h"

extern char** environ;

namespace loom {

using controller::JobState;
using Code = JobError::Code;

namespace {

constexpr auto kMonitorPeriod = std::chrono::milliseconds(50);

double unix_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

bool is_over(JobState s) {
  return s == controller::FINISHED || s == controller::STOPPED || s == controller::FAILED;
}

std::string this_host() {
  char name[256] = {};
  gethostname(name, sizeof name - 1);
  return name;
}

std::string describe_exit(int status) {
  if (WIFEXITED(status)) return "launcher exited with status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return std::string("launcher killed by signal ") + strsignal(WTERMSIG(status));
  return "launcher ended with wait status " + std::to_string(status);
}

// `key=value` with a config key path (letters, digits, '_' and '.'): what `loom train` takes as an override.
// Anything else (an option such as --foo, a second config file) is refused before it reaches the command line.
bool is_override(const std::string& arg) {
  static const std::regex pattern("[A-Za-z_][A-Za-z0-9_]*(\\.[A-Za-z_][A-Za-z0-9_]*)*=.*");
  return std::regex_match(arg, pattern);
}

}  // namespace

std::string random_token() {
  std::random_device device;  // /dev/urandom on Linux
  static constexpr char kHex[] = "0123456789abcdef";
  std::string token;
  for (int i = 0; i < 8; ++i) {
    uint32_t word = device();
    for (int j = 0; j < 8; ++j, word >>= 4) token += kHex[word & 15];
  }
  return token;
}

bool secrets_equal(const std::string& a, const std::string& b) {
  if (a.empty() || a.size() != b.size()) return false;  // tokens have a fixed, public length
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

std::string job_state_name(JobState state) {
  switch (state) {
    case controller::PENDING: return "pending";
    case controller::RUNNING: return "running";
    case controller::RESTARTING: return "restarting";
    case controller::FINISHED: return "finished";
    case controller::STOPPED: return "stopped";
    case controller::FAILED: return "failed";
  }
  return "unknown";
}

JobSupervisor::JobSupervisor(SupervisorOptions options) : options_(std::move(options)) {
  if (!options_.log) options_.log = &std::cerr;
  if (options_.runs_root.empty())
    options_.runs_root = std::filesystem::absolute(options_.jobs_dir).lexically_normal().parent_path().string();
  LOOM_CHECK(options_.heartbeat_interval_ms > 0 && options_.heartbeat_timeout_ms > options_.heartbeat_interval_ms,
             "heartbeat timeout (", options_.heartbeat_timeout_ms, " ms) must exceed the heartbeat interval (",
             options_.heartbeat_interval_ms, " ms)");
  std::filesystem::create_directories(options_.jobs_dir);
  monitor_ = std::thread([this] { monitor_loop(); });
}

JobSupervisor::~JobSupervisor() {
  {
    std::lock_guard lock(mu_);
    shutting_down_ = true;
  }
  changed_.notify_all();
  monitor_.join();
  std::lock_guard lock(mu_);
  for (auto& [id, job] : jobs_)
    if (job->state == controller::RUNNING) {
      kill_gang(*job);
      set_state(*job, controller::FAILED, "controller shut down; the job's processes were killed");
    }
}

controller::SubmitJobReply JobSupervisor::submit(const controller::SubmitJobRequest& request) {
  check_submit_request(request);
  std::vector<std::string> args(request.args().begin(), request.args().end());
  for (const std::string& a : args)
    if (!is_override(a))
      throw JobError(Code::kInvalidArgument, "SubmitJob: argument " + quoted(a) + " is not a key.path=value override");

  auto job = std::make_unique<Job>();
  std::string dir;
  {
    // Ids are not reused across controller restarts: a folder left by an earlier controller is skipped.
    std::lock_guard lock(mu_);
    do {
      job->id = "job-" + std::to_string(next_job_number_++);
      dir = options_.jobs_dir + "/" + job->id;
    } while (!std::filesystem::create_directory(dir));
  }
  job->config_path = dir + "/config.yaml";
  {
    std::ofstream out(job->config_path);
    out << run_config_to_yaml(request.config());
    if (!out) fail(job->config_path, ": cannot write the job's config");
  }
  config::RunConfig effective;
  try {
    effective = load_run_config(job->config_path, args);
  } catch (const Error& e) {
    std::filesystem::remove_all(dir);
    throw JobError(Code::kInvalidArgument, std::string("SubmitJob: invalid config: ") + e.what());
  }
  const int64_t layout = int64_t{effective.parallel().data()} * effective.parallel().tensor();
  if (request.world_size() != layout) {
    std::filesystem::remove_all(dir);
    throw JobError(Code::kInvalidArgument,
                   "SubmitJob: world_size " + std::to_string(request.world_size()) +
                       " differs from parallel.data x parallel.tensor = " + std::to_string(layout) +
                       " of the config (e.g. add the override parallel.data=" +
                       std::to_string(request.world_size()) + ")");
  }
  job->name = request.has_name() && !request.name().empty() ? request.name() : job->id;
  job->token = random_token();
  job->out_dir = effective.train().out_dir();
  OutDirRules rules;
  rules.runs_root = options_.runs_root;
  rules.jobs_dir = options_.jobs_dir;
  rules.own_job_dir = dir;
  rules.allow_outside_root = request.allow_out_dir_outside_root();
  job->args = args;
  // The launcher reads train.device from the YAML itself, but not in the quoted form written above.
  if (effective.train().device() == "cpu") job->device_flag = "--cpu";
  if (effective.train().device() == "cuda") job->device_flag = "--gpu";
  job->world_size = request.world_size();
  job->max_restarts = request.has_max_restarts() ? request.max_restarts() : options_.max_restarts;

  controller::SubmitJobReply reply;
  reply.set_job_id(job->id);
  reply.set_token(job->token);
  std::lock_guard lock(mu_);  // checked and taken at once: two submits cannot claim one out_dir
  for (const auto& [id, other] : jobs_)
    if (!is_over(other->state)) rules.busy_out_dirs.emplace_back(id, other->resolved_out_dir);
  try {
    job->resolved_out_dir = check_out_dir(job->out_dir, rules);
  } catch (const JobError&) {
    std::filesystem::remove_all(dir);
    throw;
  }
  Job& j = *jobs_.emplace(job->id, std::move(job)).first->second;
  set_state(j, controller::PENDING,
            "submitted: " + std::to_string(j.world_size) + " rank(s), out_dir " + j.out_dir);
  start_attempt(j);
  return reply;
}

void JobSupervisor::set_worker_address(const std::string& address) {
  std::lock_guard lock(mu_);
  options_.worker_address = address;
}

bool JobSupervisor::job_token_matches(const std::string& job_id, const std::string& token) const {
  std::lock_guard lock(mu_);
  auto it = jobs_.find(job_id);
  return it != jobs_.end() && secrets_equal(token, it->second->token);
}

JobSupervisor::Job& JobSupervisor::find(const std::string& job_id) {
  auto it = jobs_.find(job_id);
  if (it == jobs_.end()) throw JobError(Code::kNotFound, "no job " + quoted(job_id));
  return *it->second;
}

const JobSupervisor::Job& JobSupervisor::find(const std::string& job_id) const {
  return const_cast<JobSupervisor*>(this)->find(job_id);
}

void JobSupervisor::set_state(Job& job, JobState state, const std::string& message) {
  controller::JobEvent& e = job.events.emplace_back();
  e.set_unix_time(unix_now());
  e.set_state(state);
  e.set_message(message);
  *options_.log << "controller: " << job.id << ": ";
  if (job.events.size() > 1) *options_.log << job_state_name(job.state) << " -> ";
  *options_.log << job_state_name(state) << ": " << message << std::endl;
  job.state = state;
  changed_.notify_all();
}

std::vector<std::pair<std::string, std::string>> JobSupervisor::job_variables(const Job& job) const {
  return {{"LOOM_CONTROLLER_ADDRESS", options_.worker_address},
          {"LOOM_JOB_ID", job.id},
          {"LOOM_JOB_TOKEN", job.token},
          {"LOOM_JOB_ATTEMPT", std::to_string(job.attempt)},
          {"LOOM_HEARTBEAT_MS", std::to_string(options_.heartbeat_interval_ms)},
          {"LOOM_CONTROLLER_CA", options_.worker_ca_file}};
}

// The job's own variables, and the controller's environment without its secrets and without the variables
// of the controller's own clients (LOOM_CONTROLLER_TOKEN may hold the admin token) or of an outer job.
std::vector<std::string> JobSupervisor::job_environment(const Job& job) const {
  std::vector<std::string> env;
  for (char** e = environ; *e; ++e) {
    const std::string entry = *e;
    bool dropped = entry.rfind("LOOM_CONTROLLER_", 0) == 0 || entry.rfind("LOOM_JOB_", 0) == 0 ||
                   entry.rfind("LOOM_HEARTBEAT_MS=", 0) == 0;
    for (const std::string& secret : options_.secrets)
      dropped |= !secret.empty() && entry.find(secret) != std::string::npos;
    if (!dropped) env.push_back(entry);
  }
  for (const auto& [name, value] : job_variables(job)) env.push_back(name + "=" + value);
  return env;
}

// posix_spawn rather than fork: the controller is multi-threaded (gRPC). The launcher leads a new session (the
// job's "gang"), with its output in the attempt's log file.
void JobSupervisor::start_attempt(Job& job) {
  ++job.attempt;
  job.ranks.clear();
  job.log_path = options_.jobs_dir + "/" + job.id + "/attempt_" + std::to_string(job.attempt) + ".log";

  std::vector<std::string> args = {options_.launcher};
  if (!job.device_flag.empty()) args.push_back(job.device_flag);
  args.insert(args.end(), options_.launcher_args.begin(), options_.launcher_args.end());
  args.insert(args.end(), {"--np", std::to_string(job.world_size), "--loom", options_.loom_binary});
  for (const auto& [name, value] : job_variables(job)) args.insert(args.end(), {"--mpi", "-x", "--mpi", name});
  args.insert(args.end(), {"--", "train", job.config_path});
  args.insert(args.end(), job.args.begin(), job.args.end());
  args.push_back("train.resume=latest");

  pid_t pid = -1;
  try {
    pid = spawn_session(args, job_environment(job), job.log_path);
  } catch (const Error& e) {
    set_state(job, controller::FAILED, e.what());
    return;
  }
  job.pid = pid;
  job.started = job.progress_time = Clock::now();
  job.progress_step = -1;
  set_state(job, controller::RUNNING,
            "attempt " + std::to_string(job.attempt) + " started (launcher pid " + std::to_string(pid) +
                ", log " + job.log_path + ")");
}

// SIGKILL to every process of the launcher's session (mpirun starts ranks in process groups of their own,
// but in its session), then reaps the launcher. A registered rank's pid plays no part.
void JobSupervisor::kill_gang(Job& job) {
  if (job.pid <= 0) return;
  if (!kill_session(job.pid))
    *options_.log << "controller: " << job.id << ": warning: processes of session " << job.pid
                  << " still alive after SIGKILL" << std::endl;
  waitpid(job.pid, nullptr, 0);
  job.pid = -1;
}

void JobSupervisor::fail_attempt(Job& job, const std::string& reason) {
  kill_gang(job);
  const std::string attempt = "attempt " + std::to_string(job.attempt) + ": ";
  if (job.control.stop()) {
    set_state(job, controller::STOPPED, attempt + reason + " (after a stop request; not restarted)");
  } else if (job.restarts >= job.max_restarts) {
    set_state(job, controller::FAILED,
              attempt + reason + "; giving up after " + std::to_string(job.restarts) + " restart(s)");
  } else {
    ++job.restarts;
    set_state(job, controller::RESTARTING,
              attempt + reason + "; gang killed, restart " + std::to_string(job.restarts) + " of " +
                  std::to_string(job.max_restarts) + " from the last complete checkpoint in " + job.out_dir);
    start_attempt(job);
  }
}

void JobSupervisor::check_job(Job& job) {
  if (job.pid > 0 && leader_has_exited(job.pid)) {
    // Stragglers, if any, die before the launcher is reaped: until then no other process can take its pid,
    // which numbers the session.
    kill_session(job.pid);
    int status = 0;
    waitpid(job.pid, &status, 0);
    job.pid = -1;
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
      const std::string step = std::to_string(job.metrics.empty() ? 0 : job.metrics.back().step());
      if (job.control.stop())
        set_state(job, controller::STOPPED, "stopped on request at step " + step);
      else
        set_state(job, controller::FINISHED, "launcher exited 0 at step " + step);
    } else {
      fail_attempt(job, describe_exit(status));
    }
    return;
  }
  const auto now = Clock::now();
  for (const auto& [rank, r] : job.ranks) {
    const auto silent = std::chrono::duration_cast<std::chrono::milliseconds>(now - r.last_heartbeat).count();
    if (!r.status.finished() && silent > options_.heartbeat_timeout_ms) {
      fail_attempt(job, "rank " + std::to_string(rank) + " (pid " + std::to_string(r.status.pid()) + " on " +
                            r.status.host() + ") sent no heartbeat for " + std::to_string(silent) + " ms");
      return;
    }
  }
  if (job.control.paused()) job.progress_time = now;  // a pause is no stall
  const auto stalled = std::chrono::duration_cast<std::chrono::milliseconds>(now - job.progress_time).count();
  if (options_.stall_timeout_ms > 0 && stalled > options_.stall_timeout_ms) {
    fail_attempt(job, "no rank completed a step for " + std::to_string(stalled) + " ms (stall timeout; last step " +
                          std::to_string(job.progress_step) + ")");
    return;
  }
  const auto since_start = std::chrono::duration_cast<std::chrono::milliseconds>(now - job.started).count();
  if (static_cast<int>(job.ranks.size()) < job.world_size && since_start > options_.register_timeout_ms)
    fail_attempt(job, "only " + std::to_string(job.ranks.size()) + " of " + std::to_string(job.world_size) +
                          " ranks registered within " + std::to_string(options_.register_timeout_ms) + " ms");
}

void JobSupervisor::monitor_loop() {
  std::unique_lock lock(mu_);
  while (!shutting_down_) {
    for (auto& [id, job] : jobs_)
      if (job->state == controller::RUNNING) check_job(*job);
    changed_.wait_for(lock, kMonitorPeriod, [this] { return shutting_down_; });
  }
}

controller::RegisterReply JobSupervisor::register_rank(const controller::RegisterRequest& request) {
  check_register_request(request);
  std::lock_guard lock(mu_);
  Job& job = find(request.job_id());
  if (request.attempt() != job.attempt || job.state != controller::RUNNING)
    throw JobError(Code::kStaleAttempt, "Register: attempt " + std::to_string(request.attempt()) + " of " + job.id +
                                            " is not the running attempt (" + std::to_string(job.attempt) + ")");
  if (request.world_size() != job.world_size)
    throw JobError(Code::kInvalidArgument, "Register: world_size " + std::to_string(request.world_size()) +
                                               " differs from the job's " + std::to_string(job.world_size));
  if (request.rank() < 0 || request.rank() >= job.world_size)
    throw JobError(Code::kInvalidArgument, "Register: rank " + std::to_string(request.rank()) + " outside [0, " +
                                               std::to_string(job.world_size) + ")");
  // On this host the pid must be one of the launcher's processes (shown in the status; never signalled). A
  // pid on another host cannot be checked from here and is shown as given.
  if (request.host() == this_host() && !descends_from(static_cast<pid_t>(request.pid()), job.pid))
    throw JobError(Code::kPermissionDenied, "Register: pid " + std::to_string(request.pid()) + " on " +
                                                request.host() + " is not a process of " + job.id +
                                                "'s launcher (pid " + std::to_string(job.pid) + ")");
  Rank& r = job.ranks[request.rank()];
  r.status.Clear();
  r.status.set_rank(request.rank());
  r.status.set_host(request.host());
  r.status.set_pid(request.pid());
  r.status.set_device(request.device());
  r.last_heartbeat = Clock::now();
  *options_.log << "controller: " << job.id << ": rank " << request.rank() << " registered (pid " << request.pid()
                << " on " << request.host() << ", " << request.device() << ")" << std::endl;
  controller::RegisterReply reply;
  reply.set_heartbeat_interval_ms(options_.heartbeat_interval_ms);
  *reply.mutable_control() = job.control;
  return reply;
}

controller::HeartbeatReply JobSupervisor::heartbeat(const controller::HeartbeatRequest& request) {
  check_heartbeat_request(request);
  std::lock_guard lock(mu_);
  Job& job = find(request.job_id());
  controller::HeartbeatReply reply;
  *reply.mutable_control() = job.control;
  if (request.attempt() != job.attempt) {
    reply.set_stale(true);
    return reply;
  }
  auto it = job.ranks.find(request.rank());
  if (it == job.ranks.end())
    throw JobError(Code::kInvalidArgument, "Heartbeat: rank " + std::to_string(request.rank()) +
                                               " has not registered in attempt " + std::to_string(job.attempt));
  Rank& r = it->second;
  r.last_heartbeat = Clock::now();
  r.status.set_step(request.step());
  if (request.step() > job.progress_step) {
    job.progress_step = request.step();
    job.progress_time = r.last_heartbeat;
  }
  r.status.set_paused(request.paused());
  if (request.has_step_times()) *r.status.mutable_step_times() = request.step_times();
  r.status.set_host_rss_bytes(request.host_rss_bytes());
  if (request.finished()) r.status.set_finished(true);
  return reply;
}

void JobSupervisor::report_metrics(const controller::MetricsReport& report) {
  check_metrics_report(report);
  std::lock_guard lock(mu_);
  Job& job = find(report.job_id());
  if (report.attempt() != job.attempt) return;  // a process of an earlier attempt winding down
  if (report.rank() < 0 || report.rank() >= job.world_size)
    throw JobError(Code::kInvalidArgument, "ReportMetrics: rank " + std::to_string(report.rank()) + " outside [0, " +
                                               std::to_string(job.world_size) + ")");
  // After a restart the steps since the checkpoint are trained again: their reports replace the old ones.
  while (!job.metrics.empty() && job.metrics.back().step() >= report.step()) job.metrics.pop_back();
  if (job.metrics.size() >= options_.max_metrics_per_job) job.metrics.erase(job.metrics.begin());
  job.metrics.push_back(report);
  job.metrics.back().set_unix_time(unix_now());
  ++job.steps_total;
  job.tokens_total += report.tokens_per_s() * report.step_times().total_ms() / 1e3;
  if (report.has_val_loss()) job.last_val_loss = report.val_loss();
  changed_.notify_all();
}

controller::ControlReply JobSupervisor::control(const controller::ControlRequest& request) {
  std::lock_guard lock(mu_);
  Job& job = find(request.job_id());
  check_control_request(request);
  controller::ControlState& c = job.control;
  switch (request.action()) {
    case controller::ControlRequest::PAUSE:
      c.set_paused(true);
      c.set_pause_at_step(request.step());
      break;
    case controller::ControlRequest::RESUME:
      c.set_paused(false);
      c.clear_pause_at_step();
      break;
    case controller::ControlRequest::CHECKPOINT_NOW: c.set_checkpoint_seq(c.checkpoint_seq() + 1); break;
    case controller::ControlRequest::STOP:
      c.set_stop(true);
      c.set_paused(false);
      c.clear_pause_at_step();
      break;
  }
  *options_.log << "controller: " << job.id << ": " << controller::ControlRequest::Action_Name(request.action())
                << " requested" << std::endl;
  if (job.state == controller::PENDING && c.stop()) set_state(job, controller::STOPPED, "stopped before start");
  controller::ControlReply reply;
  *reply.mutable_control() = c;
  return reply;
}

controller::JobStatusReply JobSupervisor::status_of(const Job& job) const {
  controller::JobStatusReply s;
  s.set_job_id(job.id);
  s.set_name(job.name);
  s.set_state(job.state);
  s.set_world_size(job.world_size);
  s.set_attempt(job.attempt);
  s.set_restarts(job.restarts);
  s.set_max_restarts(job.max_restarts);
  s.set_step(job.metrics.empty() ? 0 : job.metrics.back().step());
  *s.mutable_control() = job.control;
  const auto now = Clock::now();
  for (const auto& [rank, r] : job.ranks) {
    controller::RankStatus& out = *s.add_ranks();
    out = r.status;
    out.set_seconds_since_heartbeat(std::chrono::duration<double>(now - r.last_heartbeat).count());
  }
  for (const auto& e : job.events) *s.add_events() = e;
  s.set_out_dir(job.out_dir);
  s.set_log_path(job.log_path);
  if (!job.metrics.empty()) *s.mutable_last_metrics() = job.metrics.back();
  s.set_steps_total(job.steps_total);
  s.set_tokens_total(job.tokens_total);
  if (job.last_val_loss) s.set_last_val_loss(*job.last_val_loss);
  return s;
}

controller::JobStatusReply JobSupervisor::status(const std::string& job_id) const {
  std::lock_guard lock(mu_);
  return status_of(find(job_id));
}

controller::ListJobsReply JobSupervisor::list() const {
  std::lock_guard lock(mu_);
  controller::ListJobsReply reply;
  for (const auto& [id, job] : jobs_) *reply.add_jobs() = status_of(*job);
  return reply;
}

std::vector<controller::MetricsReport> JobSupervisor::metrics(const std::string& job_id, int64_t after_step) const {
  std::lock_guard lock(mu_);
  std::vector<controller::MetricsReport> out;
  for (const auto& m : find(job_id).metrics)
    if (m.step() > after_step) out.push_back(m);
  return out;
}

bool JobSupervisor::wait_metrics(const std::string& job_id, int64_t after_step, Clock::time_point deadline,
                                 std::vector<controller::MetricsReport>* out) const {
  std::unique_lock lock(mu_);
  while (true) {
    const Job& job = find(job_id);
    for (const auto& m : job.metrics)
      if (m.step() > after_step) out->push_back(m);
    if (!out->empty()) return true;
    if (is_over(job.state) || shutting_down_) return false;
    if (changed_.wait_until(lock, deadline) == std::cv_status::timeout) return true;
  }
}

}  // namespace loom
