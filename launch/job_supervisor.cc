#include "launch/job_supervisor.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <regex>

#include "core/config.h"
#include "launch/job_supervisor_journal.h"
#include "launch/process_gang.h"

namespace loom {

using controller::JobState;
using Code = JobError::Code;

namespace {

double unix_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string this_host() {
  char name[256] = {};
  gethostname(name, sizeof name - 1);
  return name;
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

bool job_is_over(JobState s) {
  return s == controller::FINISHED || s == controller::STOPPED || s == controller::FAILED;
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
  {
    std::lock_guard lock(mu_);
    recover();
  }
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
  for (auto& [id, job] : jobs_) {
    stop_probes(*job);
    if (job_is_over(job->state) || options_.leave_jobs_running) continue;
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
  const auto& parallel = effective.parallel();
  const int64_t layout = int64_t{parallel.data()} * parallel.tensor();
  if (request.world_size() != layout) {
    std::filesystem::remove_all(dir);
    throw JobError(Code::kInvalidArgument,
                   "SubmitJob: world_size " + std::to_string(request.world_size()) +
                       " differs from parallel.data x parallel.tensor = " + std::to_string(layout) +
                       " of the config (e.g. add the override parallel.data=" +
                       std::to_string(request.world_size()) + ")");
  }
  if (parallel.has_elastic() && parallel.elastic().min_data() > parallel.data()) {
    std::filesystem::remove_all(dir);
    throw JobError(Code::kInvalidArgument, "SubmitJob: parallel.elastic.min_data (" +
                                               std::to_string(parallel.elastic().min_data()) +
                                               ") exceeds parallel.data (" + std::to_string(parallel.data()) + ")");
  }
  job->submitted.set_data(parallel.data());
  job->submitted.set_tensor(parallel.tensor());
  job->submitted.set_grad_accum_steps(effective.train().grad_accum_steps());
  job->layout = job->submitted;
  job->min_data = parallel.has_elastic() ? parallel.elastic().min_data() : parallel.data();
  job->name = request.has_name() && !request.name().empty() ? request.name() : job->id;
  job->token = random_token();
  job->token_hashes.push_back(sha256_hex(job->token));
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
    if (!job_is_over(other->state)) rules.busy_out_dirs.emplace_back(id, other->resolved_out_dir);
  try {
    job->resolved_out_dir = check_out_dir(job->out_dir, rules);
  } catch (const JobError&) {
    std::filesystem::remove_all(dir);
    throw;
  }
  Job& j = *jobs_.emplace(job->id, std::move(job)).first->second;
  set_state(j, controller::PENDING,
            "submitted: " + std::to_string(j.world_size) + " rank(s), out_dir " + j.out_dir);
  begin_attempt(j);
  return reply;
}

void JobSupervisor::set_worker_address(const std::string& address) {
  std::lock_guard lock(mu_);
  options_.worker_address = address;
}

bool JobSupervisor::job_token_matches(const std::string& job_id, const std::string& token) const {
  std::lock_guard lock(mu_);
  auto it = jobs_.find(job_id);
  if (it == jobs_.end() || token.empty()) return false;
  const std::string hash = sha256_hex(token);
  bool match = false;
  for (const std::string& h : it->second->token_hashes) match |= secrets_equal(hash, h);
  return match;
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
  journal(job);
  changed_.notify_all();
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
  const pid_t keeper = job.gang ? job.gang->identity().keeper : -1;
  if (request.host() == this_host() && !descends_from(static_cast<pid_t>(request.pid()), keeper))
    throw JobError(Code::kPermissionDenied, "Register: pid " + std::to_string(request.pid()) + " on " +
                                                request.host() + " is not a process of " + job.id +
                                                "'s launcher (session of pid " + std::to_string(keeper) + ")");
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
  if (request.rank() < 0 || request.rank() >= job.world_size)
    throw JobError(Code::kInvalidArgument, "Heartbeat: rank " + std::to_string(request.rank()) + " outside [0, " +
                                               std::to_string(job.world_size) + ")");
  auto it = job.ranks.find(request.rank());
  if (it == job.ranks.end()) {
    // A rank of the current attempt the controller does not know: it was restarted and took the job up from
    // its journal (the ranks register again), or the rank skipped Register. Either way: register first.
    reply.set_register_again(true);
    return reply;
  }
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
  // Not started yet (or between attempts, probing hosts): nothing runs that could write a checkpoint.
  if (c.stop() && !job.gang && !job_is_over(job.state)) {
    stop_probes(job);
    set_state(job, controller::STOPPED, job.attempt == 0 ? "stopped before start" : "stopped between attempts");
  } else {
    journal(job);
  }
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
  *s.mutable_layout() = job.layout;
  s.set_last_checkpoint(job.last_checkpoint);
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
    if (job_is_over(job.state) || shutting_down_) return false;
    if (changed_.wait_until(lock, deadline) == std::cv_status::timeout) return true;
  }
}

}  // namespace loom
