// The worker side of the controller: a TrainingObserver that registers this rank with the controller,
// heartbeats from a background thread, reports rank 0's metrics each step, and carries out control commands
// (pause, resume, checkpoint now, stop) at step boundaries.
//
// `loom train` enables it when the controller's environment variables are set (the controller sets them on the
// job's launcher and mpirun forwards them to every rank):
//   LOOM_CONTROLLER_ADDRESS  host:port of the controller      LOOM_JOB_ID       the job's id
//   LOOM_JOB_TOKEN           the job's token                  LOOM_JOB_ATTEMPT  the attempt (restart) number
//   LOOM_HEARTBEAT_MS        heartbeat interval (default 1000) LOOM_CONTROLLER_CA root certificate for TLS
//                                                                                  (empty or unset: plaintext)
// Without LOOM_CONTROLLER_ADDRESS training runs as usual, without a controller.
//
// Every rank registers and heartbeats (so a hung or stopped rank is noticed); each heartbeat carries the rank's
// step, its last step's time breakdown and its memory. Only rank 0 sends ReportMetrics. Metrics go through a
// queue to the background thread, so a slow controller never slows a step; when the queue is full the oldest
// reports are dropped. When the controller cannot be reached, training goes on (one warning per outage) and
// heartbeats keep trying (the channel reconnects within ~2 s of the controller's return); a controller that
// was restarted answers register_again, and the rank registers anew. A heartbeat answered stale (a newer
// attempt replaced this one) ends the process (exit status 3).
//
// Thread-safety: on_step() and poll() are called by the training thread; one background thread does all RPCs.
#pragma once
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "launch/controller.grpc.pb.h"
#include "core/device.h"
#include "parallel/environment.h"
#include "trainer/trainer.h"

namespace loom {

struct WorkerSettings {
  std::string address, job_id, token, ca_file;
  // The host named in Register ("": this machine's name). On the controller's own host the controller checks
  // that the registering pid is one of the job launcher's processes.
  std::string host;
  int attempt = 1;
  int heartbeat_interval_ms = 1000;
};

// The settings from the variables above; nullopt when LOOM_CONTROLLER_ADDRESS is unset or empty. Throws
// loom::Error naming the variable when the address is set but another is missing or malformed.
std::optional<WorkerSettings> worker_settings_from_environment();

class WorkerClient final : public TrainingObserver {
 public:
  // Registers (rank, world size, host, pid, device) and starts the heartbeat thread. Throws loom::Error when
  // the controller refuses or cannot be reached within 10 s.
  // `device` is the rank's training device (named to the controller; its allocator's bytes in use are reported).
  WorkerClient(const WorkerSettings& settings, const ProcessEnvironment& process, Device device);
  // Sends a last heartbeat marked finished (the controller stops watching this rank) and joins the thread.
  ~WorkerClient() override;

  void on_step(const nlohmann::json& record) override;
  // Blocks while the job is paused (and the step has reached the pause's step), until resume or stop; then
  // returns stop, and checkpoint_now once per checkpoint request.
  Control poll() override;

 private:
  void heartbeat_loop();
  // Register (rank, world size, host, pid, device); takes the interval and control state of the reply.
  // wait_for_ready: wait up to 10 s for the controller (at start); else one attempt (after a restart of it).
  grpc::Status register_rank(bool wait_for_ready);
  bool send_heartbeat(bool finished);  // false when the RPC failed
  void apply(const controller::ControlState& control);

  WorkerSettings settings_;
  ProcessEnvironment process_;
  Device device_;
  // Used by the background thread only (and by the constructor before it starts, the destructor after it ends);
  // replaced after a failed heartbeat.
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<controller::Controller::Stub> stub_;

  std::mutex mu_;
  std::condition_variable wake_;      // the background thread: queued metrics, a pause, shutdown
  std::condition_variable control_;   // the training thread: the control state changed
  controller::ControlState state_;    // latest from the controller
  int64_t checkpoint_seq_done_ = 0;
  bool paused_ = false;               // the training thread is blocked in poll()
  bool shutting_down_ = false;
  bool heartbeat_now_ = false;        // send a heartbeat without waiting for the interval (pause changes)
  int64_t step_ = 0;
  bool controller_lost_ = false;      // the last heartbeat failed (background thread only)
  controller::StepTimes step_times_;
  std::deque<controller::MetricsReport> queue_;
  std::thread thread_;
};

}  // namespace loom
