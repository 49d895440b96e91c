// JobSupervisor: placing, starting, watching and ending a job's attempts (launch/job_supervisor.h).
#include <sys/wait.h>

#include <cstring>
#include <filesystem>

#include "core/checkpoint.h"
#include "launch/job_supervisor.h"
#include "launch/job_supervisor_journal.h"
#include "launch/job_supervisor_layout.h"

extern char** environ;

namespace loom {

namespace {

constexpr auto kMonitorPeriod = std::chrono::milliseconds(50);

std::string describe_exit(int status) {
  if (WIFEXITED(status)) return "launcher exited with status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return std::string("launcher killed by signal ") + strsignal(WTERMSIG(status));
  return "launcher ended with wait status " + std::to_string(status);
}

int64_t milliseconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t).count();
}

// The newest complete checkpoint in out_dir ("" when none, or when this host cannot read the folder).
std::string newest_checkpoint(const std::string& out_dir) {
  try {
    return latest_checkpoint(out_dir);
  } catch (const Error&) {
    return "";
  }
}

}  // namespace

std::vector<std::pair<std::string, std::string>> JobSupervisor::job_variables(const Job& job) const {
  return {{"LOOM_CONTROLLER_ADDRESS", options_.worker_address},
          {"LOOM_JOB_ID", job.id},
          {"LOOM_JOB_TOKEN", job.token},
          {"LOOM_JOB_ATTEMPT", std::to_string(job.attempt)},
          {"LOOM_HEARTBEAT_MS", std::to_string(options_.heartbeat_interval_ms)},
          {"LOOM_CONTROLLER_CA", options_.worker_ca_file}};
}

// The controller's environment without its secrets and without the variables of the controller's own
// clients (LOOM_CONTROLLER_TOKEN may hold the admin token) or of an outer job.
std::vector<std::string> JobSupervisor::clean_environment() const {
  std::vector<std::string> env;
  for (char** e = environ; *e; ++e) {
    const std::string entry = *e;
    bool dropped = entry.rfind("LOOM_CONTROLLER_", 0) == 0 || entry.rfind("LOOM_JOB_", 0) == 0 ||
                   entry.rfind("LOOM_HEARTBEAT_MS=", 0) == 0;
    for (const std::string& secret : options_.secrets)
      dropped |= !secret.empty() && entry.find(secret) != std::string::npos;
    if (!dropped) env.push_back(entry);
  }
  return env;
}

std::vector<std::string> JobSupervisor::job_environment(const Job& job) const {
  std::vector<std::string> env = clean_environment();
  for (const auto& [name, value] : job_variables(job)) env.push_back(name + "=" + value);
  return env;
}

void JobSupervisor::begin_attempt(Job& job, std::chrono::milliseconds delay) {
  job.placing = true;
  job.probe_at = Clock::now() + delay;
  check_probes(job);  // starts at once when due, else from the monitor thread
}

void JobSupervisor::stop_probes(Job& job) {
  for (Probe& p : job.probes) {
    if (p.pid <= 0) continue;
    kill_session(p.pid);
    waitpid(p.pid, nullptr, 0);
  }
  job.probes.clear();
  job.placing = false;
}

void JobSupervisor::start_probes(Job& job) {
  // Each probe leads a session of its own (posix_spawn, like a gang), so a hung one is killed whole.
  const std::vector<std::string> env = clean_environment();
  for (const controller::HostSlots& host : options_.hosts) {
    Probe& p = job.probes.emplace_back();
    p.host = host;
    try {
      p.pid = spawn_session({"/bin/sh", "-c", options_.host_probe, "loom-host-probe", host.name()}, env,
                            options_.jobs_dir + "/" + job.id + "/probe_" + host.name() + ".log");
    } catch (const Error& e) {
      *options_.log << "controller: " << job.id << ": " << e.what() << std::endl;
    }
  }
  job.probes_started = Clock::now();
}

void JobSupervisor::check_probes(Job& job) {
  if (job.probes.empty()) {
    // Not before the workers' address is known (a controller taking its jobs up learns it after binding).
    if (Clock::now() < job.probe_at || options_.worker_address.empty()) return;
    if (!options_.hosts.empty()) {
      start_probes(job);
      return;
    }
    job.placing = false;
    start_attempt(job, job.submitted);
    return;
  }
  const bool late = milliseconds_since(job.probes_started) > options_.probe_timeout_ms;
  bool waiting = false;
  for (Probe& p : job.probes) {
    if (p.pid <= 0) continue;
    if (leader_has_exited(p.pid)) {
      kill_session(p.pid);  // anything the probe left behind, before its pid is released
      int status = 0;
      waitpid(p.pid, &status, 0);
      p.up = WIFEXITED(status) && WEXITSTATUS(status) == 0;
      p.pid = -1;
    } else if (late) {
      kill_session(p.pid);
      waitpid(p.pid, nullptr, 0);
      p.pid = -1;
    } else {
      waiting = true;
    }
  }
  if (waiting) return;
  std::vector<controller::HostSlots> up;
  std::string down;
  for (const Probe& p : job.probes) {
    if (p.up)
      up.push_back(p.host);
    else
      down += (down.empty() ? "" : ", ") + p.host.name();
  }
  job.probes.clear();
  job.placing = false;
  const auto layout = fit_layout(job.submitted, job.min_data, up);
  if (!layout) {
    int slots = 0;
    for (const auto& h : up) slots += h.slots();
    const std::string why =
        "no layout fits the " + std::to_string(slots) + " slot(s) of the hosts that answered (" +
        (down.empty() ? "none down" : "down: " + down) + "): " + std::to_string(job.submitted.tensor()) +
        " tensor ranks times at least parallel.elastic.min_data = " + std::to_string(job.min_data) +
        " data ranks, dividing parallel.data x train.grad_accum_steps = " +
        std::to_string(job.submitted.data() * job.submitted.grad_accum_steps());
    if (job.restarts >= job.max_restarts) {
      set_state(job, controller::FAILED, why + "; giving up after " + std::to_string(job.restarts) + " restart(s)");
      return;
    }
    ++job.restarts;
    set_state(job, controller::RESTARTING,
              why + "; probing again in " + std::to_string(options_.probe_timeout_ms) + " ms (restart " +
                  std::to_string(job.restarts) + " of " + std::to_string(job.max_restarts) + ")");
    begin_attempt(job, std::chrono::milliseconds(options_.probe_timeout_ms));
    return;
  }
  if (!down.empty())
    *options_.log << "controller: " << job.id << ": host(s) not answering the probe: " << down << std::endl;
  start_attempt(job, *layout);
}

