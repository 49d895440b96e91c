// Fuzz target: the controller's request handling (launch/controller_service.h), called directly: no network.
//
// Input: byte 0 picks the RPC (SubmitJob, Register, Heartbeat, ReportMetrics, Control, JobStatus, ListJobs),
// byte 1 the credentials (none, a malformed header, the admin token, the live job's token, a wrong token),
// byte 2 bit 0 whether the request's job_id is replaced by the live job's id; the rest is the request
// message in protobuf wire format (ParseFromArray; unparsable bytes are skipped). Property: no request
// crashes, hangs or leaks, and every answer is a status (the service promises "no request crashes the
// server").
//
// Set-up: one supervisor whose launcher is a stand-in script. The first launch (the "live" job, kept
// RUNNING so that worker calls reach the running-attempt paths) sleeps for a minute; every later launch (jobs the fuzzer
// submits) exits 0 at once, so fuzzing starts no lasting processes. When the fuzzer has stopped or failed
// the live job, a new one is submitted.
// Safety: a Register's host is prefixed with a name that is never this machine's, so that no fuzzed pid is
// ever signalled by the supervisor's gang kill (the pid would be a real process of this machine).
#include <grpcpp/test/server_context_test_spouse.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <ostream>
#include <sstream>
#include <string>

#include "core/config.h"
#include "core/error.h"
#include "fuzz_support.h"
#include "launch/controller_service.h"

namespace {

constexpr char kAdminToken[] = "fuzz-admin-token-0123456789abcdef0123456789abcdef0123456789abcdef";
constexpr char kForeignHostPrefix[] = "fuzz-not-this-host.invalid.";

struct Harness {
  std::string dir, marker;
  std::ostream log{nullptr};  // state changes are not printed (a null stream)
  std::unique_ptr<loom::JobSupervisor> jobs;
  std::unique_ptr<loom::ControllerService> service;
  loom::controller::SubmitJobRequest live_request;
  std::string live_id, live_token;
};
Harness* g = nullptr;

[[noreturn]] void harness_failure(const std::string& what) {
  std::fprintf(stderr, "fuzz_controller harness: %s\n", what.c_str());
  std::abort();
}

void submit_live_job() {
  ::unlink(g->marker.c_str());  // the next launch is the live job's: it sleeps
  grpc::ServerContext context;
  grpc::testing::ServerContextTestSpouse spouse(&context);
  spouse.AddClientMetadata("authorization", std::string("Bearer ") + kAdminToken);
  loom::controller::SubmitJobReply reply;
  const grpc::Status s = g->service->SubmitJob(&context, &g->live_request, &reply);
  if (!s.ok()) harness_failure("cannot submit the live job: " + s.error_message());
  g->live_id = reply.job_id();
  g->live_token = reply.token();
}

bool live_job_running() {
  try {
    return g->jobs->status(g->live_id).state() == loom::controller::RUNNING;
  } catch (const loom::Error&) {
    return false;
  }
}

template <typename Request, typename Reply, typename Handler>
void call(Handler handler, grpc::ServerContext* context, std::string_view bytes, bool use_live_id) {
  Request request;
  if (!request.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) return;
  if (use_live_id) {
    if constexpr (requires { request.set_job_id(std::string()); }) request.set_job_id(g->live_id);
  }
  if constexpr (std::is_same_v<Request, loom::controller::RegisterRequest>)
    request.set_host(kForeignHostPrefix + request.host());
  Reply reply;
  (g->service.get()->*handler)(context, &request, &reply);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  g = new Harness;
  g->dir = loom::fuzz::make_temp_dir("fuzz-controller");
  // At exit the supervisor kills the live job's process group; then (atexit runs in reverse order) the
  // folder is removed.
  std::atexit([] {
    g->service.reset();
    g->jobs.reset();
  });
  g->marker = g->dir + "/launched-once";
  const std::string launcher = g->dir + "/launcher.sh";
  {
    std::ofstream script(launcher);
    script << "#!/bin/sh\n[ -e '" << g->marker << "' ] && exit 0\n: > '" << g->marker << "'\nexec sleep 60\n";
  }
  if (::chmod(launcher.c_str(), 0755) != 0) harness_failure("chmod " + launcher);
  loom::SupervisorOptions options;
  options.launcher = launcher;
  options.loom_binary = "/bin/false";
  options.keeper = LOOM_FUZZ_KEEPER;
  options.jobs_dir = g->dir + "/jobs";
  options.runs_root = g->dir;  // the live job's out_dir must lie inside it (launch/request_checks.h)
  options.worker_address = "127.0.0.1:1";
  options.register_timeout_ms = 600000;
  options.max_metrics_per_job = 1000;
  options.log = &g->log;
  g->jobs = std::make_unique<loom::JobSupervisor>(options);
  g->service = std::make_unique<loom::ControllerService>(*g->jobs, kAdminToken);
  *g->live_request.mutable_config() =
      loom::load_run_config(LOOM_SOURCE_DIR "/configs/gpt_tiny.yaml", {"train.out_dir=" + g->dir + "/runs/fuzz-live"});
  g->live_request.set_world_size(1);
  g->live_request.set_max_restarts(0);
  submit_live_job();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 3) return 0;
  if (!live_job_running()) submit_live_job();
  grpc::ServerContext context;
  grpc::testing::ServerContextTestSpouse spouse(&context);
  switch (data[1] % 5) {
    case 0: break;  // no credentials
    case 1: spouse.AddClientMetadata("authorization", kAdminToken); break;  // no "Bearer "
    case 2: spouse.AddClientMetadata("authorization", std::string("Bearer ") + kAdminToken); break;
    case 3: spouse.AddClientMetadata("authorization", "Bearer " + g->live_token); break;
    case 4: spouse.AddClientMetadata("authorization", "Bearer " + std::string(g->live_token.size(), '0')); break;
  }
  const bool use_live_id = data[2] & 1;
  const std::string_view bytes = loom::fuzz::as_text(data + 3, size - 3);
  namespace c = loom::controller;
  using S = loom::ControllerService;
  switch (data[0] % 7) {
    case 0: call<c::SubmitJobRequest, c::SubmitJobReply>(&S::SubmitJob, &context, bytes, use_live_id); break;
    case 1: call<c::RegisterRequest, c::RegisterReply>(&S::Register, &context, bytes, use_live_id); break;
    case 2: call<c::HeartbeatRequest, c::HeartbeatReply>(&S::Heartbeat, &context, bytes, use_live_id); break;
    case 3: call<c::MetricsReport, c::ReportMetricsReply>(&S::ReportMetrics, &context, bytes, use_live_id); break;
    case 4: call<c::ControlRequest, c::ControlReply>(&S::Control, &context, bytes, use_live_id); break;
    case 5: call<c::JobStatusRequest, c::JobStatusReply>(&S::JobStatus, &context, bytes, use_live_id); break;
    case 6: call<c::ListJobsRequest, c::ListJobsReply>(&S::ListJobs, &context, bytes, use_live_id); break;
  }
  return 0;
}
