#include "launch/dashboard_server.h"

#include <httplib.h>

#include <condition_variable>
#include <deque>
#include <filesystem>
#include <mutex>
#include <sstream>

namespace loom {

namespace {

nlohmann::json step_times_json(const controller::StepTimes& t) {
  return {{"data_ms", t.data_ms()},
          {"forward_backward_ms", t.forward_backward_ms()},
          {"optimizer_ms", t.optimizer_ms()},
          {"communication_ms", t.communication_ms()},
          {"exposed_communication_ms", t.exposed_communication_ms()},
          {"total_ms", t.total_ms()}};
}

nlohmann::json summary_json(const controller::JobStatusReply& s) {
  return {{"id", s.job_id()},         {"name", s.name()},       {"state", job_state_name(s.state())},
          {"world_size", s.world_size()}, {"attempt", s.attempt()}, {"restarts", s.restarts()},
          {"max_restarts", s.max_restarts()}, {"step", s.step()},   {"paused", s.control().paused()},
          {"out_dir", s.out_dir()}};
}

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

// At most `limit` reports, evenly spaced, always with the newest: the page redraws every second, and a long
// job's full history would make each refresh slow without changing what a chart a few hundred pixels wide shows.
std::vector<controller::MetricsReport> thinned(std::vector<controller::MetricsReport> all, size_t limit) {
  if (all.size() <= limit) return all;
  const size_t stride = (all.size() + limit - 1) / limit;
  std::vector<controller::MetricsReport> out;
  for (size_t i = (all.size() - 1) % stride; i < all.size(); i += stride) out.push_back(std::move(all[i]));
  return out;
}

constexpr size_t kMaxChartPoints = 2000;
constexpr size_t kMaxRequestBodyBytes = 1 << 16;  // every route is a GET

// httplib's task queue with a bound: `threads` workers, and enqueue() (called by the accept loop, one task per
// accepted connection) blocks while `max_waiting` connections already wait, so the server stops accepting
// rather than piling up connections. Hand-written because cpp-httplib 0.11's own ThreadPool has neither a
// bound nor a size other than its compile-time default; the interface is its TaskQueue.
class BoundedTaskQueue final : public httplib::TaskQueue {
 public:
  BoundedTaskQueue(size_t threads, size_t max_waiting) : max_waiting_(max_waiting) {
    for (size_t i = 0; i < threads; ++i) workers_.emplace_back([this] { work(); });
  }
  ~BoundedTaskQueue() override {
    if (!workers_.empty()) shutdown();
  }
  void enqueue(std::function<void()> task) override {
    std::unique_lock lock(mu_);
    room_.wait(lock, [this] { return waiting_.size() < max_waiting_ || stopping_; });
    waiting_.push_back(std::move(task));
    ready_.notify_one();
  }
  // Serves what is queued, then joins the workers (httplib calls it once its accept loop has ended).
  void shutdown() override {
    {
      std::lock_guard lock(mu_);
      stopping_ = true;
    }
    ready_.notify_all();
    room_.notify_all();
    for (auto& t : workers_) t.join();
    workers_.clear();
  }

 private:
  void work() {
    while (true) {
      std::function<void()> task;
      {
        std::unique_lock lock(mu_);
        ready_.wait(lock, [this] { return !waiting_.empty() || stopping_; });
        if (waiting_.empty()) return;
        task = std::move(waiting_.front());
        waiting_.pop_front();
      }
      room_.notify_one();
      task();  // serves one connection and closes it
    }
  }

