// loom-controller: the job controller and its command-line client (see launch/README.md).
//   loom-controller serve [options]                      run the controller (gRPC + dashboard/metrics HTTP);
//                                                        restarted on the same --jobs-dir, it takes its jobs up
//                                                        again from the journal there
//   loom-controller submit CONFIG.yaml [k=v ...] --np N  submit a job; prints its id (token: --token-out)
//   loom-controller status|stop|checkpoint|pause [--at-step N]|resume|watch JOB
// Client commands find the controller in --address (default $LOOM_CONTROLLER_ADDRESS, else 127.0.0.1:50051)
// and their token in --token-file (default $LOOM_CONTROLLER_TOKEN): the admin token, or a job's token for that
// job's commands. Errors print "loom-controller: error: ..." and exit 1.
#include <CLI/CLI.hpp>
#include <google/protobuf/util/json_util.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>

#include "core/config.h"
#include "core/run_dir_lock.h"
#include "launch/controller_service.h"
#include "launch/dashboard_server.h"
#include "launch/job_supervisor.h"
#include "launch/job_supervisor_layout.h"

namespace {

using namespace loom;

std::string trimmed(std::string s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.erase(s.begin());
  return s;
}

std::string env_or(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v && *v ? v : fallback;
}

// The folder of this executable (the build folder), to find build/loom and the source tree's launch/.
std::string executable_dir() {
  return std::filesystem::canonical("/proc/self/exe").parent_path().string();
}

struct ServeOptions {
  std::string address = "127.0.0.1:50051", http_host = "127.0.0.1", admin_token_file, tls_cert, tls_key, tls_ca;
  std::string worker_address, jobs_dir = "runs/controller", runs_root, launcher, loom_binary, dashboard_dir, vendor_dir;
  std::string ready_file, hostfile, keeper;
  int http_port = 8080;
  std::vector<std::string> launcher_args;
  SupervisorOptions supervisor;
};

// The admin token: from --admin-token-file, else $LOOM_CONTROLLER_ADMIN_TOKEN, else a new random one written to
// JOBS_DIR/admin_token (mode 0600) for the CLI to use. The variables that may hold it are removed from this
// process's environment (before any thread starts), and the supervisor keeps it out of every job's.
std::string admin_token(const ServeOptions& o) {
  const std::string from_env = env_or("LOOM_CONTROLLER_ADMIN_TOKEN", "");
  unsetenv("LOOM_CONTROLLER_ADMIN_TOKEN");
  unsetenv("LOOM_CONTROLLER_TOKEN");
  if (!o.admin_token_file.empty()) {
    const std::string t = trimmed(read_file_text(o.admin_token_file));
    if (t.size() < 16) fail(o.admin_token_file, ": the admin token must have at least 16 characters");
    return t;
  }
  if (!from_env.empty()) return from_env;
  const std::string path = o.jobs_dir + "/admin_token";
  std::filesystem::create_directories(o.jobs_dir);
  // A controller restarted on the same jobs folder keeps the token it generated (its clients hold it), when the
  // file is still a plain file of ours that only we can read.
  struct stat st {};
  if (lstat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == geteuid() && (st.st_mode & 077) == 0) {
    const std::string kept = trimmed(read_file_text(path));
    if (kept.size() >= 16) {
      std::cerr << "controller: admin token read from " << path << std::endl;
      return kept;
    }
  }
  const std::string t = random_token();
  write_secret_file(path, t + "\n");
  std::cerr << "controller: admin token written to " << path << std::endl;
  return t;
}

int cmd_serve(ServeOptions o) {
  // Signals are taken synchronously by this thread (sigwait); every thread started below inherits the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  // One controller per jobs folder: a second one would take up the same jobs from the journal.
  std::optional<RunDirectoryLock> jobs_dir_lock;
  try {
    jobs_dir_lock.emplace(o.jobs_dir);
  } catch (const Error& e) {
    fail("--jobs-dir: another controller serves this folder? ", e.what());
  }
  const std::string token = admin_token(o);
  const std::string source = LOOM_SOURCE_DIR;
  SupervisorOptions& s = o.supervisor;
  s.secrets = {token};
  s.launcher = o.launcher.empty() ? source + "/launch/loom-mpirun" : o.launcher;
  s.loom_binary = o.loom_binary.empty() ? executable_dir() + "/loom" : o.loom_binary;
  s.keeper = o.keeper.empty() ? executable_dir() + "/loom-gang-keeper" : o.keeper;
  if (!o.hostfile.empty()) s.hosts = read_hostfile(o.hostfile);
  s.jobs_dir = std::filesystem::absolute(o.jobs_dir).string();
  s.runs_root = o.runs_root.empty() ? "" : std::filesystem::absolute(o.runs_root).string();
  s.worker_ca_file = o.tls_ca.empty() ? "" : std::filesystem::absolute(o.tls_ca).string();
  s.launcher_args = o.launcher_args;
  GrpcServerOptions g;
  g.address = o.address;
  g.tls_cert_file = o.tls_cert;
  g.tls_key_file = o.tls_key;
  if (!g.tls_cert_file.empty() && s.worker_ca_file.empty())
    fail("--tls-cert needs --tls-ca (the root certificate the job's workers trust)");

  // Workers dial the gRPC port, known only once the server is bound: the supervisor starts without it and
  // learns it before serving (no job can be submitted earlier).
  auto jobs = std::make_unique<JobSupervisor>(s);
  ControllerService service(*jobs, token);
  int grpc_port = 0;
  std::unique_ptr<grpc::Server> server = start_grpc_server(service, g, &grpc_port);
  const std::string host = o.address.substr(0, o.address.rfind(':'));
  jobs->set_worker_address(o.worker_address.empty() ? host + ":" + std::to_string(grpc_port) : o.worker_address);

  DashboardOptions d;
  d.host = o.http_host;
  d.port = o.http_port;
  d.static_dir = o.dashboard_dir.empty() ? source + "/launch/dashboard" : o.dashboard_dir;
  d.vendor_dir = o.vendor_dir.empty() ? executable_dir() + "/npm/node_modules/uplot/dist" : o.vendor_dir;
  DashboardServer dashboard(*jobs, d);
  std::cerr << "controller: gRPC on " << host << ":" << grpc_port << (g.tls_cert_file.empty() ? "" : " (TLS)")
            << ", dashboard on http://" << d.host << ":" << dashboard.port() << "/, jobs in " << s.jobs_dir
            << std::endl;
  if (!o.ready_file.empty()) {
    std::ofstream(o.ready_file + ".tmp") << grpc_port << ' ' << dashboard.port() << '\n';
    std::filesystem::rename(o.ready_file + ".tmp", o.ready_file);
  }
  int signal_number = 0;
  sigwait(&signals, &signal_number);
  std::cerr << "controller: " << strsignal(signal_number) << ": shutting down" << std::endl;
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  return 0;
}

struct ClientOptions {
  std::string address = env_or("LOOM_CONTROLLER_ADDRESS", "127.0.0.1:50051");
  std::string token_file, ca;
};

class Client {
 public:
  explicit Client(const ClientOptions& o)
      : stub_(controller::Controller::NewStub(controller_channel(o.address, o.ca))) {
    token_ = o.token_file.empty() ? env_or("LOOM_CONTROLLER_TOKEN", "") : trimmed(read_file_text(o.token_file));
    if (token_.empty()) fail("no token: pass --token-file FILE or set LOOM_CONTROLLER_TOKEN");
  }
  // A call context with the token and a deadline (none for streams).
  std::unique_ptr<grpc::ClientContext> context(bool stream = false) const {
    auto c = std::make_unique<grpc::ClientContext>();
    set_call_token(*c, token_);
    if (!stream) c->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    return c;
  }
  controller::Controller::Stub& stub() { return *stub_; }

