// The dashboard's HTTP server under slow clients: connections that open and send nothing neither starve
// /metrics nor stay open forever (launch/dashboard_server.h: worker cap, idle and read/write timeouts).
#include <arpa/inet.h>
#include <gmock/gmock.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>

#include "launch/dashboard_server.h"
#include "tests/controller/controller_testing.h"

namespace loom::testing {
namespace {

// A TCP connection to 127.0.0.1:port that never sends a byte.
class SilentClient {
 public:
  explicit SilentClient(int port) : fd_(socket(AF_INET, SOCK_STREAM, 0)) {
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(static_cast<uint16_t>(port));
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = fd_ >= 0 && connect(fd_, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0;
  }
  ~SilentClient() {
    if (fd_ >= 0) close(fd_);
  }
  bool connected() const { return connected_; }
  // The server has not closed it (a read finds no data and no end of stream).
  bool open() const {
    char byte;
    return recv(fd_, &byte, 1, MSG_DONTWAIT) < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
  }
  // Blocks until the server closes the connection (true) or `seconds` pass (false).
  bool closed_by_server_within(int seconds) {
    timeval timeout{seconds, 0};
    setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    char byte;
    return recv(fd_, &byte, 1, 0) == 0;
  }

 private:
  int fd_;
  bool connected_ = false;
};

class ControllerHttpTest : public ::testing::Test {
 protected:
  ControllerHttpTest() {
    options.launcher = "/bin/false";
    options.jobs_dir = tmp / "jobs";
    options.log = &log;
    jobs = std::make_unique<JobSupervisor>(options);
    dashboard.static_dir = std::string(LOOM_SOURCE_DIR) + "/launch/dashboard";
    dashboard.vendor_dir = dashboard.static_dir;
  }

  // Opens `count` connections that send nothing. (They come at the pace the server accepts them: cpp-httplib
  // 0.11 listens with a backlog of 5, and the kernel drops a SYN beyond it, to be sent again a second later.)
  static std::vector<std::unique_ptr<SilentClient>> silent_clients(int port, int count) {
    std::vector<std::unique_ptr<SilentClient>> clients;
    for (int i = 0; i < count; ++i) {
      clients.push_back(std::make_unique<SilentClient>(port));
      EXPECT_TRUE(clients.back()->connected()) << "connection " << i;
    }
    return clients;
  }

  // GET /metrics with 10 s to connect and 10 s to answer.
  static void expect_metrics_answer(int port) {
    httplib::Client http("127.0.0.1", port);
    http.set_connection_timeout(10);
    http.set_read_timeout(10);
    const auto metrics = http.Get("/metrics");
    ASSERT_TRUE(metrics) << "no answer from /metrics within 10 s: " << httplib::to_string(metrics.error());
    EXPECT_EQ(metrics->status, 200);
    EXPECT_THAT(metrics->body, ::testing::HasSubstr("# TYPE loom_job_info gauge"));
  }

  TempDir tmp;
  SupervisorOptions options;
  std::ostringstream log;
  std::unique_ptr<JobSupervisor> jobs;
  DashboardOptions dashboard;
};

TEST_F(ControllerHttpTest, SilentClientsBelowTheCapLeaveMetricsAWorker) {
  dashboard.idle_timeout_s = 60;  // the silent connections stay open for the whole test
  DashboardServer server(*jobs, dashboard);
  // Fewer than DashboardOptions::max_connections (64), several times the worker threads cpp-httplib starts by
  // default (8, or one per core less one), each of which a silent connection would hold.
  auto silent = silent_clients(server.port(), 48);
  expect_metrics_answer(server.port());
  for (auto& c : silent) EXPECT_TRUE(c->open());
}

TEST_F(ControllerHttpTest, SilentClientsAboveTheCapAreDroppedAndMetricsAnswers) {
  DashboardServer server(*jobs, dashboard);  // idle connections closed after 2 s
  auto silent = silent_clients(server.port(), 80);
  expect_metrics_answer(server.port());
  // The server hangs up on a connection that sends no request.
  EXPECT_TRUE(silent.front()->closed_by_server_within(10));
  EXPECT_TRUE(silent.back()->closed_by_server_within(10));
}

}  // namespace
}  // namespace loom::testing