  const size_t max_waiting_;
  std::mutex mu_;
  std::condition_variable ready_, room_;
  std::deque<std::function<void()>> waiting_;
  bool stopping_ = false;
  std::vector<std::thread> workers_;
};

}  // namespace

nlohmann::json job_json(const controller::JobStatusReply& s, const std::vector<controller::MetricsReport>& metrics) {
  nlohmann::json j = summary_json(s);
  j["ranks"] = nlohmann::json::array();
  for (const auto& r : s.ranks())
    j["ranks"].push_back({{"rank", r.rank()},
                          {"host", r.host()},
                          {"pid", r.pid()},
                          {"device", r.device()},
                          {"step", r.step()},
                          {"paused", r.paused()},
                          {"finished", r.finished()},
                          {"seconds_since_heartbeat", r.seconds_since_heartbeat()},
                          {"host_rss_bytes", r.host_rss_bytes()},
                          {"step_times", step_times_json(r.step_times())}});
  j["events"] = nlohmann::json::array();
  for (const auto& e : s.events())
    j["events"].push_back({{"time", e.unix_time()}, {"state", job_state_name(e.state())}, {"message", e.message()}});
  nlohmann::json series = {{"step", nlohmann::json::array()},         {"time", nlohmann::json::array()},
                           {"loss", nlohmann::json::array()},         {"tokens_per_s", nlohmann::json::array()},
                           {"mfu", nlohmann::json::array()},          {"data_ms", nlohmann::json::array()},
                           {"forward_backward_ms", nlohmann::json::array()},
                           {"optimizer_ms", nlohmann::json::array()}};
  for (const auto& m : metrics) {
    series["step"].push_back(m.step());
    series["time"].push_back(m.unix_time());
    series["loss"].push_back(m.loss());
    series["tokens_per_s"].push_back(m.tokens_per_s());
    series["mfu"].push_back(m.mfu());
    series["data_ms"].push_back(m.step_times().data_ms());
    series["forward_backward_ms"].push_back(m.step_times().forward_backward_ms());
    series["optimizer_ms"].push_back(m.step_times().optimizer_ms());
  }
  j["metrics"] = std::move(series);
  return j;
}

std::string prometheus_text(const controller::ListJobsReply& jobs) {
  std::ostringstream out;
  out.precision(17);
  auto family = [&](const char* name, const char* type, const char* help) {
    out << "# HELP " << name << ' ' << help << "\n# TYPE " << name << ' ' << type << '\n';
  };
  auto job_label = [](const controller::JobStatusReply& s) { return "job=\"" + label_value(s.job_id()) + "\""; };

  family("loom_job_info", "gauge", "Job metadata; the value is always 1.");
  for (const auto& s : jobs.jobs())
    out << "loom_job_info{" << job_label(s) << ",name=\"" << label_value(s.name()) << "\",state=\""
        << job_state_name(s.state()) << "\"} 1\n";
  family("loom_job_restarts_total", "counter", "Restarts of the job after a detected failure.");
  for (const auto& s : jobs.jobs()) out << "loom_job_restarts_total{" << job_label(s) << "} " << s.restarts() << '\n';
  family("loom_job_world_size", "gauge", "Ranks of the job.");
  for (const auto& s : jobs.jobs()) out << "loom_job_world_size{" << job_label(s) << "} " << s.world_size() << '\n';
  family("loom_job_step", "gauge", "Last training step reported by rank 0.");
  for (const auto& s : jobs.jobs()) out << "loom_job_step{" << job_label(s) << "} " << s.step() << '\n';

  struct Gauge {
    const char* name;
    const char* help;
    double (*value)(const controller::MetricsReport&);
  };
  const Gauge gauges[] = {
      {"loom_job_loss", "Training loss of the last step.", [](const auto& m) { return m.loss(); }},
      {"loom_job_tokens_per_second", "Training throughput of the last step.",
       [](const auto& m) { return m.tokens_per_s(); }},
      {"loom_job_mfu_ratio", "Model FLOPs utilisation of the last step (0 to 1).", [](const auto& m) { return m.mfu(); }},
      {"loom_job_device_memory_bytes", "Bytes in use by rank 0's device allocator.",
       [](const auto& m) { return static_cast<double>(m.device_bytes_in_use()); }},
  };
  for (const Gauge& g : gauges) {
    family(g.name, "gauge", g.help);
    for (const auto& s : jobs.jobs())
      if (s.has_last_metrics()) out << g.name << '{' << job_label(s) << "} " << g.value(s.last_metrics()) << '\n';
  }

  family("loom_rank_step_time_seconds", "gauge", "Time of the rank's last step, by phase.");
  for (const auto& s : jobs.jobs())
    for (const auto& r : s.ranks()) {
      const auto& t = r.step_times();
      const std::pair<const char*, double> phases[] = {{"data", t.data_ms()},
                                                       {"forward_backward", t.forward_backward_ms()},
                                                       {"optimizer", t.optimizer_ms()},
                                                       {"total", t.total_ms()}};
      for (const auto& [phase, ms] : phases)
        out << "loom_rank_step_time_seconds{" << job_label(s) << ",rank=\"" << r.rank() << "\",phase=\"" << phase
            << "\"} " << ms / 1e3 << '\n';
    }
  family("loom_rank_heartbeat_age_seconds", "gauge", "Seconds since the rank's last heartbeat.");
  for (const auto& s : jobs.jobs())
    for (const auto& r : s.ranks())
      out << "loom_rank_heartbeat_age_seconds{" << job_label(s) << ",rank=\"" << r.rank() << "\"} "
          << r.seconds_since_heartbeat() << '\n';
  family("loom_rank_resident_memory_bytes", "gauge", "Resident host memory of the rank's process.");
  for (const auto& s : jobs.jobs())
    for (const auto& r : s.ranks())
      out << "loom_rank_resident_memory_bytes{" << job_label(s) << ",rank=\"" << r.rank() << "\"} "
          << r.host_rss_bytes() << '\n';
  return out.str();
}

DashboardServer::DashboardServer(const JobSupervisor& jobs, const DashboardOptions& options)
    : jobs_(jobs), server_(std::make_unique<httplib::Server>()) {
  for (const std::string& dir : {options.static_dir, options.vendor_dir})
    if (!std::filesystem::is_directory(dir))
      fail("dashboard: folder \"", dir, "\" not found (static files: launch/dashboard; the chart library: run "
           "scripts/setup.sh)");
  if (!server_->set_mount_point("/vendor", options.vendor_dir) || !server_->set_mount_point("/", options.static_dir))
    fail("dashboard: cannot serve ", options.static_dir, " / ", options.vendor_dir);
  LOOM_CHECK(options.max_connections > 0 && options.idle_timeout_s > 0 && options.io_timeout_s > 0,
             "dashboard: max_connections (", options.max_connections, "), idle_timeout_s (", options.idle_timeout_s,
             ") and io_timeout_s (", options.io_timeout_s, ") must be positive");
  const auto connections = static_cast<size_t>(options.max_connections);
  server_->new_task_queue = [connections] { return new BoundedTaskQueue(connections, connections); };
  server_->set_keep_alive_timeout(options.idle_timeout_s);
  server_->set_read_timeout(options.io_timeout_s, 0);
  server_->set_write_timeout(options.io_timeout_s, 0);
  server_->set_payload_max_length(kMaxRequestBodyBytes);

  server_->Get("/api/jobs", [this](const httplib::Request&, httplib::Response& res) {
    nlohmann::json list = nlohmann::json::array();
    const controller::ListJobsReply all = jobs_.list();
    for (const auto& s : all.jobs()) list.push_back(summary_json(s));
    res.set_content(list.dump(), "application/json");
  });
  server_->Get(R"(/api/jobs/([A-Za-z0-9_.-]+))", [this](const httplib::Request& req, httplib::Response& res) {
    const std::string id = req.matches[1];
    try {
      res.set_content(job_json(jobs_.status(id), thinned(jobs_.metrics(id, 0), kMaxChartPoints)).dump(),
                      "application/json");
    } catch (const JobError& e) {
      res.status = 404;
      res.set_content(nlohmann::json({{"error", e.what()}}).dump(), "application/json");
    }
  });
  server_->Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(prometheus_text(jobs_.list()), "text/plain; version=0.0.4; charset=utf-8");
  });
  server_->set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    std::string what = "unknown error";
    try {
      std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
    }
    res.status = 500;
    res.set_content(nlohmann::json({{"error", what}}).dump(), "application/json");
  });

  port_ = options.port == 0 ? server_->bind_to_any_port(options.host) : options.port;
  if (port_ <= 0 || (options.port != 0 && !server_->bind_to_port(options.host, options.port)))
    fail("dashboard: cannot listen on ", options.host, ":", options.port);
  thread_ = std::thread([this] { server_->listen_after_bind(); });
}

DashboardServer::~DashboardServer() {
  server_->stop();
  thread_.join();
}

}  // namespace loom
