// The dashboard's server without a browser: the Prometheus exposition's conventions (launch/prometheus_text.h),
// checked by promtool too, and the run-folder dashboard's JSON, which follows a metrics.jsonl as a run writes
// and rewinds it (launch/run_series.h). The page itself: tests/browser/dashboard_test.mjs.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <httplib.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <regex>

#include "core/atomic_file.h"
#include "launch/dashboard_server.h"
#include "tests/common/test_util.h"

namespace loom {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

controller::ListJobsReply two_jobs() {
  controller::ListJobsReply jobs;
  controller::JobStatusReply& a = *jobs.add_jobs();
  a.set_job_id("job-1");
  a.set_name("gpt \"tiny\"");
  a.set_state(controller::RUNNING);
  a.set_world_size(2);
  a.set_step(40);
  a.set_steps_total(45);
  a.set_tokens_total(45 * 4096.0);
  a.set_last_val_loss(3.25);
  controller::MetricsReport& m = *a.mutable_last_metrics();
  m.set_step(40);
  m.set_loss(3.5);
  m.set_lr(3e-4);
  m.set_grad_norm(0.75);
  m.set_tokens_per_s(8192);
  m.set_mfu(0.125);
  m.mutable_step_times()->set_communication_ms(4);
  m.mutable_step_times()->set_exposed_communication_ms(1);
  for (int r = 0; r < 2; ++r) {
    controller::RankStatus& rank = *a.add_ranks();
    rank.set_rank(r);
    controller::StepTimes& t = *rank.mutable_step_times();
    t.set_data_ms(1);
    t.set_forward_ms(10);
    t.set_backward_ms(20);
    t.set_grad_sync_ms(3);
    t.set_optimizer_ms(5);
    t.set_total_ms(50);
  }
  controller::JobStatusReply& b = *jobs.add_jobs();
  b.set_job_id("job-2");
  b.set_state(controller::FINISHED);
  b.set_restarts(1);
  return jobs;
}

std::string promtool(const std::string& text) {
  testing::TempDir dir;
  write_file_atomically(dir / "metrics.txt", text);
  FILE* pipe = popen(("promtool check metrics < " + dir / "metrics.txt" + " 2>&1").c_str(), "r");
  if (!pipe) return "cannot run promtool";
  std::string output;
  char buf[512];
  while (fgets(buf, sizeof buf, pipe)) output += buf;
  const int status = pclose(pipe);
  return status == 0 ? output : "exit " + std::to_string(status) + ": " + output;
}

// Issue 15: `job` collided with the scraper's label, the state was an info label that changed, there were no
// counters for rate(), and phase="total" stood beside its parts.
TEST(PrometheusText, FollowsTheConventions) {
  const std::string text = prometheus_text(two_jobs());
  EXPECT_EQ(promtool(text), "") << "promtool (Debian's prometheus package, scripts/setup.sh)";
  EXPECT_THAT(text, Not(HasSubstr("{job=")));
  EXPECT_THAT(text, Not(HasSubstr(",job=")));
  EXPECT_THAT(text, HasSubstr("loom_job_info{loom_job=\"job-1\",name=\"gpt \\\"tiny\\\"\"} 1\n"));
  // One series per state, 1 for the current one; and the jobs by state.
  EXPECT_THAT(text, HasSubstr("loom_job_state{loom_job=\"job-1\",state=\"running\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("loom_job_state{loom_job=\"job-1\",state=\"finished\"} 0\n"));
  EXPECT_THAT(text, HasSubstr("loom_job_state{loom_job=\"job-2\",state=\"finished\"} 1\n"));
  const std::regex state_line(R"(loom_job_state\{loom_job="job-1",state="[a-z]+"\} )");
  EXPECT_EQ(std::distance(std::sregex_iterator(text.begin(), text.end(), state_line), std::sregex_iterator()), 6);
  EXPECT_THAT(text, HasSubstr("loom_jobs{state=\"running\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("loom_jobs{state=\"finished\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("loom_jobs{state=\"failed\"} 0\n"));
  EXPECT_THAT(text, HasSubstr("loom_controller_up 1\n"));
  // Counters.
  EXPECT_THAT(text, HasSubstr("# TYPE loom_job_steps_total counter\nloom_job_steps_total{loom_job=\"job-1\"} 45\n"));
  EXPECT_THAT(text,
              HasSubstr("# TYPE loom_job_tokens_total counter\nloom_job_tokens_total{loom_job=\"job-1\"} 184320\n"));
  EXPECT_THAT(text, HasSubstr("loom_job_restarts_total{loom_job=\"job-2\"} 1\n"));
  // The training figures.
  EXPECT_THAT(text, HasSubstr("loom_job_val_loss{loom_job=\"job-1\"} 3.25\n"));
  EXPECT_THAT(text, Not(HasSubstr("loom_job_val_loss{loom_job=\"job-2\"}")));  // never validated
  EXPECT_THAT(text, HasSubstr("loom_job_learning_rate{loom_job=\"job-1\"} 0.00029999999999999997\n"));
  EXPECT_THAT(text, HasSubstr("loom_job_grad_norm{loom_job=\"job-1\"} 0.75\n"));
  EXPECT_THAT(text, HasSubstr("loom_job_communication_seconds{loom_job=\"job-1\"} 0.0040000000000000001\n"));
  EXPECT_THAT(text, HasSubstr("loom_job_exposed_communication_seconds{loom_job=\"job-1\"} 0.001\n"));
  // Phases that add up to the step, which has its own gauge.
  EXPECT_THAT(text, Not(HasSubstr("phase=\"total\"")));
  double sum = 0;
  const std::regex phase(R"(loom_rank_step_time_seconds\{loom_job="job-1",rank="1",phase="[a-z_]+"\} ([0-9.e-]+))");
  for (auto it = std::sregex_iterator(text.begin(), text.end(), phase); it != std::sregex_iterator(); ++it)
    sum += std::stod((*it)[1]);
  EXPECT_NEAR(sum, 0.050, 1e-12);
  EXPECT_THAT(text, HasSubstr("loom_rank_step_time_seconds{loom_job=\"job-1\",rank=\"1\",phase=\"other\"} 0.0109999"));
  EXPECT_THAT(text, HasSubstr("loom_rank_step_seconds{loom_job=\"job-1\",rank=\"1\"} 0.050000000000000003\n"));
}

// `loom dashboard`'s server: run folders, followed while their runs write (and rewind) metrics.jsonl.
TEST(FolderDashboard, FollowsEachRunFoldersMetrics) {
  testing::TempDir dir;
  std::filesystem::create_directories(dir / "a");
  std::filesystem::create_directories(dir / "b");
  write_file_atomically(dir / "a/config.yaml",
                        "model: {kind: vit}\ndata: {train: x, batch_size: 1}\ntrain: {max_steps: 9}\n");
  const auto record = [](int step, double loss) {
    return nlohmann::json({{"step", step}, {"loss", loss}, {"time", 1000.0 + step}, {"mfu", 0.25},
                           {"time_ms", {{"forward", 2.0}}}}).dump() + "\n";
  };
  write_file_atomically(dir / "a/metrics.jsonl", record(1, 4.0) + record(2, 3.5));
  DashboardOptions options;
  options.static_dir = std::string(LOOM_SOURCE_DIR) + "/launch/dashboard";
  options.vendor_dir = std::string(LOOM_BINARY_DIR) + "/npm/node_modules/uplot/dist";
  DashboardServer server(std::vector<std::string>{dir / "a", dir / "b"}, options);
  httplib::Client http("127.0.0.1", server.port());
  const auto get = [&](const std::string& path) {
    const auto r = http.Get(path);
    EXPECT_TRUE(r && r->status == 200) << path;
    return r ? nlohmann::json::parse(r->body) : nlohmann::json();
  };
  const nlohmann::json runs = get("/api/runs");
  EXPECT_EQ(runs["mode"], "folders");
  ASSERT_EQ(runs["runs"].size(), 2u);
  EXPECT_EQ(runs["runs"][0]["id"], "run1");
  EXPECT_EQ(runs["runs"][0]["name"], "a");
  EXPECT_EQ(runs["runs"][0]["kind"], "vit");
  EXPECT_TRUE(runs["runs"][1]["kind"].is_null());  // no config.yaml yet

  nlohmann::json a = get("/api/runs/run1");
  EXPECT_EQ(a["series"]["step"], nlohmann::json::array({1, 2}));
  EXPECT_EQ(a["series"]["loss"], nlohmann::json::array({4.0, 3.5}));
  EXPECT_EQ(a["series"]["forward_ms"], nlohmann::json::array({2.0, 2.0}));
  EXPECT_TRUE(a["series"]["lr"][0].is_null());  // a field the records lack: a gap
  // The run goes on (a torn last line waits for its end), then resumes from step 1: the file is rewritten.
  {
    std::ofstream out(dir / "a/metrics.jsonl", std::ios::app);
    out << record(3, 3.0) << "{\"step\": 4, \"lo";
  }
  a = get("/api/runs/run1");
  EXPECT_EQ(a["series"]["step"], nlohmann::json::array({1, 2, 3}));
  write_file_atomically(dir / "a/metrics.jsonl",
                        record(1, 4.0) + "{\"step\": 1, \"event\": \"resumed\", \"time\": 1100.0}\n" + record(2, 3.25));
  a = get("/api/runs/run1");
  EXPECT_EQ(a["series"]["step"], nlohmann::json::array({1, 2}));
  EXPECT_EQ(a["series"]["loss"][1], 3.25);
  ASSERT_EQ(a["events"].size(), 1u);
  EXPECT_EQ(a["events"][0]["event"], "resumed");

  EXPECT_EQ(get("/api/runs/run2")["series"]["step"], nlohmann::json::array());  // nothing written yet
  const auto missing = http.Get("/api/runs/run3");
  ASSERT_TRUE(missing);
  EXPECT_EQ(missing->status, 404);
  const auto metrics = http.Get("/metrics");  // the Prometheus endpoint is the controller's
  ASSERT_TRUE(metrics);
  EXPECT_EQ(metrics->status, 404);
}

}  // namespace
}  // namespace loom
