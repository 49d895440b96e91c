#include "launch/worker_client.h"

#include <unistd.h>

#include <cstdlib>
#include <iostream>

#include "core/allocator.h"
#include "core/host_memory.h"
#include "launch/controller_service.h"

namespace loom {

namespace {

constexpr auto kRegisterTimeout = std::chrono::seconds(10);
constexpr auto kCallTimeout = std::chrono::seconds(5);
constexpr size_t kMaxQueuedReports = 1000;

std::string env_or_empty(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

int positive_env(const char* name, int fallback) {
  const std::string v = env_or_empty(name);
  if (v.empty()) return fallback;
  char* end = nullptr;
  const long n = std::strtol(v.c_str(), &end, 10);
  if (*end != '\0' || n <= 0 || n > 1'000'000) fail(name, "=\"", v, "\": expected a positive integer");
  return static_cast<int>(n);
}

std::string host_name() {
  char name[256] = {};
  gethostname(name, sizeof name - 1);
  return name;
}

controller::StepTimes step_times_of(const nlohmann::json& record) {
  controller::StepTimes t;
  if (record.contains("time_ms")) {
    const auto& ms = record["time_ms"];
    t.set_data_ms(ms.value("data", 0.0));
    t.set_forward_backward_ms(ms.value("forward_backward", 0.0));
    t.set_optimizer_ms(ms.value("optimizer", 0.0));
    t.set_communication_ms(ms.value("communication", 0.0));
    t.set_exposed_communication_ms(ms.value("exposed_communication", 0.0));
    t.set_forward_ms(ms.value("forward", 0.0));
    t.set_backward_ms(ms.value("backward", 0.0));
    t.set_grad_sync_ms(ms.value("grad_sync", 0.0));
  }
  t.set_total_ms(record.value("ms_per_step", 0.0));
  return t;
}

}  // namespace

std::optional<WorkerSettings> worker_settings_from_environment() {
  WorkerSettings s;
  s.address = env_or_empty("LOOM_CONTROLLER_ADDRESS");
  if (s.address.empty()) return std::nullopt;
  s.job_id = env_or_empty("LOOM_JOB_ID");
  s.token = env_or_empty("LOOM_JOB_TOKEN");
  if (s.job_id.empty()) fail("LOOM_CONTROLLER_ADDRESS is set but LOOM_JOB_ID is not");
  if (s.token.empty()) fail("LOOM_CONTROLLER_ADDRESS is set but LOOM_JOB_TOKEN is not");
  s.attempt = positive_env("LOOM_JOB_ATTEMPT", 1);
  s.heartbeat_interval_ms = positive_env("LOOM_HEARTBEAT_MS", 1000);
  s.ca_file = env_or_empty("LOOM_CONTROLLER_CA");
  return s;
}

WorkerClient::WorkerClient(const WorkerSettings& settings, const ProcessEnvironment& process, Device device)
    : settings_(settings), process_(process), device_(device) {
  channel_ = controller_channel(settings_.address, settings_.ca_file);
  stub_ = controller::Controller::NewStub(channel_);
  controller::RegisterRequest request;
  request.set_job_id(settings_.job_id);
  request.set_attempt(settings_.attempt);
  request.set_rank(process_.rank);
  request.set_world_size(process_.world_size);
  request.set_host(settings_.host.empty() ? host_name() : settings_.host);
  request.set_pid(getpid());
  request.set_device(device_.str());
  grpc::ClientContext context;
  set_call_token(context, settings_.token);
  context.set_deadline(std::chrono::system_clock::now() + kRegisterTimeout);
  context.set_wait_for_ready(true);
  controller::RegisterReply reply;
  const grpc::Status s = stub_->Register(&context, request, &reply);
  if (!s.ok())
    fail("controller at ", settings_.address, " refused Register of rank ", process_.rank, " of job ",
         settings_.job_id, ": ", s.error_message(), " (gRPC code ", static_cast<int>(s.error_code()), ")");
  if (reply.heartbeat_interval_ms() > 0) settings_.heartbeat_interval_ms = reply.heartbeat_interval_ms();
  state_ = reply.control();
  checkpoint_seq_done_ = state_.checkpoint_seq();  // requests before this attempt started are not repeated
  thread_ = std::thread([this] { heartbeat_loop(); });
}

WorkerClient::~WorkerClient() {
  {
    std::lock_guard lock(mu_);
    shutting_down_ = true;
  }
  wake_.notify_all();
  control_.notify_all();
  thread_.join();
  for (const auto& report : queue_) {
    grpc::ClientContext context;
    set_call_token(context, settings_.token);
    context.set_deadline(std::chrono::system_clock::now() + kCallTimeout);
    controller::ReportMetricsReply reply;
    stub_->ReportMetrics(&context, report, &reply);  // best effort: training is over
  }
  send_heartbeat(/*finished=*/true);
}

void WorkerClient::on_step(const nlohmann::json& record) {
  std::lock_guard lock(mu_);
  step_ = record.value("step", int64_t{0});
  step_times_ = step_times_of(record);
  if (process_.rank != 0) return;
  controller::MetricsReport& m = queue_.emplace_back();
  m.set_job_id(settings_.job_id);
  m.set_attempt(settings_.attempt);
  m.set_rank(process_.rank);
  m.set_step(step_);
  m.set_loss(record.value("loss", 0.0));
  m.set_tokens_per_s(record.value("tokens_per_s", 0.0));
  m.set_mfu(record.value("mfu", 0.0));
  m.set_lr(record.value("lr", 0.0));
  m.set_grad_norm(record.value("grad_norm", 0.0));
  if (record.contains("val_loss")) m.set_val_loss(record.value("val_loss", 0.0));
  *m.mutable_step_times() = step_times_;
  m.set_host_rss_bytes(host_rss_bytes());
  m.set_device_bytes_in_use(static_cast<int64_t>(allocator_for(device_).bytes_in_use()));
  if (queue_.size() > kMaxQueuedReports) queue_.pop_front();
  wake_.notify_all();
}

TrainingObserver::Control WorkerClient::poll() {
  std::unique_lock lock(mu_);
  const auto pausing = [this] { return state_.paused() && step_ >= state_.pause_at_step() && !state_.stop(); };
  if (pausing()) {
    paused_ = heartbeat_now_ = true;  // tell the controller at once that the pause has taken effect
    wake_.notify_all();
    control_.wait(lock, [&] { return !pausing() || shutting_down_; });
    paused_ = false;
    heartbeat_now_ = true;
    wake_.notify_all();
  }
  Control c;
  c.stop = state_.stop();
  if (state_.checkpoint_seq() > checkpoint_seq_done_) {
    c.checkpoint_now = true;
    checkpoint_seq_done_ = state_.checkpoint_seq();
  }
  return c;
}

void WorkerClient::apply(const controller::ControlState& control) {
  std::lock_guard lock(mu_);
  state_ = control;
  control_.notify_all();
}

bool WorkerClient::send_heartbeat(bool finished) {
  controller::HeartbeatRequest request;
  {
    std::lock_guard lock(mu_);
    request.set_job_id(settings_.job_id);
    request.set_attempt(settings_.attempt);
    request.set_rank(process_.rank);
    request.set_step(step_);
    request.set_paused(paused_);
    *request.mutable_step_times() = step_times_;
    request.set_host_rss_bytes(host_rss_bytes());
    request.set_finished(finished);
  }
  grpc::ClientContext context;
  set_call_token(context, settings_.token);
  context.set_deadline(std::chrono::system_clock::now() + kCallTimeout);
  controller::HeartbeatReply reply;
  const grpc::Status s = stub_->Heartbeat(&context, request, &reply);
  if (!s.ok()) {
    std::cerr << "loom: warning: heartbeat to the controller at " << settings_.address
              << " failed: " << s.error_message() << std::endl;
    return false;
  }
  if (reply.stale() && !finished) {
    // The controller has started a newer attempt of this job: this process is left over from a killed gang.
    std::cerr << "loom: error: attempt " << settings_.attempt << " of job " << settings_.job_id
              << " was replaced by the controller; exiting" << std::endl;
    std::_Exit(3);
  }
  apply(reply.control());
  return true;
}

void WorkerClient::heartbeat_loop() {
  const auto interval = std::chrono::milliseconds(settings_.heartbeat_interval_ms);
  auto next_heartbeat = std::chrono::steady_clock::now();
  std::unique_lock lock(mu_);
  while (!shutting_down_) {
    wake_.wait_until(lock, next_heartbeat, [this] { return shutting_down_ || heartbeat_now_ || !queue_.empty(); });
    if (shutting_down_) break;
    std::deque<controller::MetricsReport> batch;
    batch.swap(queue_);
    const bool due = heartbeat_now_ || std::chrono::steady_clock::now() >= next_heartbeat;
    heartbeat_now_ = false;
    lock.unlock();
    for (const auto& report : batch) {
      grpc::ClientContext context;
      set_call_token(context, settings_.token);
      context.set_deadline(std::chrono::system_clock::now() + kCallTimeout);
      controller::ReportMetricsReply reply;
      const grpc::Status s = stub_->ReportMetrics(&context, report, &reply);
      if (!s.ok())
        std::cerr << "loom: warning: metrics of step " << report.step() << " not delivered: " << s.error_message()
                  << std::endl;
    }
    if (due) {
      send_heartbeat(/*finished=*/false);
      next_heartbeat = std::chrono::steady_clock::now() + interval;
    }
    lock.lock();
  }
}

}  // namespace loom
