// The controller's gRPC service (launch/controller.proto) over a JobSupervisor, and the server that hosts it.
//
// Authentication (every call, from the "authorization: Bearer <token>" metadata entry): SubmitJob and ListJobs
// need the admin token; Register, Heartbeat and ReportMetrics the job's token; Control, JobStatus and
// WatchMetrics either. A missing or wrong token gives UNAUTHENTICATED (a job token for an unknown job too, so
// tokens cannot be used to probe job ids); a refused request INVALID_ARGUMENT (a field out of range:
// launch/request_checks.h), NOT_FOUND (unknown job, with the admin token), FAILED_PRECONDITION (a worker of an
// earlier attempt) or PERMISSION_DENIED (a Register pid on this host that is no process of the job's
// launcher); an unexpected exception INTERNAL. No request crashes the server. The handlers can be called
// directly (a default-constructed grpc::ServerContext, metadata added with grpc::testing::ServerContextTestSpouse),
// without a running server.
//
// Thread-safety: gRPC calls the handlers from its own threads; all shared state lives in the JobSupervisor.
#pragma once
#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

#include "launch/controller.grpc.pb.h"
#include "launch/job_supervisor.h"

namespace loom {

class ControllerService final : public controller::Controller::Service {
 public:
  // `jobs` is not owned and must outlive the service. `admin_token` must not be empty.
  ControllerService(JobSupervisor& jobs, std::string admin_token);

  grpc::Status SubmitJob(grpc::ServerContext* context, const controller::SubmitJobRequest* request,
                         controller::SubmitJobReply* reply) override;
  grpc::Status Register(grpc::ServerContext* context, const controller::RegisterRequest* request,
                        controller::RegisterReply* reply) override;
  grpc::Status Heartbeat(grpc::ServerContext* context, const controller::HeartbeatRequest* request,
                         controller::HeartbeatReply* reply) override;
  grpc::Status ReportMetrics(grpc::ServerContext* context, const controller::MetricsReport* request,
                             controller::ReportMetricsReply* reply) override;
  grpc::Status Control(grpc::ServerContext* context, const controller::ControlRequest* request,
                       controller::ControlReply* reply) override;
  grpc::Status JobStatus(grpc::ServerContext* context, const controller::JobStatusRequest* request,
                         controller::JobStatusReply* reply) override;
  grpc::Status ListJobs(grpc::ServerContext* context, const controller::ListJobsRequest* request,
                        controller::ListJobsReply* reply) override;
  grpc::Status WatchMetrics(grpc::ServerContext* context, const controller::WatchMetricsRequest* request,
                            grpc::ServerWriter<controller::MetricsReport>* writer) override;

 private:
  enum class Allowed { kAdmin, kJob, kAdminOrJob };
  grpc::Status authorize(const grpc::ServerContext* context, Allowed allowed, const std::string& job_id) const;

  JobSupervisor& jobs_;
  std::string admin_token_;
};

struct GrpcServerOptions {
  std::string address = "127.0.0.1:0";  // host:port; port 0 picks a free one
  std::string tls_cert_file;            // PEM certificate chain; with tls_key_file enables TLS
  std::string tls_key_file;             // PEM private key
};

// Builds and starts a server for `service` (not owned; must outlive the server). Sets *bound_port to the port
// it listens on. Throws loom::Error when the address cannot be bound or a TLS file cannot be read.
std::unique_ptr<grpc::Server> start_grpc_server(ControllerService& service, const GrpcServerOptions& options,
                                                int* bound_port);

// The client side: a channel to `address`, with TLS trusting `ca_file` when it is not empty (plaintext else).
// Each channel has a connection of its own and reconnects within ~2 s of the controller's return.
std::shared_ptr<grpc::Channel> controller_channel(const std::string& address, const std::string& ca_file);
// Adds the token to a call's metadata.
void set_call_token(grpc::ClientContext& context, const std::string& token);

// The whole contents of a file (for tokens and PEM files); throws loom::Error naming the file.
std::string read_file_text(const std::string& path);

// Writes a secret (a token) to `path`, readable and writable by the owner only: mode 0600 set explicitly with
// fchmod (whatever the umask) on a new file beside `path` that then replaces it. A file there before, whatever
// its mode, is replaced rather than rewritten (a reader that opened it earlier sees nothing new); a symbolic
// link there is replaced, not followed. Throws loom::Error naming the file.
void write_secret_file(const std::string& path, const std::string& text);

}  // namespace loom