 private:
  std::unique_ptr<controller::Controller::Stub> stub_;
  std::string token_;
};

void check(const grpc::Status& s, const std::string& what) {
  if (!s.ok()) fail(what, ": ", s.error_message(), " (gRPC code ", static_cast<int>(s.error_code()), ")");
}

int cmd_submit(Client& c, const std::string& config_path, const std::vector<std::string>& overrides, int np,
               const std::string& name, int max_restarts, const std::string& token_out, bool out_dir_anywhere) {
  controller::SubmitJobRequest r;
  *r.mutable_config() = load_run_config(config_path);
  if (np <= 0) {  // the ranks the config's layout needs, as loom-mpirun counts them
    const config::RunConfig effective = load_run_config(config_path, overrides);
    np = effective.parallel().data() * effective.parallel().tensor();
  }
  r.set_world_size(np);
  for (const auto& o : overrides) r.add_args(o);
  if (!name.empty()) r.set_name(name);
  if (max_restarts >= 0) r.set_max_restarts(max_restarts);
  if (out_dir_anywhere) r.set_allow_out_dir_outside_root(true);
  controller::SubmitJobReply reply;
  check(c.stub().SubmitJob(c.context().get(), r, &reply), "SubmitJob");
  if (!token_out.empty()) {
    write_secret_file(token_out, reply.token() + "\n");
  } else {
    std::cerr << "token: " << reply.token() << std::endl;
  }
  std::cout << reply.job_id() << std::endl;
  return 0;
}

int cmd_status(Client& c, const std::string& job, bool json) {
  controller::JobStatusRequest r;
  r.set_job_id(job);
  controller::JobStatusReply s;
  check(c.stub().JobStatus(c.context().get(), r, &s), "JobStatus");
  if (json) {
    std::string text;
    google::protobuf::util::MessageToJsonString(s, &text);
    std::cout << text << std::endl;
    return 0;
  }
  std::cout << s.job_id() << " (" << s.name() << "): " << job_state_name(s.state()) << ", step " << s.step()
            << ", attempt " << s.attempt() << ", restarts " << s.restarts() << "/" << s.max_restarts()
            << (s.control().paused() ? ", paused" : "") << "\n  out_dir " << s.out_dir() << ", log " << s.log_path()
            << "\n  layout: " << describe_layout(s.layout()) << ", last checkpoint "
            << (s.last_checkpoint().empty() ? "(none)" : s.last_checkpoint()) << "\n";
  for (const auto& r : s.ranks())
    std::cout << "  rank " << r.rank() << ": pid " << r.pid() << " on " << r.host() << " (" << r.device()
              << "), step " << r.step() << ", last heartbeat " << r.seconds_since_heartbeat() << " s ago"
              << (r.paused() ? ", paused" : "") << (r.finished() ? ", finished" : "") << "\n";
  for (const auto& e : s.events()) std::cout << "  [" << job_state_name(e.state()) << "] " << e.message() << "\n";
  return 0;
}

int cmd_control(Client& c, const std::string& job, controller::ControlRequest::Action action, int64_t step) {
  controller::ControlRequest r;
  r.set_job_id(job);
  r.set_action(action);
  if (step > 0) r.set_step(step);
  controller::ControlReply reply;
  check(c.stub().Control(c.context().get(), r, &reply), "Control");
  std::cout << job << ": " << controller::ControlRequest::Action_Name(action) << " sent" << std::endl;
  return 0;
}

int cmd_watch(Client& c, const std::string& job) {
  controller::WatchMetricsRequest r;
  r.set_job_id(job);
  auto context = c.context(/*stream=*/true);
  auto reader = c.stub().WatchMetrics(context.get(), r);
  controller::MetricsReport m;
  while (reader->Read(&m))
    std::cout << "step " << m.step() << " | loss " << m.loss() << " | " << m.tokens_per_s() << " tok/s | MFU "
              << 100 * m.mfu() << "% | " << m.step_times().total_ms() << " ms" << std::endl;
  check(reader->Finish(), "WatchMetrics");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"loom-controller: supervise Loom training jobs"};
  app.require_subcommand(1);

