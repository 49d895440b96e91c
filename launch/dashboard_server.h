// The controller's HTTP side: the dashboard page (launch/dashboard/ and the charting library installed by
// scripts/setup.sh), a JSON API that feeds it, and a Prometheus text endpoint. Read-only: nothing here steers a
// job (that needs a token over gRPC), so it has no authentication; it binds 127.0.0.1 unless told otherwise.
//
//   GET /                    the dashboard (static files from static_dir)
//   GET /vendor/...          the charting library (files from vendor_dir)
//   GET /api/jobs            [{id, name, state, step, restarts, ...}, ...]
//   GET /api/jobs/<id>       one job: status, ranks (step-time breakdown), events, metric series (at most
//                            2000 points, evenly thinned, the newest always included)
//   GET /metrics             Prometheus text exposition format 0.0.4
//
// Server: cpp-httplib (Debian's libcpp-httplib-dev, 0.11), a small embedded server; each connection takes a
// worker thread while it is open. Slow clients are bounded: at most max_connections connections are served at
// once and as many more wait accepted (beyond that the server stops accepting, and new ones wait in the
// kernel's backlog); a connection that sends no request for idle_timeout_s, or stalls a read or a write for
// io_timeout_s, is closed. So a crowd of silent clients delays a request by about idle_timeout_s per
// max_connections of them, and cannot hold it off. (A client that dribbles a request byte by byte, each
// within io_timeout_s, keeps its worker: cpp-httplib 0.11 has no whole-request deadline.)
// Thread-safety: handlers run on the worker threads and only read the JobSupervisor (itself thread-safe).
#pragma once
#include <memory>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "launch/job_supervisor.h"

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
  // Binds and starts serving (`jobs` not owned; must outlive this). Throws loom::Error when it cannot bind,
  // a folder is missing or a limit is not positive.
  DashboardServer(const JobSupervisor& jobs, const DashboardOptions& options);
  ~DashboardServer();  // stops serving and joins the server thread
  int port() const { return port_; }

 private:
  const JobSupervisor& jobs_;
  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
  int port_ = 0;
};

// The JSON document of GET /api/jobs/<id>.
nlohmann::json job_json(const controller::JobStatusReply& status, const std::vector<controller::MetricsReport>& metrics);
// The Prometheus exposition text of every job (GET /metrics).
std::string prometheus_text(const controller::ListJobsReply& jobs);

}  // namespace loom
