// The controller's API without training: tokens, malformed requests, control state, the job state machine
// (with stand-in launchers: a process that sleeps, one that exits), the worker client, and the HTTP side.
#include <gmock/gmock.h>
#include <grpcpp/generic/generic_stub.h>
#include <httplib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <future>

#include "core/config.h"
#include "launch/dashboard_server.h"
#include "launch/worker_client.h"
#include "tests/controller/controller_testing.h"

namespace loom::testing {
namespace {

using controller::ControlRequest;
using ::testing::HasSubstr;

std::string write_script(const std::string& path, const std::string& body) {
  write_text_file(path, "#!/bin/sh\n" + body + "\n");
  chmod(path.c_str(), 0755);
  return path;
}

class ControllerApiTest : public ::testing::Test {
 protected:
  explicit ControllerApiTest(const std::string& launcher_body = "exec sleep 60") : ctl(tmp / "jobs") {
    ctl.options.launcher = write_script(tmp / "launcher.sh", launcher_body);
    ctl.options.heartbeat_timeout_ms = 60000;
    write_token_data(tmp / "data", 4096, 64, 1);
  }

  controller::SubmitJobRequest job_request(int world_size = 1) {
    controller::SubmitJobRequest r;
    // A folder of its own per job: the controller refuses an out_dir that a live job uses.
    const std::string out = tmp / ("out_" + std::to_string(++jobs_requested));
    *r.mutable_config() = parse_run_config(tiny_job_yaml(tmp / "data", out, 20, 10), "test.yaml");
    r.mutable_config()->mutable_parallel()->set_data(world_size);
    r.set_world_size(world_size);
    return r;
  }

  controller::SubmitJobReply submit(const controller::SubmitJobRequest& r) {
    controller::SubmitJobReply reply;
    const grpc::Status s = ctl.stub->SubmitJob(ctl.context(ctl.admin_token).get(), r, &reply);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return reply;
  }

  controller::RegisterRequest register_request(const std::string& job_id, int rank = 0, int world_size = 1,
                                               int attempt = 1) {
    controller::RegisterRequest r;
    r.set_job_id(job_id);
    r.set_attempt(attempt);
    r.set_rank(rank);
    r.set_world_size(world_size);
    r.set_host("test-host");
    r.set_pid(4242);
    r.set_device("cpu");
    return r;
  }

  grpc::Status register_rank(const std::string& token, const controller::RegisterRequest& r) {
    controller::RegisterReply reply;
    return ctl.stub->Register(ctl.context(token).get(), r, &reply);
  }

  controller::HeartbeatReply heartbeat(const controller::SubmitJobReply& job, int rank = 0) {
    controller::HeartbeatRequest r;
    r.set_job_id(job.job_id());
    r.set_attempt(1);
    r.set_rank(rank);
    controller::HeartbeatReply reply;
    const grpc::Status s = ctl.stub->Heartbeat(ctl.context(job.token()).get(), r, &reply);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return reply;
  }

  grpc::Status control(const std::string& token, const std::string& job_id, ControlRequest::Action action) {
    ControlRequest r;
    r.set_job_id(job_id);
    r.set_action(action);
    controller::ControlReply reply;
    return ctl.stub->Control(ctl.context(token).get(), r, &reply);
  }

  // Every RPC of the service with `token` against `job_id`; returns their status codes.
  std::vector<std::pair<std::string, grpc::StatusCode>> call_every_rpc(const std::string& token,
                                                                      const std::string& job_id) {
    std::vector<std::pair<std::string, grpc::StatusCode>> codes;
    {
      controller::SubmitJobReply reply;
      codes.emplace_back("SubmitJob", ctl.stub->SubmitJob(ctl.context(token).get(), job_request(), &reply).error_code());
    }
    codes.emplace_back("Register", register_rank(token, register_request(job_id)).error_code());
    {
      controller::HeartbeatRequest r;
      r.set_job_id(job_id);
      r.set_attempt(1);
      controller::HeartbeatReply reply;
      codes.emplace_back("Heartbeat", ctl.stub->Heartbeat(ctl.context(token).get(), r, &reply).error_code());
    }
    {
      controller::MetricsReport r;
      r.set_job_id(job_id);
      r.set_attempt(1);
      r.set_step(1);
      controller::ReportMetricsReply reply;
      codes.emplace_back("ReportMetrics", ctl.stub->ReportMetrics(ctl.context(token).get(), r, &reply).error_code());
    }
    codes.emplace_back("Control", control(token, job_id, ControlRequest::PAUSE).error_code());
    {
      controller::JobStatusRequest r;
      r.set_job_id(job_id);
      controller::JobStatusReply reply;
      codes.emplace_back("JobStatus", ctl.stub->JobStatus(ctl.context(token).get(), r, &reply).error_code());
    }
    {
      controller::ListJobsReply reply;
      codes.emplace_back("ListJobs", ctl.stub->ListJobs(ctl.context(token).get(), {}, &reply).error_code());
    }
    {
      controller::WatchMetricsRequest r;
      r.set_job_id(job_id);
      auto context = ctl.context(token);
      auto reader = ctl.stub->WatchMetrics(context.get(), r);
      controller::MetricsReport m;
      while (reader->Read(&m)) {
      }
      codes.emplace_back("WatchMetrics", reader->Finish().error_code());
    }
    return codes;
  }