  ServeOptions so;
  SupervisorOptions& sup = so.supervisor;
  auto* serve = app.add_subcommand("serve", "run the controller");
  serve->add_option("--address", so.address, "gRPC listen address host:port (port 0: any free port)");
  serve->add_option("--worker-address", so.worker_address, "address workers dial (default: the listen address)");
  serve->add_option("--http-host", so.http_host, "dashboard/metrics listen host");
  serve->add_option("--http-port", so.http_port, "dashboard/metrics port (0: any free port)");
  serve->add_option("--admin-token-file", so.admin_token_file,
                    "file with the admin token (default: $LOOM_CONTROLLER_ADMIN_TOKEN, else a new one in "
                    "JOBS_DIR/admin_token)");
  serve->add_option("--tls-cert", so.tls_cert, "PEM certificate chain: serve gRPC over TLS");
  serve->add_option("--tls-key", so.tls_key, "PEM private key for --tls-cert");
  serve->add_option("--tls-ca", so.tls_ca, "PEM root certificate the job's workers trust (with --tls-cert)");
  serve->add_option("--jobs-dir", so.jobs_dir, "folder for job configs, logs and the generated admin token");
  serve->add_option("--runs-root", so.runs_root,
                    "every job's train.out_dir must lie in this folder (default: the folder holding --jobs-dir)");
  serve->add_option("--launcher", so.launcher, "job launcher (default: launch/loom-mpirun of the source tree)");
  serve->add_option("--launcher-arg", so.launcher_args, "extra launcher option (repeatable), e.g. --cpu");
  serve->add_option("--loom", so.loom_binary, "the loom executable the jobs run (default: next to this one)");
  serve->add_option("--dashboard-dir", so.dashboard_dir, "dashboard static files (default: launch/dashboard)");
  serve->add_option("--vendor-dir", so.vendor_dir,
                    "uPlot's dist folder (default: npm/node_modules/uplot/dist beside this executable)");
  serve->add_option("--heartbeat-interval-ms", sup.heartbeat_interval_ms, "how often workers heartbeat");
  serve->add_option("--heartbeat-timeout-ms", sup.heartbeat_timeout_ms, "a rank silent this long has failed");
  serve->add_option("--register-timeout-ms", sup.register_timeout_ms, "every rank must register within this");
  serve->add_option("--stall-timeout-ms", sup.stall_timeout_ms,
                    "a job whose ranks complete no step this long has failed (0: off)");
  serve->add_option("--max-restarts", sup.max_restarts, "default restart limit per job");
  serve->add_option("--ready-file", so.ready_file, "write \"GRPC_PORT HTTP_PORT\" here once serving");
  serve->add_option("--hostfile", so.hostfile,
                    "the cluster's hosts (HOST slots=N lines): each attempt runs on those that answer --host-probe, "
                    "shrunk as parallel.elastic allows");
  serve->add_option("--host-probe", sup.host_probe,
                    "shell command that exits 0 when the host given as $1 is up (default: ssh HOST true)");
  serve->add_option("--probe-timeout-ms", sup.probe_timeout_ms, "a probe running longer counts as down")
      ->check(CLI::Range(100, 600000));
  serve->add_option("--keeper", so.keeper, "the gang keeper (default: loom-gang-keeper next to this executable)");
  serve->add_flag("--leave-jobs-running", sup.leave_jobs_running,
                  "on SIGTERM/SIGINT exit without ending the jobs: the next controller on --jobs-dir takes them up");

