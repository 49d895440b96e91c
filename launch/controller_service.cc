#include "launch/controller_service.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

namespace loom {

namespace {

constexpr char kTokenKey[] = "authorization";
constexpr char kBearer[] = "Bearer ";

std::string bearer_token(const grpc::ServerContext* context) {
  const auto& metadata = context->client_metadata();
  auto it = metadata.find(kTokenKey);
  if (it == metadata.end()) return "";
  const std::string value(it->second.data(), it->second.size());
  if (value.rfind(kBearer, 0) != 0) return "";
  return value.substr(sizeof kBearer - 1);
}

// Runs a handler body, turning refusals and unexpected exceptions into status codes.
template <typename Body>
grpc::Status guarded(const char* rpc, Body&& body) {
  try {
    body();
    return grpc::Status::OK;
  } catch (const JobError& e) {
    switch (e.code()) {
      case JobError::Code::kNotFound: return {grpc::StatusCode::NOT_FOUND, e.what()};
      case JobError::Code::kStaleAttempt: return {grpc::StatusCode::FAILED_PRECONDITION, e.what()};
      case JobError::Code::kPermissionDenied: return {grpc::StatusCode::PERMISSION_DENIED, e.what()};
      case JobError::Code::kInvalidArgument: break;
    }
    return {grpc::StatusCode::INVALID_ARGUMENT, e.what()};
  } catch (const Error& e) {
    return {grpc::StatusCode::INVALID_ARGUMENT, std::string(rpc) + ": " + e.what()};
  } catch (const std::exception& e) {
    return {grpc::StatusCode::INTERNAL, std::string(rpc) + ": " + e.what()};
  }
}

}  // namespace

ControllerService::ControllerService(JobSupervisor& jobs, std::string admin_token)
    : jobs_(jobs), admin_token_(std::move(admin_token)) {
  LOOM_CHECK(!admin_token_.empty(), "the controller's admin token is empty");
}

grpc::Status ControllerService::authorize(const grpc::ServerContext* context, Allowed allowed,
                                          const std::string& job_id) const {
  const std::string token = bearer_token(context);
  if (token.empty())
    return {grpc::StatusCode::UNAUTHENTICATED, "missing \"authorization: Bearer <token>\" metadata"};
  if (allowed != Allowed::kJob && secrets_equal(token, admin_token_)) return grpc::Status::OK;
  if (allowed != Allowed::kAdmin && jobs_.job_token_matches(job_id, token)) return grpc::Status::OK;
  return {grpc::StatusCode::UNAUTHENTICATED,
          allowed == Allowed::kAdmin ? "wrong admin token" : "wrong token for job " + quoted(job_id)};
}

grpc::Status ControllerService::SubmitJob(grpc::ServerContext* context, const controller::SubmitJobRequest* request,
                                          controller::SubmitJobReply* reply) {
  if (auto s = authorize(context, Allowed::kAdmin, ""); !s.ok()) return s;
  return guarded("SubmitJob", [&] { *reply = jobs_.submit(*request); });
}

grpc::Status ControllerService::Register(grpc::ServerContext* context, const controller::RegisterRequest* request,
                                         controller::RegisterReply* reply) {
  if (auto s = authorize(context, Allowed::kJob, request->job_id()); !s.ok()) return s;
  return guarded("Register", [&] { *reply = jobs_.register_rank(*request); });
}

grpc::Status ControllerService::Heartbeat(grpc::ServerContext* context, const controller::HeartbeatRequest* request,
                                          controller::HeartbeatReply* reply) {
  if (auto s = authorize(context, Allowed::kJob, request->job_id()); !s.ok()) return s;
  return guarded("Heartbeat", [&] { *reply = jobs_.heartbeat(*request); });
}

grpc::Status ControllerService::ReportMetrics(grpc::ServerContext* context, const controller::MetricsReport* request,
                                              controller::ReportMetricsReply*) {
  if (auto s = authorize(context, Allowed::kJob, request->job_id()); !s.ok()) return s;
  return guarded("ReportMetrics", [&] { jobs_.report_metrics(*request); });
}

grpc::Status ControllerService::Control(grpc::ServerContext* context, const controller::ControlRequest* request,
                                        controller::ControlReply* reply) {
  if (auto s = authorize(context, Allowed::kAdminOrJob, request->job_id()); !s.ok()) return s;
  return guarded("Control", [&] { *reply = jobs_.control(*request); });
}

grpc::Status ControllerService::JobStatus(grpc::ServerContext* context, const controller::JobStatusRequest* request,
                                          controller::JobStatusReply* reply) {
  if (auto s = authorize(context, Allowed::kAdminOrJob, request->job_id()); !s.ok()) return s;
  return guarded("JobStatus", [&] { *reply = jobs_.status(request->job_id()); });
}

grpc::Status ControllerService::ListJobs(grpc::ServerContext* context, const controller::ListJobsRequest*,
                                         controller::ListJobsReply* reply) {
  if (auto s = authorize(context, Allowed::kAdmin, ""); !s.ok()) return s;
  return guarded("ListJobs", [&] { *reply = jobs_.list(); });
}

grpc::Status ControllerService::WatchMetrics(grpc::ServerContext* context,
                                             const controller::WatchMetricsRequest* request,
                                             grpc::ServerWriter<controller::MetricsReport>* writer) {
  if (auto s = authorize(context, Allowed::kAdminOrJob, request->job_id()); !s.ok()) return s;
  return guarded("WatchMetrics", [&] {
    int64_t last_step = request->from_step();
    bool more = true;
    // Wakes at least twice a second to notice a cancelled call.
    while (more && !context->IsCancelled()) {
      std::vector<controller::MetricsReport> batch;
      more = jobs_.wait_metrics(request->job_id(), last_step,
                                std::chrono::steady_clock::now() + std::chrono::milliseconds(500), &batch);
      for (const auto& m : batch) {
        if (!writer->Write(m)) return;
        last_step = m.step();
      }
    }
  });
}

std::string read_file_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, ": cannot read");
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

