#include "launch/prometheus_text.h"

#include <algorithm>
#include <map>
#include <sstream>

#include "launch/job_supervisor.h"

namespace loom {
namespace {

// A label value in the exposition format: backslash, double quote and newline escaped.
std::string label_value(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

constexpr controller::JobState kStates[] = {controller::PENDING,  controller::RUNNING, controller::RESTARTING,
                                            controller::FINISHED, controller::STOPPED, controller::FAILED};

class Exposition {
 public:
  Exposition() { out_.precision(17); }
  void family(const char* name, const char* type, const char* help) {
    out_ << "# HELP " << name << ' ' << help << "\n# TYPE " << name << ' ' << type << '\n';
  }
  // name{labels} value
  void sample(const char* name, const std::string& labels, double value) {
    out_ << name;
    if (!labels.empty()) out_ << '{' << labels << '}';
    out_ << ' ' << value << '\n';
  }
  std::string text() const { return out_.str(); }

 private:
  std::ostringstream out_;
};

std::string job_label(const controller::JobStatusReply& s) { return "loom_job=\"" + label_value(s.job_id()) + "\""; }
std::string rank_label(const controller::JobStatusReply& s, const controller::RankStatus& r) {
  return job_label(s) + ",rank=\"" + std::to_string(r.rank()) + "\"";
}

}  // namespace

std::string prometheus_text(const controller::ListJobsReply& jobs) {
  Exposition e;
  e.family("loom_controller_up", "gauge", "1 while the controller serves.");
  e.sample("loom_controller_up", "", 1);
  e.family("loom_jobs", "gauge", "Jobs in each state.");
  std::map<controller::JobState, int> by_state;
  for (const auto& s : jobs.jobs()) ++by_state[s.state()];
  for (const auto state : kStates)
    e.sample("loom_jobs", "state=\"" + job_state_name(state) + "\"", by_state[state]);

  e.family("loom_job_info", "gauge", "Job metadata; the value is always 1.");
  for (const auto& s : jobs.jobs())
    e.sample("loom_job_info", job_label(s) + ",name=\"" + label_value(s.name()) + "\"", 1);
  e.family("loom_job_state", "gauge", "1 for the job's current state, 0 for the others.");
  for (const auto& s : jobs.jobs())
    for (const auto state : kStates)
      e.sample("loom_job_state", job_label(s) + ",state=\"" + job_state_name(state) + "\"", s.state() == state);

  struct Family {
    const char *name, *type, *help;
    double (*value)(const controller::JobStatusReply&);
    bool (*present)(const controller::JobStatusReply&);
  };
  const auto always = [](const controller::JobStatusReply&) { return true; };
  const auto reported = [](const controller::JobStatusReply& s) { return s.has_last_metrics(); };
  const Family job_families[] = {
      {"loom_job_restarts_total", "counter", "Restarts of the job after a detected failure.",
       [](const auto& s) { return double(s.restarts()); }, always},
      {"loom_job_steps_total", "counter", "Training steps reported by rank 0 (steps trained again after a restart "
       "count again).", [](const auto& s) { return double(s.steps_total()); }, always},
      {"loom_job_tokens_total", "counter", "Tokens trained on in the reported steps.",
       [](const auto& s) { return s.tokens_total(); }, always},
      {"loom_job_world_size", "gauge", "Ranks of the job.", [](const auto& s) { return double(s.world_size()); },
       always},
      {"loom_job_step", "gauge", "Last training step reported by rank 0.",
       [](const auto& s) { return double(s.step()); }, always},
      {"loom_job_loss", "gauge", "Training loss of the last step.",
       [](const auto& s) { return s.last_metrics().loss(); }, reported},
      {"loom_job_val_loss", "gauge", "Validation loss of the newest validation.",
       [](const auto& s) { return s.last_val_loss(); }, [](const auto& s) { return s.has_last_val_loss(); }},
      {"loom_job_learning_rate", "gauge", "Learning rate of the last step.",
       [](const auto& s) { return s.last_metrics().lr(); }, reported},
      {"loom_job_grad_norm", "gauge", "Global gradient norm of the last step (before clipping).",
       [](const auto& s) { return s.last_metrics().grad_norm(); }, reported},
      {"loom_job_tokens_per_second", "gauge", "Training throughput of the last step.",
       [](const auto& s) { return s.last_metrics().tokens_per_s(); }, reported},
      {"loom_job_mfu_ratio", "gauge", "Model FLOPs utilisation of the last step (0 to 1).",
       [](const auto& s) { return s.last_metrics().mfu(); }, reported},
      {"loom_job_device_memory_bytes", "gauge", "Bytes in use by rank 0's device allocator.",
       [](const auto& s) { return double(s.last_metrics().device_bytes_in_use()); }, reported},
      {"loom_job_communication_seconds", "gauge", "Rank 0's collective time in the last step (overlapped included).",
       [](const auto& s) { return s.last_metrics().step_times().communication_ms() / 1e3; }, reported},
      {"loom_job_exposed_communication_seconds", "gauge",
       "Rank 0's collective time the computation waited for in the last step.",
       [](const auto& s) { return s.last_metrics().step_times().exposed_communication_ms() / 1e3; }, reported},
  };
  for (const Family& f : job_families) {
    e.family(f.name, f.type, f.help);
    for (const auto& s : jobs.jobs())
      if (f.present(s)) e.sample(f.name, job_label(s), f.value(s));
  }

  e.family("loom_rank_step_time_seconds", "gauge",
           "Time of the rank's last step by phase; the phases add up to loom_rank_step_seconds.");
  for (const auto& s : jobs.jobs())
    for (const auto& r : s.ranks()) {
      const auto& t = r.step_times();
      const double parts[] = {t.data_ms(), t.forward_ms(), t.backward_ms(), t.grad_sync_ms(), t.optimizer_ms()};
      const char* names[] = {"data", "forward", "backward", "grad_sync", "optimizer"};
      double sum = 0;
      for (int i = 0; i < 5; ++i) {
        e.sample("loom_rank_step_time_seconds", rank_label(s, r) + ",phase=\"" + names[i] + "\"", parts[i] / 1e3);
        sum += parts[i];
      }
      e.sample("loom_rank_step_time_seconds", rank_label(s, r) + ",phase=\"other\"",
               std::max(0.0, t.total_ms() - sum) / 1e3);
    }
  struct RankFamily {
    const char *name, *help;
    double (*value)(const controller::RankStatus&);
  };
  const RankFamily rank_families[] = {
      {"loom_rank_step_seconds", "Time of the rank's last step.",
       [](const auto& r) { return r.step_times().total_ms() / 1e3; }},
      {"loom_rank_communication_seconds", "The rank's collective time in its last step (overlapped included).",
       [](const auto& r) { return r.step_times().communication_ms() / 1e3; }},
      {"loom_rank_exposed_communication_seconds", "The rank's collective time its computation waited for.",
       [](const auto& r) { return r.step_times().exposed_communication_ms() / 1e3; }},
      {"loom_rank_heartbeat_age_seconds", "Seconds since the rank's last heartbeat.",
       [](const auto& r) { return r.seconds_since_heartbeat(); }},
      {"loom_rank_resident_memory_bytes", "Resident host memory of the rank's process.",
       [](const auto& r) { return double(r.host_rss_bytes()); }},
  };
  for (const RankFamily& f : rank_families) {
    e.family(f.name, "gauge", f.help);
    for (const auto& s : jobs.jobs())
      for (const auto& r : s.ranks()) e.sample(f.name, rank_label(s, r), f.value(r));
  }
  return e.text();
}

}  // namespace loom
