// Shared pieces of the controller tests: an in-process controller (supervisor + gRPC service on a free port
// of 127.0.0.1) and small data/config files for real training jobs.
#pragma once
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "core/checkpoint.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "core/token_shards.h"
#include "launch/controller_service.h"
#include "launch/job_supervisor.h"
#include "launch/process_gang.h"
#include "tests/common/test_util.h"

namespace loom::testing {

// A call context carrying `token` (none when empty) and a 30 s deadline.
inline std::unique_ptr<grpc::ClientContext> call_context(const std::string& token) {
  auto c = std::make_unique<grpc::ClientContext>();
  if (!token.empty()) set_call_token(*c, token);
  c->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  return c;
}

inline controller::JobStatusReply job_status(controller::Controller::Stub& stub, const std::string& token,
                                             const std::string& job_id) {
  controller::JobStatusRequest r;
  r.set_job_id(job_id);
  controller::JobStatusReply s;
  const grpc::Status st = stub.JobStatus(call_context(token).get(), r, &s);
  EXPECT_TRUE(st.ok()) << st.error_message();
  return s;
}

// Polls the job's status every 50 ms until `done` holds or `timeout` passes; returns the last status.
inline controller::JobStatusReply wait_for_job(controller::Controller::Stub& stub, const std::string& token,
                                               const std::string& job_id, std::chrono::milliseconds timeout,
                                               const std::function<bool(const controller::JobStatusReply&)>& done) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  controller::JobStatusReply s = job_status(stub, token, job_id);
  while (!done(s) && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    s = job_status(stub, token, job_id);
  }
  return s;
}

inline void control_job(controller::Controller::Stub& stub, const std::string& token, const std::string& job_id,
                        controller::ControlRequest::Action action, int64_t step = 0) {
  controller::ControlRequest r;
  r.set_job_id(job_id);
  r.set_action(action);
  r.set_step(step);
  controller::ControlReply reply;
  const grpc::Status s = stub.Control(call_context(token).get(), r, &reply);
  ASSERT_TRUE(s.ok()) << s.error_message();
}

// A controller running inside the test process. `options` come filled with the test's defaults (the real
// launcher and loom binary, jobs under the temp dir, short heartbeats); tests adjust them before start().
class LocalController {
 public:
  explicit LocalController(const std::string& jobs_dir) {
    options.launcher = std::string(LOOM_SOURCE_DIR) + "/launch/loom-mpirun";
    options.loom_binary = std::string(LOOM_BINARY_DIR) + "/loom";
    options.keeper = std::string(LOOM_BINARY_DIR) + "/loom-gang-keeper";
    options.jobs_dir = jobs_dir;
    options.heartbeat_interval_ms = 200;
    options.heartbeat_timeout_ms = 3000;
    options.max_restarts = 3;
    options.log = &log;
  }
  ~LocalController() {
    if (server) server->Shutdown(std::chrono::system_clock::now());
  }
  void start() {
    options.secrets.push_back(admin_token);  // as loom-controller serve does
    jobs = std::make_unique<JobSupervisor>(options);
    service = std::make_unique<ControllerService>(*jobs, admin_token);
    server = start_grpc_server(*service, grpc_options, &port);
    address = (grpc_options.tls_cert_file.empty() ? "127.0.0.1:" : "localhost:") + std::to_string(port);
    jobs->set_worker_address(address);
    stub = controller::Controller::NewStub(controller_channel(address, options.worker_ca_file));
  }
  static std::unique_ptr<grpc::ClientContext> context(const std::string& token) { return call_context(token); }
  controller::JobStatusReply status(const std::string& job_id) { return job_status(*stub, admin_token, job_id); }
  controller::JobStatusReply wait_for(const std::string& job_id, std::chrono::milliseconds timeout,
                                      const std::function<bool(const controller::JobStatusReply&)>& done) {
    return wait_for_job(*stub, admin_token, job_id, timeout, done);
  }

