// The controller over TLS (grpc::SslServerCredentials): clients and workers that trust the certificate get
// through; a plaintext client does not.
#include <gmock/gmock.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/config.h"
#include "launch/worker_client.h"
#include "tests/controller/controller_testing.h"

namespace loom::testing {
namespace {

// A fresh self-signed certificate for localhost (openssl CLI, EC P-256 for speed).
void make_certificate(const std::string& cert, const std::string& key) {
  const std::string cmd = "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 "
                          "-subj /CN=localhost -addext subjectAltName=DNS:localhost -keyout " + key + " -out " +
                          cert + " > /dev/null 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
}

TEST(ControllerTlsTest, TrustedClientsAndWorkersConnectPlaintextDoesNot) {
  TempDir tmp;
  make_certificate(tmp / "cert.pem", tmp / "key.pem");
  LocalController ctl(tmp / "jobs");
  // A stand-in launcher that just waits, so the job stays running while a worker registers.
  write_text_file(tmp / "launcher.sh", "#!/bin/sh\nexec sleep 60\n");
  chmod((tmp / "launcher.sh").c_str(), 0755);
  ctl.options.launcher = tmp / "launcher.sh";
  ctl.options.worker_ca_file = tmp / "cert.pem";
  ctl.grpc_options.tls_cert_file = tmp / "cert.pem";
  ctl.grpc_options.tls_key_file = tmp / "key.pem";
  ctl.start();

  write_token_data(tmp / "data", 2048, 64, 1);
  controller::SubmitJobRequest request;
  *request.mutable_config() = parse_run_config(tiny_job_yaml(tmp / "data", tmp / "out", 4, 2), "tls.yaml");
  request.set_world_size(1);
  controller::SubmitJobReply job;
  const grpc::Status submitted = ctl.stub->SubmitJob(ctl.context(ctl.admin_token).get(), request, &job);
  ASSERT_TRUE(submitted.ok()) << submitted.error_message();
  EXPECT_EQ(ctl.status(job.job_id()).job_id(), job.job_id());

  auto plaintext = controller::Controller::NewStub(controller_channel(ctl.address, ""));
  controller::ListJobsReply listed;
  auto context = ctl.context(ctl.admin_token);
  context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(3));
  EXPECT_FALSE(plaintext->ListJobs(context.get(), {}, &listed).ok());
  EXPECT_EQ(listed.jobs_size(), 0);

  // A worker that trusts the certificate registers and heartbeats.
  WorkerSettings settings;
  settings.address = ctl.address;
  settings.job_id = job.job_id();
  settings.token = job.token();
  settings.ca_file = tmp / "cert.pem";
  settings.host = "tls-test-host";  // this test process is no process of the job's launcher
  {
    WorkerClient worker(settings, ProcessEnvironment{}, Device::cpu());
    const auto s = ctl.status(job.job_id());
    ASSERT_EQ(s.ranks_size(), 1);
    EXPECT_EQ(s.ranks(0).device(), "cpu");
    EXPECT_EQ(s.ranks(0).pid(), getpid());
  }
  EXPECT_TRUE(ctl.status(job.job_id()).ranks(0).finished());
}

}  // namespace
}  // namespace loom::testing