  TempDir tmp;
  LocalController ctl;
  int jobs_requested = 0;
};

TEST_F(ControllerApiTest, CallsWithoutATokenAreRefused) {
  ctl.start();
  const auto job = submit(job_request());
  for (const auto& [rpc, code] : call_every_rpc("", job.job_id()))
    EXPECT_EQ(code, grpc::StatusCode::UNAUTHENTICATED) << rpc;
  // The token must come as "Bearer <token>".
  auto context = std::make_unique<grpc::ClientContext>();
  context->AddMetadata("authorization", job.token());
  controller::RegisterReply reply;
  EXPECT_EQ(ctl.stub->Register(context.get(), register_request(job.job_id()), &reply).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
}

TEST_F(ControllerApiTest, CallsWithAWrongTokenAreRefused) {
  ctl.start();
  const auto job = submit(job_request());
  const auto other = submit(job_request());
  // A random token, and another job's token: refused everywhere.
  for (const std::string& token : {random_token(), other.token()})
    for (const auto& [rpc, code] : call_every_rpc(token, job.job_id()))
      EXPECT_EQ(code, grpc::StatusCode::UNAUTHENTICATED) << rpc;
  // A job token cannot submit or list; the admin token cannot act as a worker.
  controller::SubmitJobReply submitted;
  EXPECT_EQ(ctl.stub->SubmitJob(ctl.context(job.token()).get(), job_request(), &submitted).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  controller::ListJobsReply listed;
  EXPECT_EQ(ctl.stub->ListJobs(ctl.context(job.token()).get(), {}, &listed).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(register_rank(ctl.admin_token, register_request(job.job_id())).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  // A job token for a job that does not exist is refused as unauthenticated (ids cannot be probed).
  EXPECT_EQ(register_rank(job.token(), register_request("job-999")).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  // Nothing was registered or paused by the refused calls.
  const auto s = ctl.status(job.job_id());
  EXPECT_EQ(s.ranks_size(), 0);
  EXPECT_FALSE(s.control().paused());
}

TEST_F(ControllerApiTest, MalformedRequestsGetErrorsAndTheServerStaysUp) {
  ctl.start();
  const auto job = submit(job_request(2));
  auto submit_code = [&](const controller::SubmitJobRequest& r) {
    controller::SubmitJobReply reply;
    return ctl.stub->SubmitJob(ctl.context(ctl.admin_token).get(), r, &reply);
  };
  controller::SubmitJobRequest no_config = job_request();
  no_config.clear_config();
  EXPECT_EQ(submit_code(no_config).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  controller::SubmitJobRequest zero_ranks = job_request();
  zero_ranks.set_world_size(0);
  EXPECT_EQ(submit_code(zero_ranks).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  controller::SubmitJobRequest wrong_layout = job_request(2);
  wrong_layout.set_world_size(4);
  const grpc::Status layout = submit_code(wrong_layout);
  EXPECT_EQ(layout.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(layout.error_message(), HasSubstr("parallel.data x parallel.tensor = 2"));
  controller::SubmitJobRequest no_model = job_request();
  no_model.mutable_config()->clear_model();
  const grpc::Status missing = submit_code(no_model);
  EXPECT_EQ(missing.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(missing.error_message(), HasSubstr("model"));
  controller::SubmitJobRequest option_arg = job_request();
  option_arg.add_args("--evil");
  EXPECT_EQ(submit_code(option_arg).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  controller::SubmitJobRequest unknown_key = job_request();
  unknown_key.add_args("train.no_such_field=1");
  const grpc::Status unknown = submit_code(unknown_key);
  EXPECT_EQ(unknown.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(unknown.error_message(), HasSubstr("no_such_field"));

  EXPECT_EQ(register_rank(job.token(), register_request(job.job_id(), /*rank=*/2, 2)).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(register_rank(job.token(), register_request(job.job_id(), -1, 2)).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(register_rank(job.token(), register_request(job.job_id(), 0, /*world_size=*/3)).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(register_rank(job.token(), register_request(job.job_id(), 0, 2, /*attempt=*/7)).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  controller::RegisterRequest no_pid = register_request(job.job_id(), 0, 2);
  no_pid.clear_pid();
  EXPECT_EQ(register_rank(job.token(), no_pid).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  {
    controller::HeartbeatRequest r;  // rank 1 never registered
    r.set_job_id(job.job_id());
    r.set_attempt(1);
    r.set_rank(1);
    controller::HeartbeatReply reply;
    EXPECT_EQ(ctl.stub->Heartbeat(ctl.context(job.token()).get(), r, &reply).error_code(),
              grpc::StatusCode::INVALID_ARGUMENT);
  }
  {
    controller::MetricsReport r;
    r.set_job_id(job.job_id());
    r.set_attempt(1);
    r.set_rank(5);
    controller::ReportMetricsReply reply;
    EXPECT_EQ(ctl.stub->ReportMetrics(ctl.context(job.token()).get(), r, &reply).error_code(),
              grpc::StatusCode::INVALID_ARGUMENT);
  }
  {
    ControlRequest r;  // no action
    r.set_job_id(job.job_id());
    controller::ControlReply reply;
    EXPECT_EQ(ctl.stub->Control(ctl.context(job.token()).get(), r, &reply).error_code(),
              grpc::StatusCode::INVALID_ARGUMENT);
  }
  {
    controller::JobStatusRequest r;
    r.set_job_id("job-999");
    controller::JobStatusReply reply;
    EXPECT_EQ(ctl.stub->JobStatus(ctl.context(ctl.admin_token).get(), r, &reply).error_code(),
              grpc::StatusCode::NOT_FOUND);
  }
  // Bytes that are no protobuf message at all.
  grpc::GenericStub generic(controller_channel(ctl.address, ""));
  const std::string garbage = "\xff\xff\xff\xff\x0f not a message";
  grpc::Slice slice(garbage);
  grpc::ByteBuffer request(&slice, 1), response;
  auto context = ctl.context(job.token());
  std::promise<grpc::Status> done;
  generic.UnaryCall(context.get(), "/loom.controller.Controller/Register", grpc::StubOptions(), &request, &response,
                    [&](grpc::Status s) { done.set_value(s); });
  const grpc::Status garbled = done.get_future().get();
  EXPECT_FALSE(garbled.ok());
  EXPECT_NE(garbled.error_code(), grpc::StatusCode::UNAVAILABLE) << garbled.error_message();
  // Still serving, and nothing was registered by the bad calls.
  const auto s = ctl.status(job.job_id());
  EXPECT_EQ(s.state(), controller::RUNNING);
  EXPECT_EQ(s.ranks_size(), 0);
}

TEST_F(ControllerApiTest, ControlStateReachesWorkers) {
  ctl.start();
  const auto job = submit(job_request());
  ASSERT_TRUE(register_rank(job.token(), register_request(job.job_id())).ok());
  EXPECT_FALSE(heartbeat(job).control().paused());
  ASSERT_TRUE(control(job.token(), job.job_id(), ControlRequest::PAUSE).ok());
  EXPECT_TRUE(heartbeat(job).control().paused());
  ASSERT_TRUE(control(ctl.admin_token, job.job_id(), ControlRequest::RESUME).ok());
  ASSERT_TRUE(control(ctl.admin_token, job.job_id(), ControlRequest::CHECKPOINT_NOW).ok());
  ASSERT_TRUE(control(ctl.admin_token, job.job_id(), ControlRequest::CHECKPOINT_NOW).ok());
  controller::HeartbeatReply h = heartbeat(job);
  EXPECT_FALSE(h.control().paused());
  EXPECT_EQ(h.control().checkpoint_seq(), 2);
  ASSERT_TRUE(control(ctl.admin_token, job.job_id(), ControlRequest::PAUSE).ok());
  ASSERT_TRUE(control(ctl.admin_token, job.job_id(), ControlRequest::STOP).ok());
  h = heartbeat(job);
  EXPECT_TRUE(h.control().stop());
  EXPECT_FALSE(h.control().paused()) << "a stop ends a pause";
  const auto s = ctl.status(job.job_id());
  ASSERT_EQ(s.ranks_size(), 1);
  EXPECT_EQ(s.ranks(0).pid(), 4242);
  EXPECT_EQ(s.ranks(0).host(), "test-host");
}

TEST_F(ControllerApiTest, MissedHeartbeatsRestartTheJobUntilTheLimit) {
  ctl.options.heartbeat_interval_ms = 50;
  ctl.options.heartbeat_timeout_ms = 300;
  ctl.start();
  controller::SubmitJobRequest r = job_request();
  r.set_max_restarts(1);
  const auto job = submit(r);
  ASSERT_TRUE(register_rank(job.token(), register_request(job.job_id())).ok());
  auto s = ctl.wait_for(job.job_id(), std::chrono::seconds(10), [](const auto& s) { return s.attempt() == 2; });
  ASSERT_EQ(s.attempt(), 2);
  EXPECT_EQ(s.restarts(), 1);
  // A rank of the killed attempt is told so.
  EXPECT_EQ(register_rank(job.token(), register_request(job.job_id())).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  ASSERT_TRUE(register_rank(job.token(), register_request(job.job_id(), 0, 1, 2)).ok());
  s = ctl.wait_for(job.job_id(), std::chrono::seconds(10), [](const auto& s) { return s.state() == controller::FAILED; });
  ASSERT_EQ(s.state(), controller::FAILED);
  std::vector<controller::JobState> states;
  for (const auto& e : s.events()) states.push_back(e.state());
  EXPECT_EQ(states, (std::vector<controller::JobState>{controller::PENDING, controller::RUNNING, controller::RESTARTING,
                                                        controller::RUNNING, controller::FAILED}));
  EXPECT_THAT(s.events(2).message(), HasSubstr("no heartbeat"));
  EXPECT_THAT(ctl.log.str(), HasSubstr("running -> restarting"));
}

TEST_F(ControllerApiTest, UnregisteredRanksFailTheAttempt) {
  ctl.options.register_timeout_ms = 300;
  ctl.start();
  controller::SubmitJobRequest r = job_request(2);
  r.set_max_restarts(0);
  const auto job = submit(r);
  ASSERT_TRUE(register_rank(job.token(), register_request(job.job_id(), 0, 2)).ok());
  const auto s = ctl.wait_for(job.job_id(), std::chrono::seconds(10),
                              [](const auto& s) { return s.state() == controller::FAILED; });
  ASSERT_EQ(s.state(), controller::FAILED);
  EXPECT_THAT(s.events().rbegin()->message(), HasSubstr("only 1 of 2 ranks registered"));
}

TEST_F(ControllerApiTest, StalledJobIsRestarted) {
  ctl.options.stall_timeout_ms = 400;  // heartbeats keep coming: only the step stands still
  ctl.start();
  controller::SubmitJobRequest r = job_request();
  r.set_max_restarts(1);
  const auto job = submit(r);
  ASSERT_TRUE(register_rank(job.token(), register_request(job.job_id())).ok());
  controller::HeartbeatRequest h;
  h.set_job_id(job.job_id());
  h.set_attempt(1);
  h.set_step(7);
  auto s = ctl.status(job.job_id());
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (s.attempt() == 1 && std::chrono::steady_clock::now() < deadline) {
    controller::HeartbeatReply reply;
    ASSERT_TRUE(ctl.stub->Heartbeat(ctl.context(job.token()).get(), h, &reply).ok());
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    s = ctl.status(job.job_id());
  }
  ASSERT_EQ(s.attempt(), 2);
  EXPECT_THAT(s.events(2).message(), HasSubstr("no rank completed a step"));
  EXPECT_THAT(s.events(2).message(), HasSubstr("last step 7"));
}

class ExitingLauncherTest : public ControllerApiTest {
 protected:
  ExitingLauncherTest() : ControllerApiTest("exit \"${LOOM_TEST_EXIT:-3}\"") {}
};

TEST_F(ExitingLauncherTest, ExitStatusDecidesBetweenFinishedAndRestart) {
  ctl.start();
  controller::SubmitJobRequest r = job_request();
  r.set_max_restarts(2);
  const auto failing = submit(r);
  auto s = ctl.wait_for(failing.job_id(), std::chrono::seconds(10),
                        [](const auto& s) { return s.state() == controller::FAILED; });
  ASSERT_EQ(s.state(), controller::FAILED);
  EXPECT_EQ(s.restarts(), 2);
  EXPECT_EQ(s.attempt(), 3);
  EXPECT_THAT(s.events().rbegin()->message(), HasSubstr("exited with status 3"));

  setenv("LOOM_TEST_EXIT", "0", 1);  // inherited by the next launcher
  const auto finishing = submit(r);
  unsetenv("LOOM_TEST_EXIT");
  s = ctl.wait_for(finishing.job_id(), std::chrono::seconds(10),
                   [](const auto& s) { return s.state() == controller::FINISHED; });
  EXPECT_EQ(s.state(), controller::FINISHED);
  EXPECT_EQ(s.restarts(), 0);
}

TEST_F(ControllerApiTest, WorkerClientReportsAndObeysControls) {
  ctl.options.heartbeat_interval_ms = 50;
  ctl.start();
  const auto job = submit(job_request());
  WorkerSettings settings;
  settings.address = ctl.address;
  settings.job_id = job.job_id();
  settings.token = job.token();
  settings.host = "worker-test-host";  // this test process is no process of the job's launcher
  ProcessEnvironment process;  // rank 0 of 1
  auto worker = std::make_unique<WorkerClient>(settings, process, Device::cpu());

  for (int step = 1; step <= 3; ++step)
    worker->on_step({{"step", step}, {"loss", 4.0 / step}, {"tokens_per_s", 1000.0 * step}, {"mfu", 0.01 * step},
                     {"ms_per_step", 2.5}, {"time_ms", {{"data", 0.5}, {"forward_backward", 1.5}, {"optimizer", 0.5}}}});
  EXPECT_FALSE(worker->poll().stop);
  auto s = ctl.wait_for(job.job_id(), std::chrono::seconds(10), [](const auto& s) { return s.step() == 3; });
  ASSERT_EQ(s.step(), 3);
  EXPECT_DOUBLE_EQ(s.last_metrics().loss(), 4.0 / 3);
  EXPECT_DOUBLE_EQ(s.last_metrics().mfu(), 0.03);
  EXPECT_DOUBLE_EQ(s.last_metrics().step_times().forward_backward_ms(), 1.5);
  EXPECT_GT(s.last_metrics().host_rss_bytes(), 0);
  {
    controller::WatchMetricsRequest r;
    r.set_job_id(job.job_id());
    r.set_from_step(1);
    auto context = ctl.context(job.token());
    auto reader = ctl.stub->WatchMetrics(context.get(), r);
    controller::MetricsReport m;
    ASSERT_TRUE(reader->Read(&m));
    EXPECT_EQ(m.step(), 2);
    ASSERT_TRUE(reader->Read(&m));
    EXPECT_EQ(m.step(), 3);
    context->TryCancel();
    while (reader->Read(&m)) {
    }
    reader->Finish();
  }

  // Pause: poll() blocks (and the controller sees the rank paused) until resume.
  ASSERT_TRUE(control(ctl.admin_token, job.job_id(), ControlRequest::PAUSE).ok());
  auto paused = ctl.wait_for(job.job_id(), std::chrono::seconds(10),
                             [](const auto& s) { return s.ranks_size() == 1 && s.control().paused(); });
  std::this_thread::sleep_for(std::chrono::milliseconds(200));  // heartbeats carry the pause to the worker
  auto polled = std::async(std::launch::async, [&] { return worker->poll(); });
  s = ctl.wait_for(job.job_id(), std::chrono::seconds(10), [](const auto& s) { return s.ranks(0).paused(); });
  EXPECT_TRUE(s.ranks(0).paused());
  EXPECT_EQ(polled.wait_for(std::chrono::milliseconds(0)), std::future_status::timeout);
  ASSERT_TRUE(control(ctl.admin_token, job.job_id(), ControlRequest::RESUME).ok());
  const TrainingObserver::Control after_pause = polled.get();
  EXPECT_FALSE(after_pause.stop);

  // Checkpoint-now: exactly one poll() asks for it.
  ASSERT_TRUE(control(ctl.admin_token, job.job_id(), ControlRequest::CHECKPOINT_NOW).ok());
  int checkpoints = 0;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (checkpoints == 0 && std::chrono::steady_clock::now() < deadline) {
    checkpoints += worker->poll().checkpoint_now;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(checkpoints, 1);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_FALSE(worker->poll().checkpoint_now);

  ASSERT_TRUE(control(ctl.admin_token, job.job_id(), ControlRequest::STOP).ok());
  bool stopped = false;
  while (!stopped && std::chrono::steady_clock::now() < deadline + std::chrono::seconds(10)) {
    stopped = worker->poll().stop;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_TRUE(stopped);
  worker.reset();  // says goodbye: the rank is no longer watched
  s = ctl.status(job.job_id());
  ASSERT_EQ(s.ranks_size(), 1);
  EXPECT_TRUE(s.ranks(0).finished());
}

TEST_F(ControllerApiTest, DashboardServesThePageJsonAndMetricsThatPassPromtool) {
  ctl.start();
  const auto job = submit(job_request());
  ASSERT_TRUE(register_rank(job.token(), register_request(job.job_id())).ok());
  for (int step = 1; step <= 4; ++step) {
    controller::MetricsReport m;
    m.set_job_id(job.job_id());
    m.set_attempt(1);
    m.set_step(step);
    m.set_loss(3.5 - 0.1 * step);
    m.set_tokens_per_s(1234.5);
    m.set_mfu(0.125);
    m.mutable_step_times()->set_total_ms(8);
    controller::ReportMetricsReply reply;
    ASSERT_TRUE(ctl.stub->ReportMetrics(ctl.context(job.token()).get(), m, &reply).ok());
  }
  DashboardOptions d;
  d.static_dir = std::string(LOOM_SOURCE_DIR) + "/launch/dashboard";
  d.vendor_dir = std::string(LOOM_BINARY_DIR) + "/npm/node_modules/uplot/dist";
  DashboardServer dashboard(*ctl.jobs, d);
  httplib::Client http("127.0.0.1", dashboard.port());

  auto page = http.Get("/");
  ASSERT_TRUE(page);
  EXPECT_EQ(page->status, 200);
  EXPECT_THAT(page->body, HasSubstr("chart-mfu"));
  auto library = http.Get("/vendor/uPlot.iife.min.js");
  ASSERT_TRUE(library);
  EXPECT_EQ(library->status, 200);

  auto json = http.Get("/api/jobs/" + job.job_id());
  ASSERT_TRUE(json);
  const auto j = nlohmann::json::parse(json->body);
  EXPECT_EQ(j["state"], "running");
  EXPECT_EQ(j["metrics"]["mfu"].size(), 4u);
  EXPECT_DOUBLE_EQ(j["metrics"]["mfu"][3].get<double>(), 0.125);
  auto missing = http.Get("/api/jobs/job-999");
  ASSERT_TRUE(missing);
  EXPECT_EQ(missing->status, 404);

  auto metrics = http.Get("/metrics");
  ASSERT_TRUE(metrics);
  EXPECT_EQ(metrics->status, 200);
  EXPECT_THAT(metrics->body, HasSubstr("loom_job_mfu_ratio{loom_job=\"" + job.job_id() + "\"} 0.125"));
  EXPECT_THAT(metrics->body, HasSubstr("loom_job_restarts_total{loom_job=\"" + job.job_id() + "\"} 0"));
  EXPECT_THAT(metrics->body, HasSubstr("loom_job_steps_total{loom_job=\"" + job.job_id() + "\"} 4"));
  const std::string file = tmp / "metrics.txt";
  write_text_file(file, metrics->body);
  const std::string cmd = "promtool check metrics < " + file + " 2>&1";
  FILE* pipe = popen(cmd.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  std::string output;
  char buf[512];
  while (fgets(buf, sizeof buf, pipe)) output += buf;
  const int status = pclose(pipe);
  EXPECT_EQ(status, 0) << "promtool (from Debian's prometheus package; scripts/setup.sh installs it): " << output;
  EXPECT_EQ(output, "");
}

}  // namespace
}  // namespace loom::testing