  SupervisorOptions options;
  GrpcServerOptions grpc_options;  // TLS: set the cert/key here and options.worker_ca_file (address: localhost)
  std::ostringstream log;
  std::string admin_token = "admin-token-for-tests-0123456789";
  std::unique_ptr<JobSupervisor> jobs;
  std::unique_ptr<ControllerService> service;
  std::unique_ptr<grpc::Server> server;
  int port = 0;
  std::string address;
  std::unique_ptr<controller::Controller::Stub> stub;
};

// Random tokens in [0, vocab) as a train shard (and a small val shard) under `dir`.
inline void write_token_data(const std::string& dir, int64_t tokens, int32_t vocab, uint64_t seed) {
  std::filesystem::create_directories(dir);
  PhiloxStream rng(seed, 7);
  std::vector<int32_t> t(static_cast<size_t>(tokens));
  for (auto& v : t) v = static_cast<int32_t>(rng.below(static_cast<uint64_t>(vocab)));
  write_shard(dir + "/train_000.bin", t);
  write_shard(dir + "/val_000.bin", std::span<const int32_t>(t.data(), 512));
}

// A tiny GPT job on the CPU over the data of write_token_data (vocab 64).
inline std::string tiny_job_yaml(const std::string& data_dir, const std::string& out_dir, int max_steps,
                                 int checkpoint_every, int data_parallel = 1) {
  return "model: {kind: gpt, n_layer: 2, d_model: 32, n_head: 2, vocab_size: 64, max_seq_len: 16}\n"
         "data: {train: \"" + data_dir + "/train_*.bin\", batch_size: 2, seq_len: 16, shuffle: false}\n"
         "optim: {lr: 1.0e-3, warmup_steps: 2}\n"
         "train: {max_steps: " + std::to_string(max_steps) + ", checkpoint_every: " + std::to_string(checkpoint_every) +
         ", keep_checkpoints: 3, log_every: 10, device: cpu, progress: false, out_dir: \"" + out_dir + "\"}\n"
         "parallel: {data: " + std::to_string(data_parallel) + "}\n";
}

// Alive: the process exists and is neither a zombie nor dead.
inline bool process_alive(pid_t pid) {
  const auto s = read_process_stat(pid);
  return s && s->state != 'Z' && s->state != 'X';
}

inline void write_text_file(const std::string& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
  ASSERT_TRUE(out.good()) << path;
}

inline std::string file_text(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// Writes an executable shell script (#!/bin/sh and `body`) to `path`; returns the path.
inline std::string write_script(const std::string& path, const std::string& body) {
  write_text_file(path, "#!/bin/sh\n" + body + "\n");
  chmod(path.c_str(), 0755);
  return path;
}

// The uninterrupted run a fault test compares with: `yaml` (written to DIR/reference.yaml) on `ranks` ranks,
// started by the launcher without any controller. Returns its step-`max_steps` checkpoint.
inline std::string run_without_controller(const std::string& dir, const std::string& yaml, int ranks, int max_steps,
                                          const std::string& out_dir) {
  const std::string config = dir + "/reference.yaml", log = dir + "/reference.log";
  write_text_file(config, yaml);
  const std::string cmd = std::string(LOOM_SOURCE_DIR) + "/launch/loom-mpirun --np " + std::to_string(ranks) +
                          " --loom " + LOOM_BINARY_DIR + "/loom -- train " + config + " > " + log + " 2>&1";
  EXPECT_EQ(std::system(cmd.c_str()), 0) << file_text(log);
  return checkpoint_dir(out_dir, max_steps);
}

// Every tensor of the two checkpoints' model.safetensors equal, bit for bit.
inline void expect_same_weights(const std::string& reference_dir, const std::string& job_dir) {
  const auto a = safetensors::read(reference_dir + "/model.safetensors").tensors;
  const auto b = safetensors::read(job_dir + "/model.safetensors").tensors;
  ASSERT_EQ(a.size(), b.size());
  ASSERT_FALSE(a.empty());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].first, b[i].first);
    ASSERT_EQ(a[i].second.nbytes(), b[i].second.nbytes()) << a[i].first;
    EXPECT_EQ(std::memcmp(a[i].second.raw(), b[i].second.raw(), a[i].second.nbytes()), 0) << a[i].first;
  }
}

}  // namespace loom::testing
