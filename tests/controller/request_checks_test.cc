// Requests with values out of range (negative or huge numbers, NaN, empty or overlong strings, control bytes)
// get INVALID_ARGUMENT naming the field, change nothing, and the server keeps serving (launch/request_checks.h).
#include <gmock/gmock.h>
#include <sys/stat.h>

#include <cmath>
#include <limits>

#include "core/config.h"
#include "tests/controller/controller_testing.h"

namespace loom::testing {
namespace {

using ::testing::HasSubstr;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

class ControllerRequestChecksTest : public ::testing::Test {
 protected:
  ControllerRequestChecksTest() : ctl(tmp / "jobs") {
    write_text_file(tmp / "launcher.sh", "#!/bin/sh\nexec sleep 60\n");
    chmod((tmp / "launcher.sh").c_str(), 0755);
    ctl.options.launcher = tmp / "launcher.sh";
    ctl.options.heartbeat_timeout_ms = 60000;
    write_token_data(tmp / "data", 4096, 64, 1);
    ctl.start();
    job = submit_status(submit_request(), &accepted);
    EXPECT_TRUE(job.ok()) << job.error_message();
    controller::RegisterRequest r = register_request();
    controller::RegisterReply reply;
    EXPECT_TRUE(ctl.stub->Register(ctl.context(accepted.token()).get(), r, &reply).ok());
  }

  controller::SubmitJobRequest submit_request() {
    controller::SubmitJobRequest r;
    const std::string out = tmp / ("out_" + std::to_string(++submitted));
    *r.mutable_config() = parse_run_config(tiny_job_yaml(tmp / "data", out, 20, 10), "test.yaml");
    r.set_world_size(1);
    return r;
  }
  grpc::Status submit_status(const controller::SubmitJobRequest& r, controller::SubmitJobReply* reply) {
    return ctl.stub->SubmitJob(ctl.context(ctl.admin_token).get(), r, reply);
  }
  controller::RegisterRequest register_request() {
    controller::RegisterRequest r;
    r.set_job_id(accepted.job_id());
    r.set_attempt(1);
    r.set_rank(0);
    r.set_world_size(1);
    r.set_host("worker-host");
    r.set_pid(4242);
    r.set_device("cpu");
    return r;
  }
  controller::HeartbeatRequest heartbeat_request() {
    controller::HeartbeatRequest r;
    r.set_job_id(accepted.job_id());
    r.set_attempt(1);
    r.set_step(3);
    return r;
  }
  controller::MetricsReport metrics_report() {
    controller::MetricsReport r;
    r.set_job_id(accepted.job_id());
    r.set_attempt(1);
    r.set_step(3);
    r.set_loss(2.5);
    r.set_tokens_per_s(100);
    r.set_mfu(0.1);
    r.set_lr(1e-3);
    return r;
  }

  static void expect_invalid(const grpc::Status& s, const std::string& field) {
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << field << ": " << s.error_message();
    EXPECT_THAT(s.error_message(), HasSubstr(field));
    EXPECT_LT(s.error_message().size(), 400u) << "the message quotes a long value in full";
  }