// The keeper leads a new session (the job's "gang") and starts the launcher, output in the attempt's log.
void JobSupervisor::start_attempt(Job& job, const controller::JobLayout& layout) {
  ++job.attempt;
  job.ranks.clear();
  job.layout = layout;
  job.world_size = layout.data() * layout.tensor();
  job.last_checkpoint = newest_checkpoint(job.resolved_out_dir);
  const std::string dir = options_.jobs_dir + "/" + job.id + "/";
  const std::string attempt = std::to_string(job.attempt);
  job.log_path = dir + "attempt_" + attempt + ".log";
  job.claim_file = dir + "attempt_" + attempt + ".keeper";
  job.status_file = dir + "attempt_" + attempt + ".status";
  if (job.token.empty()) {  // taken up from the journal: the plaintext token was never written down
    job.token = random_token();
    job.token_hashes.push_back(sha256_hex(job.token));
  }

  std::vector<std::string> args = {options_.launcher};
  if (!job.device_flag.empty()) args.push_back(job.device_flag);
  args.insert(args.end(), options_.launcher_args.begin(), options_.launcher_args.end());
  try {
    if (layout.hosts_size() > 0) {
      const std::string hostfile = dir + "hosts_" + attempt + ".txt";
      write_hostfile(hostfile, {layout.hosts().begin(), layout.hosts().end()});
      args.insert(args.end(), {"--hostfile", hostfile});
    }
    args.insert(args.end(), {"--np", std::to_string(job.world_size), "--loom", options_.loom_binary});
    for (const auto& [name, value] : job_variables(job)) args.insert(args.end(), {"--mpi", "-x", "--mpi", name});
    args.insert(args.end(), {"--", "train", job.config_path});
    args.insert(args.end(), job.args.begin(), job.args.end());
    for (const std::string& o : layout_overrides(job.submitted, layout)) args.push_back(o);
    args.push_back("train.resume=latest");
    // Journalled before the keeper starts: a controller that dies in between finds the claim file to settle.
    journal(job);
    job.gang = Gang::start(options_.keeper, job.claim_file, job.status_file, args, job_environment(job),
                           job.log_path);
  } catch (const Error& e) {
    job.claim_file.clear();
    set_state(job, controller::FAILED, e.what());
    return;
  }
  job.started = job.progress_time = Clock::now();
  job.progress_step = -1;
  set_state(job, controller::RUNNING,
            "attempt " + attempt + " started (keeper pid " + std::to_string(job.gang->identity().keeper) + ", " +
                describe_layout(layout) + ", from " +
                (job.last_checkpoint.empty() ? "the start" : job.last_checkpoint) + ", log " + job.log_path + ")");
}

// SIGKILL to every process of the attempt's session (mpirun starts ranks in process groups of their own,
// but in its session), the keeper last. A registered rank's pid plays no part.
void JobSupervisor::kill_gang(Job& job) {
  if (job.gang && !job.gang->kill())
    *options_.log << "controller: " << job.id << ": warning: processes of session " << job.gang->identity().keeper
                  << " still alive after SIGKILL" << std::endl;
  job.gang.reset();
  // The attempt is over: the journal no longer names its claim, so a restarted controller does not settle it
  // a second time.
  job.claim_file.clear();
  job.status_file.clear();
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
    begin_attempt(job);
  }
}

void JobSupervisor::end_attempt(Job& job, std::optional<int> wait_status, const std::string& when) {
  // Stragglers, if any, die before the keeper does: until then no other session can take its number.
  kill_gang(job);
  if (!wait_status) {
    fail_attempt(job, "the attempt's keeper ended" + when + " without the launcher's exit status");
  } else if (WIFEXITED(*wait_status) && WEXITSTATUS(*wait_status) == 0) {
    const std::string step = std::to_string(job.metrics.empty() ? 0 : job.metrics.back().step());
    job.last_checkpoint = newest_checkpoint(job.resolved_out_dir);
    if (job.control.stop())
      set_state(job, controller::STOPPED, "stopped on request at step " + step + when);
    else
      set_state(job, controller::FINISHED, "launcher exited 0 at step " + step + when);
  } else {
    fail_attempt(job, describe_exit(*wait_status) + when);
  }
}

void JobSupervisor::check_job(Job& job) {
  if (job.placing) {
    check_probes(job);
    return;
  }
  if (job.state != controller::RUNNING || !job.gang) return;
  if (job.gang->launcher_done()) {
    end_attempt(job, job.gang->launcher_status(), "");
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
      if (!job_is_over(job->state)) check_job(*job);
    changed_.wait_for(lock, kMonitorPeriod, [this] { return shutting_down_; });
  }
}

}  // namespace loom