void write_secret_file(const std::string& path, const std::string& text) {
  const std::string temporary = path + ".tmp-" + random_token().substr(0, 16);
  const int fd = open(temporary.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) fail(path, ": cannot create ", temporary, ": ", std::strerror(errno));
  bool ok = fchmod(fd, 0600) == 0;  // the mode given to open() is filtered by the umask; this is not
  for (size_t done = 0; ok && done < text.size();) {
    const ssize_t n = write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    ok = n > 0;
    if (ok) done += static_cast<size_t>(n);
  }
  ok = ok && fsync(fd) == 0;
  const int saved = errno;
  ok = close(fd) == 0 && ok;
  if (!ok || rename(temporary.c_str(), path.c_str()) != 0) {
    const int error = ok ? errno : saved;
    unlink(temporary.c_str());
    fail(path, ": cannot write: ", std::strerror(error));
  }
}

std::unique_ptr<grpc::Server> start_grpc_server(ControllerService& service, const GrpcServerOptions& options,
                                                int* bound_port) {
  std::shared_ptr<grpc::ServerCredentials> credentials;
  if (!options.tls_cert_file.empty() || !options.tls_key_file.empty()) {
    LOOM_CHECK(!options.tls_cert_file.empty() && !options.tls_key_file.empty(),
               "TLS needs both a certificate file and a key file");
    grpc::SslServerCredentialsOptions ssl;
    ssl.pem_key_cert_pairs.push_back({read_file_text(options.tls_key_file), read_file_text(options.tls_cert_file)});
    credentials = grpc::SslServerCredentials(ssl);
  } else {
    credentials = grpc::InsecureServerCredentials();
  }
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.address, credentials, bound_port);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || *bound_port == 0) fail("controller: cannot listen on ", options.address);
  return server;
}

std::shared_ptr<grpc::Channel> controller_channel(const std::string& address, const std::string& ca_file) {
  // gRPC backs off up to 120 s between reconnects by default; a worker whose controller restarts (or whose
  // network comes back) should find it within a heartbeat or two.
  grpc::ChannelArguments arguments;
  arguments.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);  // a channel of its own: a new one dials anew
  arguments.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 500);
  arguments.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
  arguments.SetInt(GRPC_ARG_DNS_MIN_TIME_BETWEEN_RESOLUTIONS_MS, 1000);
  if (ca_file.empty()) return grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), arguments);
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = read_file_text(ca_file);
  return grpc::CreateCustomChannel(address, grpc::SslCredentials(ssl), arguments);
}

void set_call_token(grpc::ClientContext& context, const std::string& token) {
  context.AddMetadata(kTokenKey, kBearer + token);
}

}  // namespace loom