  TempDir tmp;
  LocalController ctl;
  int submitted = 0;
  controller::SubmitJobReply accepted;
  grpc::Status job;
};

TEST_F(ControllerRequestChecksTest, SubmitJobFields) {
  const auto refused = [&](const std::function<void(controller::SubmitJobRequest&)>& change,
                           const std::string& field) {
    controller::SubmitJobRequest r = submit_request();
    change(r);
    controller::SubmitJobReply reply;
    expect_invalid(submit_status(r, &reply), field);
  };
  refused([](auto& r) { r.set_name(std::string(129, 'n')); }, "name");
  refused([](auto& r) { r.set_name("two\nlines"); }, "name");
  refused([](auto& r) { r.set_world_size(std::numeric_limits<int32_t>::max()); }, "world_size");
  refused([](auto& r) { r.set_world_size(-3); }, "world_size");
  refused([](auto& r) { r.set_max_restarts(-1); }, "max_restarts");
  refused([](auto& r) { r.set_max_restarts(1001); }, "max_restarts");
  // A NUL would end the argv entry before what the loader checked.
  refused([](auto& r) { r.add_args(std::string("train.max_steps=5\0 train.out_dir=/", 34)); }, "argument");
  refused([](auto& r) { r.add_args("train.max_steps=" + std::string(5000, '5')); }, "argument");
  refused([](auto& r) { for (int i = 0; i < 257; ++i) r.add_args("train.max_steps=5"); }, "args");
  EXPECT_EQ(ctl.jobs->list().jobs_size(), 1);
}

TEST_F(ControllerRequestChecksTest, RegisterFields) {
  const auto refused = [&](const std::function<void(controller::RegisterRequest&)>& change, const std::string& field) {
    controller::RegisterRequest r = register_request();
    change(r);
    controller::RegisterReply reply;
    expect_invalid(ctl.stub->Register(ctl.context(accepted.token()).get(), r, &reply), field);
  };
  refused([](auto& r) { r.set_host(""); }, "host");
  refused([](auto& r) { r.set_host("a host"); }, "host");
  refused([](auto& r) { r.set_host(std::string(256, 'h')); }, "host");
  refused([](auto& r) { r.set_device(std::string(1000, 'd')); }, "device");
  refused([](auto& r) { r.set_device("cpu\x1b[2J"); }, "device");
  refused([](auto& r) { r.set_pid(int64_t{1} << 40); }, "pid");
  refused([](auto& r) { r.set_pid(std::numeric_limits<int64_t>::min()); }, "pid");
  refused([](auto& r) { r.set_rank(std::numeric_limits<int32_t>::max()); }, "rank");
  // An overlong job id is quoted in short in the refusal.
  controller::RegisterRequest r = register_request();
  r.set_job_id(std::string(100000, 'j'));
  controller::RegisterReply reply;
  const grpc::Status s = ctl.stub->Register(ctl.context(accepted.token()).get(), r, &reply);
  EXPECT_FALSE(s.ok());
  EXPECT_LT(s.error_message().size(), 400u);
  const auto status = ctl.status(accepted.job_id());
  ASSERT_EQ(status.ranks_size(), 1);
  EXPECT_EQ(status.ranks(0).host(), "worker-host");
}

TEST_F(ControllerRequestChecksTest, HeartbeatAndMetricsFields) {
  const auto heartbeat_refused = [&](const std::function<void(controller::HeartbeatRequest&)>& change,
                                     const std::string& field) {
    controller::HeartbeatRequest r = heartbeat_request();
    change(r);
    controller::HeartbeatReply reply;
    expect_invalid(ctl.stub->Heartbeat(ctl.context(accepted.token()).get(), r, &reply), field);
  };
  heartbeat_refused([](auto& r) { r.set_step(-1); }, "step");
  heartbeat_refused([](auto& r) { r.set_host_rss_bytes(-5); }, "host_rss_bytes");
  heartbeat_refused([](auto& r) { r.mutable_step_times()->set_total_ms(kNaN); }, "step_times.total_ms");
  heartbeat_refused([](auto& r) { r.mutable_step_times()->set_data_ms(-1); }, "step_times.data_ms");

  const auto report_refused = [&](const std::function<void(controller::MetricsReport&)>& change,
                                  const std::string& field) {
    controller::MetricsReport r = metrics_report();
    change(r);
    controller::ReportMetricsReply reply;
    expect_invalid(ctl.stub->ReportMetrics(ctl.context(accepted.token()).get(), r, &reply), field);
  };
  report_refused([](auto& r) { r.set_step(std::numeric_limits<int64_t>::min()); }, "step");
  report_refused([](auto& r) { r.set_tokens_per_s(kInf); }, "tokens_per_s");
  report_refused([](auto& r) { r.set_mfu(-0.5); }, "mfu");
  report_refused([](auto& r) { r.set_lr(kNaN); }, "lr");
  report_refused([](auto& r) { r.set_device_bytes_in_use(-1); }, "device_bytes_in_use");
  report_refused([](auto& r) { r.mutable_step_times()->set_optimizer_ms(kInf); }, "step_times.optimizer_ms");
  // A diverging run's NaN loss is a fact to report, not a malformed request.
  controller::MetricsReport diverged = metrics_report();
  diverged.set_loss(kNaN);
  diverged.set_grad_norm(kInf);
  controller::ReportMetricsReply reply;
  ASSERT_TRUE(ctl.stub->ReportMetrics(ctl.context(accepted.token()).get(), diverged, &reply).ok());
  const auto status = ctl.status(accepted.job_id());
  EXPECT_TRUE(std::isnan(status.last_metrics().loss()));
  EXPECT_EQ(status.ranks(0).step(), 0) << "a refused heartbeat changed the rank's step";

  controller::ControlRequest pause;
  pause.set_job_id(accepted.job_id());
  pause.set_action(controller::ControlRequest::PAUSE);
  pause.set_step(-1);
  controller::ControlReply control_reply;
  expect_invalid(ctl.stub->Control(ctl.context(ctl.admin_token).get(), pause, &control_reply), "step");
  EXPECT_FALSE(ctl.status(accepted.job_id()).control().paused());
}

}  // namespace
}  // namespace loom::testing
