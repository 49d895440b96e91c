// loom_multinode_load: simulated workers for the controller's load test (tests/multinode/load_test.sh).
//
//   loom_multinode_load run --address HOST:PORT --ca CA.pem --job JOB --token-file FILE --world N
//                           --first-rank R --ranks K --seconds S --out FILE
//     K workers (ranks R .. R+K-1 of a job of N ranks), each on a thread with a channel (and connection) of
//     its own as a rank process would have: Register, then a Heartbeat every second for S seconds (workers
//     spread over the second), then a last heartbeat marked finished. Rank 0, when it is among them, also
//     sends ReportMetrics ten times a second. Writes every heartbeat's round-trip time in milliseconds to
//     OUT (one a line) and prints a summary; a failed call, a stale or register_again answer counts as an
//     error. Exit 0 when no call failed, 1 otherwise.
//   loom_multinode_load report --max-p99-ms M FILES...
//     merges the OUT files: count, p50, p99, max; exit 0 when p99 < M, 1 otherwise.
#include <CLI/CLI.hpp>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <thread>
#include <vector>

#include "launch/controller.grpc.pb.h"
#include "launch/controller_service.h"

namespace loom {
namespace {

using Clock = std::chrono::steady_clock;

struct RunOptions {
  std::string address, ca, job, token_file, out;
  int world = 0, first_rank = 0, ranks = 0, seconds = 60;
};

std::string host_name() {
  char name[256] = {};
  gethostname(name, sizeof name - 1);
  return name;
}

std::unique_ptr<grpc::ClientContext> call_context(const std::string& token) {
  auto c = std::make_unique<grpc::ClientContext>();
  set_call_token(*c, token);
  c->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  return c;
}

// One connection per simulated rank, as separate rank processes would have.
std::unique_ptr<controller::Controller::Stub> own_stub(const RunOptions& o) {
  grpc::ChannelArguments arguments;
  arguments.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = read_file_text(o.ca);
  return controller::Controller::NewStub(grpc::CreateCustomChannel(o.address, grpc::SslCredentials(ssl), arguments));
}

class Workers {
 public:
  explicit Workers(const RunOptions& o) : o_(o), token_(read_file_text(o.token_file)) {
    while (!token_.empty() && std::isspace(static_cast<unsigned char>(token_.back()))) token_.pop_back();
  }

  int run() {
    start_ = Clock::now() + std::chrono::seconds(2);  // every worker registers before the first heartbeat
    std::vector<std::thread> threads;
    for (int i = 0; i < o_.ranks; ++i) threads.emplace_back([this, i] { worker(o_.first_rank + i, i); });
    if (o_.first_rank == 0) threads.emplace_back([this] { rank0_metrics(); });
    for (auto& t : threads) t.join();
    std::ofstream out(o_.out);
    for (double ms : latencies_) out << ms << "\n";
    std::sort(latencies_.begin(), latencies_.end());
    const auto at = [&](double q) {
      return latencies_.empty() ? 0.0 : latencies_[static_cast<size_t>(q * (latencies_.size() - 1))];
    };
    std::printf("%s: ranks %d..%d: %zu heartbeats, p50 %.2f ms, p99 %.2f ms, max %.2f ms, %d error(s), "
                "%d metrics reports\n",
                host_name().c_str(), o_.first_rank, o_.first_rank + o_.ranks - 1, latencies_.size(), at(0.5),
                at(0.99), latencies_.empty() ? 0.0 : latencies_.back(), errors_.load(), metrics_sent_.load());
    return errors_ == 0 && out ? 0 : 1;
  }

 private:
  void error(const std::string& what) {
    ++errors_;
    std::lock_guard lock(mu_);
    std::fprintf(stderr, "error: %s\n", what.c_str());
  }

  void worker(int rank, int index) {
    auto stub = own_stub(o_);
    controller::RegisterRequest r;
    r.set_job_id(o_.job);
    r.set_attempt(1);
    r.set_rank(rank);
    r.set_world_size(o_.world);
    r.set_host(host_name());
    r.set_pid(getpid());
    r.set_device("cpu");
    controller::RegisterReply registered;
    auto c = call_context(token_);
    c->set_wait_for_ready(true);
    if (const grpc::Status s = stub->Register(c.get(), r, &registered); !s.ok())
      return error("rank " + std::to_string(rank) + ": Register: " + s.error_message());
    // Heartbeats spread over each second, as independent processes' would be.
    const auto offset = std::chrono::milliseconds(1000 * index / std::max(1, o_.ranks));
    std::vector<double> mine;
    for (int beat = 0; beat <= o_.seconds; ++beat) {
      std::this_thread::sleep_until(start_ + offset + std::chrono::seconds(beat));
      controller::HeartbeatRequest h;
      h.set_job_id(o_.job);
      h.set_attempt(1);
      h.set_rank(rank);
      h.set_step(beat);
      h.set_host_rss_bytes(1 << 20);
      h.set_finished(beat == o_.seconds);
      controller::HeartbeatReply reply;
      auto context = call_context(token_);
      const auto t0 = Clock::now();
      const grpc::Status s = stub->Heartbeat(context.get(), h, &reply);
      mine.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
      if (!s.ok()) error("rank " + std::to_string(rank) + ": Heartbeat: " + s.error_message());
      if (reply.stale() || reply.register_again())
        error("rank " + std::to_string(rank) + ": Heartbeat answered stale or register_again");
    }
    std::lock_guard lock(mu_);
    latencies_.insert(latencies_.end(), mine.begin(), mine.end());
  }

