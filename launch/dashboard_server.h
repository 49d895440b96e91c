// The dashboard's HTTP side: the page (launch/dashboard/ and the charting library installed by
// scripts/setup.sh), a JSON API that feeds it, and (under the controller) a Prometheus endpoint. Read-only:
// nothing here steers a job (that needs a token over gRPC), so it has no authentication; it binds 127.0.0.1
// unless told otherwise. Two sources of runs, one front end:
// - the controller (`loom-controller serve`): every job is a run; its charts come from its run folder's
//   metrics.jsonl (train.out_dir, as the controller sees it), or from the metrics reports while there is none;
//   the job adds its state, ranks (step time by phase, heartbeat age) and events (restarts);
// - run folders (`loom dashboard RUN_DIR...`): each folder's metrics.jsonl, followed while its run writes it.
//
//   GET /                    the dashboard (static files from static_dir)
//   GET /vendor/...          the charting library (files from vendor_dir)
//   GET /api/runs            {"mode": "controller" | "folders", "runs": [{id, name, dir, kind, ...}]}
//   GET /api/runs/<id>       one run: its summary, RunSeries::to_json (launch/run_series.h: at most 2000 points
//                            per series), and under the controller "job": state, attempt, restarts, ranks, events
//   GET /api/jobs, /api/jobs/<id>   the controller's jobs and their metrics reports (job_json)
//   GET /metrics             Prometheus text exposition format 0.0.4 (launch/prometheus_text.h; controller only)
//
// Server: cpp-httplib (Debian's libcpp-httplib-dev, 0.11), a small embedded server; each connection takes a
// worker thread while it is open. Slow clients are bounded: at most max_connections connections are served at
// once and as many more wait accepted (beyond that the server stops accepting, and new ones wait in the
// kernel's backlog); a connection that sends no request for idle_timeout_s, or stalls a read or a write for
// io_timeout_s, is closed. So a crowd of silent clients delays a request by about idle_timeout_s per
// max_connections of them, and cannot hold it off. (A client that dribbles a request byte by byte, each
// within io_timeout_s, keeps its worker: cpp-httplib 0.11 has no whole-request deadline.)
// Thread-safety: handlers run on the worker threads; they read the JobSupervisor (itself thread-safe) and the
// run folders' tails under tails_mu_.
#pragma once
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "launch/job_supervisor.h"
#include "launch/prometheus_text.h"
#include "launch/run_series.h"

namespace httplib {
class Server;
}

namespace loom {

struct DashboardOptions {
  std::string host = "127.0.0.1";
  int port = 0;             // 0 picks a free port
  std::string static_dir;   // launch/dashboard
  std::string vendor_dir;   // folder with uPlot.iife.min.js and uPlot.min.css
  int max_connections = 64;  // served at once (worker threads); as many more wait accepted
  int idle_timeout_s = 2;    // a connection without a (next) request is closed after this
  int io_timeout_s = 5;      // a read or write that makes no progress for this long closes the connection
};

class DashboardServer {
 public:
  // The controller's dashboard (`jobs` not owned; must outlive this). Throws loom::Error when it cannot bind, a
  // folder is missing or a limit is not positive.
  DashboardServer(const JobSupervisor& jobs, const DashboardOptions& options);
  // A dashboard of run folders (their metrics.jsonl need not exist yet). Throws as above.
  DashboardServer(std::vector<std::string> run_dirs, const DashboardOptions& options);
  ~DashboardServer();  // stops serving and joins the server thread
  int port() const { return port_; }

 private:
  DashboardServer(const JobSupervisor* jobs, std::vector<std::string> run_dirs, const DashboardOptions& options);
  nlohmann::json runs_json() const;
  // Throws JobError(kNotFound) for an unknown id.
  nlohmann::json run_json(const std::string& id) const;
  // The run folder's series (reading what was appended since the last call), or null when it has no
  // metrics.jsonl yet.
  nlohmann::json folder_series(const std::string& dir) const;

  const JobSupervisor* jobs_;  // null: run folders
  std::vector<std::string> run_dirs_;
  mutable std::mutex tails_mu_;
  mutable std::map<std::string, std::unique_ptr<MetricsFileTail>> tails_;  // by run folder
  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
  int port_ = 0;
};

// The JSON document of GET /api/jobs/<id>: the job's summary, ranks, events, and "metrics" (the reports as
// RunSeries columns: step, time, loss, mfu, ...).
nlohmann::json job_json(const controller::JobStatusReply& status,
                        const std::vector<controller::MetricsReport>& metrics);

}  // namespace loom
