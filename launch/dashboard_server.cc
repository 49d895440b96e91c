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
          {"forward_ms", t.forward_ms()},
          {"backward_ms", t.backward_ms()},
          {"grad_sync_ms", t.grad_sync_ms()},
          {"optimizer_ms", t.optimizer_ms()},
          {"communication_ms", t.communication_ms()},
          {"exposed_communication_ms", t.exposed_communication_ms()},
          {"total_ms", t.total_ms()}};
}

nlohmann::json ranks_json(const controller::JobStatusReply& s) {
  nlohmann::json ranks = nlohmann::json::array();
  for (const auto& r : s.ranks())
    ranks.push_back({{"rank", r.rank()},
                     {"host", r.host()},
                     {"pid", r.pid()},
                     {"device", r.device()},
                     {"step", r.step()},
                     {"paused", r.paused()},
                     {"finished", r.finished()},
                     {"seconds_since_heartbeat", r.seconds_since_heartbeat()},
                     {"host_rss_bytes", r.host_rss_bytes()},
                     {"step_times", step_times_json(r.step_times())}});
  return ranks;
}

nlohmann::json events_json(const controller::JobStatusReply& s) {
  nlohmann::json events = nlohmann::json::array();
  for (const auto& e : s.events())
    events.push_back({{"time", e.unix_time()}, {"state", job_state_name(e.state())}, {"message", e.message()}});
  return events;
}

nlohmann::json summary_json(const controller::JobStatusReply& s) {
  return {{"id", s.job_id()},         {"name", s.name()},       {"state", job_state_name(s.state())},
          {"world_size", s.world_size()}, {"attempt", s.attempt()}, {"restarts", s.restarts()},
          {"max_restarts", s.max_restarts()}, {"step", s.step()},   {"paused", s.control().paused()},
          {"out_dir", s.out_dir()}};
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

// Run folders are "run1", "run2", ... in the order given.
std::string folder_run_id(size_t index) { return "run" + std::to_string(index + 1); }
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
  j["ranks"] = ranks_json(s);
  j["events"] = events_json(s);
  RunSeries series;
  for (const auto& m : metrics) series.add(m);
  j["metrics"] = series.to_json(0)["series"];
  return j;
}

DashboardServer::DashboardServer(const JobSupervisor& jobs, const DashboardOptions& options)
    : DashboardServer(&jobs, {}, options) {}

DashboardServer::DashboardServer(std::vector<std::string> run_dirs, const DashboardOptions& options)
    : DashboardServer(nullptr, std::move(run_dirs), options) {}

DashboardServer::DashboardServer(const JobSupervisor* jobs, std::vector<std::string> run_dirs,
                                 const DashboardOptions& options)
    : jobs_(jobs), run_dirs_(std::move(run_dirs)), server_(std::make_unique<httplib::Server>()) {
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

  const auto json_reply = [](httplib::Response& res, const nlohmann::json& j) {
    res.set_content(j.dump(), "application/json");
  };
  const auto not_found = [](httplib::Response& res, const std::string& what) {
    res.status = 404;
    res.set_content(nlohmann::json({{"error", what}}).dump(), "application/json");
  };
  server_->Get("/api/runs", [this, json_reply](const httplib::Request&, httplib::Response& res) {
    json_reply(res, runs_json());
  });
  server_->Get(R"(/api/runs/([A-Za-z0-9_.-]+))", [=, this](const httplib::Request& req, httplib::Response& res) {
    try {
      json_reply(res, run_json(req.matches[1]));
    } catch (const JobError& e) {
      not_found(res, e.what());
    }
  });
  if (jobs_) {
    server_->Get("/api/jobs", [this, json_reply](const httplib::Request&, httplib::Response& res) {
      nlohmann::json list = nlohmann::json::array();
      const controller::ListJobsReply all = jobs_->list();
      for (const auto& s : all.jobs()) list.push_back(summary_json(s));
      json_reply(res, list);
    });
    server_->Get(R"(/api/jobs/([A-Za-z0-9_.-]+))", [=, this](const httplib::Request& req, httplib::Response& res) {
      const std::string id = req.matches[1];
      try {
        json_reply(res, job_json(jobs_->status(id), thinned(jobs_->metrics(id, 0), kMaxChartPoints)));
      } catch (const JobError& e) {
        not_found(res, e.what());
      }
    });
    server_->Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
      res.set_content(prometheus_text(jobs_->list()), "text/plain; version=0.0.4; charset=utf-8");
    });
  }
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

nlohmann::json DashboardServer::folder_series(const std::string& dir) const {
  std::lock_guard lock(tails_mu_);
  auto& tail = tails_[dir];
  if (!tail) tail = std::make_unique<MetricsFileTail>(dir + "/metrics.jsonl");
  if (!tail->update() || tail->series().size() == 0) return nullptr;
  return tail->series().to_json(kMaxChartPoints);
}

nlohmann::json DashboardServer::runs_json() const {
  nlohmann::json runs = nlohmann::json::array();
  if (jobs_) {
    const controller::ListJobsReply all = jobs_->list();
    for (const auto& s : all.jobs()) {
      nlohmann::json run = run_folder_summary(s.job_id(), s.out_dir());
      run["name"] = s.name();
      run["state"] = job_state_name(s.state());
      run["step"] = s.step();
      runs.push_back(std::move(run));
    }
  } else {
    for (size_t i = 0; i < run_dirs_.size(); ++i) runs.push_back(run_folder_summary(folder_run_id(i), run_dirs_[i]));
  }
  return {{"mode", jobs_ ? "controller" : "folders"}, {"runs", std::move(runs)}};
}

nlohmann::json DashboardServer::run_json(const std::string& id) const {
  if (!jobs_) {
    for (size_t i = 0; i < run_dirs_.size(); ++i) {
      if (folder_run_id(i) != id) continue;
      nlohmann::json run = run_folder_summary(id, run_dirs_[i]);
      const nlohmann::json series = folder_series(run_dirs_[i]);
      run.update(series.is_null() ? RunSeries().to_json(0) : series);
      return run;
    }
    throw JobError(JobError::Code::kNotFound, "no run " + id);
  }
  const controller::JobStatusReply s = jobs_->status(id);  // throws kNotFound
  nlohmann::json run = run_folder_summary(id, s.out_dir());
  run["name"] = s.name();
  nlohmann::json series = folder_series(s.out_dir());
  if (series.is_null()) {  // no metrics.jsonl where the controller looks: the reports rank 0 sent
    RunSeries reports;
    for (const auto& m : jobs_->metrics(id, 0)) reports.add(m);
    series = reports.to_json(kMaxChartPoints);
  }
  run.update(series);
  run["job"] = summary_json(s);
  run["job"]["ranks"] = ranks_json(s);
  run["job"]["events"] = events_json(s);
  return run;
}

DashboardServer::~DashboardServer() {
  server_->stop();
  thread_.join();
}

}  // namespace loom