  void rank0_metrics() {
    auto stub = own_stub(o_);
    std::this_thread::sleep_until(start_);
    const auto end = start_ + std::chrono::seconds(o_.seconds);
    for (int step = 1; Clock::now() < end; ++step) {
      controller::MetricsReport m;
      m.set_job_id(o_.job);
      m.set_attempt(1);
      m.set_rank(0);
      m.set_step(step);
      m.set_loss(5.0 / step);
      m.set_tokens_per_s(1e5);
      m.set_mfu(0.4);
      m.set_lr(3e-4);
      m.set_grad_norm(1.0);
      m.mutable_step_times()->set_total_ms(100);
      controller::ReportMetricsReply reply;
      auto context = call_context(token_);
      if (const grpc::Status s = stub->ReportMetrics(context.get(), m, &reply); !s.ok())
        error("ReportMetrics: " + s.error_message());
      else
        ++metrics_sent_;
      std::this_thread::sleep_until(start_ + std::chrono::milliseconds(100 * step));
    }
  }

  RunOptions o_;
  std::string token_;
  Clock::time_point start_;
  std::mutex mu_;
  std::vector<double> latencies_;
  std::atomic<int> errors_{0}, metrics_sent_{0};
};

int report(const std::vector<std::string>& files, double max_p99_ms) {
  std::vector<double> all;
  for (const auto& f : files) {
    std::ifstream in(f);
    if (!in) {
      std::fprintf(stderr, "%s: cannot read\n", f.c_str());
      return 2;
    }
    for (double ms; in >> ms;) all.push_back(ms);
  }
  if (all.empty()) {
    std::fprintf(stderr, "no heartbeat latencies in the files\n");
    return 1;
  }
  std::sort(all.begin(), all.end());
  const double p99 = all[static_cast<size_t>(0.99 * (all.size() - 1))];
  std::printf("all workers: %zu heartbeats, p50 %.2f ms, p99 %.2f ms (limit %.1f), max %.2f ms\n", all.size(),
              all[all.size() / 2], p99, max_p99_ms, all.back());
  return p99 < max_p99_ms ? 0 : 1;
}

}  // namespace
}  // namespace loom

int main(int argc, char** argv) {
  CLI::App app{"simulated workers for the controller's load test"};
  app.require_subcommand(1);
  loom::RunOptions o;
  CLI::App* run = app.add_subcommand("run", "run simulated workers");
  run->add_option("--address", o.address, "controller HOST:PORT")->required();
  run->add_option("--ca", o.ca, "root certificate (TLS)")->required()->check(CLI::ExistingFile);
  run->add_option("--job", o.job, "job id")->required();
  run->add_option("--token-file", o.token_file, "the job's token")->required()->check(CLI::ExistingFile);
  run->add_option("--world", o.world, "the job's ranks")->required()->check(CLI::Range(1, 65536));
  run->add_option("--first-rank", o.first_rank, "first simulated rank")->check(CLI::Range(0, 65535));
  run->add_option("--ranks", o.ranks, "simulated ranks")->required()->check(CLI::Range(1, 4096));
  run->add_option("--seconds", o.seconds, "heartbeating time")->check(CLI::Range(1, 3600));
  run->add_option("--out", o.out, "file for the heartbeat latencies (ms)")->required();
  std::vector<std::string> files;
  double max_p99_ms = 10;
  CLI::App* rep = app.add_subcommand("report", "merge latency files and check the p99");
  rep->add_option("files", files, "latency files")->required();
  rep->add_option("--max-p99-ms", max_p99_ms, "the p99 must stay below this")->check(CLI::PositiveNumber);
  CLI11_PARSE(app, argc, argv);
  try {
    if (rep->parsed()) return loom::report(files, max_p99_ms);
    return loom::Workers(o).run();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "loom_multinode_load: %s\n", e.what());
    return 2;
  }
}