  ClientOptions co;
  auto add_client_options = [&](CLI::App* cmd) {
    cmd->add_option("--address", co.address, "controller address host:port");
    cmd->add_option("--token-file", co.token_file, "file with the admin or job token");
    cmd->add_option("--ca", co.ca, "PEM root certificate: connect with TLS");
  };
  std::string config_path, name, token_out, job;
  std::vector<std::string> overrides;
  int np = 0, max_restarts = -1;
  bool json = false, out_dir_anywhere = false;
  auto* submit = app.add_subcommand("submit", "submit a training job");
  submit->add_option("config", config_path, "YAML config file")->required();
  submit->add_option("overrides", overrides, "key.sub=value overrides");
  submit->add_option("--np", np, "ranks (default: parallel.data x parallel.tensor of the config)");
  submit->add_option("--name", name, "job name for the dashboard");
  submit->add_option("--max-restarts", max_restarts, "restart limit (default: the controller's)");
  submit->add_option("--token-out", token_out, "write the job's token to this file (mode 0600)");
  submit->add_flag("--allow-out-dir-anywhere", out_dir_anywhere,
                   "let train.out_dir lie outside the controller's runs root (admin token only)");
  add_client_options(submit);
  auto* status = app.add_subcommand("status", "show a job's state, ranks and events");
  status->add_option("job", job, "job id")->required();
  status->add_flag("--json", json, "print the JobStatusReply as JSON");
  add_client_options(status);
  std::map<CLI::App*, controller::ControlRequest::Action> controls;
  int64_t pause_step = 0;
  for (const auto& [cmd, action, help] :
       std::vector<std::tuple<const char*, controller::ControlRequest::Action, const char*>>{
           {"stop", controller::ControlRequest::STOP, "checkpoint and stop a job"},
           {"checkpoint", controller::ControlRequest::CHECKPOINT_NOW, "write a checkpoint after the current step"},
           {"pause", controller::ControlRequest::PAUSE, "pause a job at the next step boundary"},
           {"resume", controller::ControlRequest::RESUME, "resume a paused job"}}) {
    auto* sub = app.add_subcommand(cmd, help);
    sub->add_option("job", job, "job id")->required();
    if (action == controller::ControlRequest::PAUSE)
      sub->add_option("--at-step", pause_step, "pause once this step is done (default: the next step)");
    add_client_options(sub);
    controls[sub] = action;
  }
  auto* watch = app.add_subcommand("watch", "stream a job's metrics until it ends");
  watch->add_option("job", job, "job id")->required();
  add_client_options(watch);

  CLI11_PARSE(app, argc, argv);
  try {
    if (serve->parsed()) return cmd_serve(so);
    Client client(co);
    if (submit->parsed())
      return cmd_submit(client, config_path, overrides, np, name, max_restarts, token_out, out_dir_anywhere);
    if (status->parsed()) return cmd_status(client, job, json);
    if (watch->parsed()) return cmd_watch(client, job);
    for (const auto& [sub, action] : controls)
      if (sub->parsed()) return cmd_control(client, job, action, pause_step);
  } catch (const std::exception& e) {
    std::cerr << "loom-controller: error: " << e.what() << std::endl;
    return 1;
  }
  return 0;
}
