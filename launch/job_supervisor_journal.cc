// The journal's file format, and JobSupervisor's side of it: records of its jobs, and taking jobs up again
// after a restart (launch/job_supervisor.h).
#include "launch/job_supervisor_journal.h"

#include <google/protobuf/util/json_util.h>
#include <openssl/evp.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>

#include "core/atomic_file.h"
#include "core/error.h"
#include "launch/controller_service.h"
#include "launch/job_supervisor.h"

namespace loom {

namespace {

constexpr char kRecordName[] = "job.json";

}  // namespace

std::string sha256_hex(const std::string& text) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  LOOM_CHECK(EVP_Digest(text.data(), text.size(), digest, &length, EVP_sha256(), nullptr) == 1,
             "SHA-256 failed (OpenSSL)");
  static constexpr char kHex[] = "0123456789abcdef";
  std::string hex;
  for (unsigned int i = 0; i < length; ++i) {
    hex += kHex[digest[i] >> 4];
    hex += kHex[digest[i] & 15];
  }
  return hex;
}

std::string job_record_path(const std::string& jobs_dir, const std::string& job_id) {
  return jobs_dir + "/" + job_id + "/" + kRecordName;
}

void write_job_record(const std::string& path, const controller::JobRecord& record) {
  std::string json;
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  const auto status = google::protobuf::util::MessageToJsonString(record, &json, options);
  if (!status.ok()) fail(path, ": cannot encode the job record: ", status.ToString());
  write_file_atomically(path, json);
}

controller::JobRecord read_job_record(const std::string& path) {
  controller::JobRecord record;
  const auto status = google::protobuf::util::JsonStringToMessage(read_file_text(path), &record);
  if (!status.ok()) fail(path, ": not a job record: ", status.ToString());
  const std::string folder = std::filesystem::path(path).parent_path().filename().string();
  if (record.job_id() != folder)
    fail(path, ": job_id \"", record.job_id().substr(0, 64), "\" is not the folder's name ", folder);
  if (record.attempt() < 0 || record.restarts() < 0 || record.max_restarts() < 0 ||
      record.max_restarts() > kMaxRestarts)
    fail(path, ": attempt ", record.attempt(), ", restarts ", record.restarts(), " or max_restarts ",
         record.max_restarts(), " out of range");
  if (!controller::JobState_IsValid(record.state()) || !record.has_state()) fail(path, ": no valid state");
  static const std::regex hash_pattern("[0-9a-f]{64}");
  if (record.token_sha256_size() == 0) fail(path, ": no token hash");
  for (const std::string& h : record.token_sha256())
    if (!std::regex_match(h, hash_pattern)) fail(path, ": token_sha256 \"", h.substr(0, 64), "\" is not a SHA-256");
  for (const auto* layout : {&record.submitted(), &record.layout()})
    if (layout->data() < 1 || layout->tensor() < 1 || layout->grad_accum_steps() < 1 ||
        int64_t{layout->data()} * layout->tensor() > kMaxWorldSize)
      fail(path, ": a layout (data ", layout->data(), ", tensor ", layout->tensor(), ", grad_accum_steps ",
           layout->grad_accum_steps(), ") out of range");
  if (record.min_data() < 1 || record.min_data() > record.submitted().data())
    fail(path, ": min_data ", record.min_data(), " outside [1, ", record.submitted().data(), "]");
  return record;
}

std::vector<controller::JobRecord> read_job_records(const std::string& jobs_dir) {
  static const std::regex folder_pattern("job-([0-9]{1,9})");
  std::vector<std::pair<int, std::string>> folders;
  for (const auto& entry : std::filesystem::directory_iterator(jobs_dir)) {
    const std::string name = entry.path().filename().string();
    std::smatch m;
    if (entry.is_directory() && std::regex_match(name, m, folder_pattern) &&
        std::filesystem::exists(entry.path() / kRecordName))
      folders.emplace_back(std::stoi(m[1]), name);
  }
  std::sort(folders.begin(), folders.end());
  std::vector<controller::JobRecord> records;
  for (const auto& [number, name] : folders) records.push_back(read_job_record(job_record_path(jobs_dir, name)));
  return records;
}

controller::JobRecord JobSupervisor::record_of(const Job& job) const {
  controller::JobRecord r;
  r.set_job_id(job.id);
  r.set_name(job.name);
  r.set_state(job.state);
  r.set_attempt(job.attempt);
  r.set_restarts(job.restarts);
  r.set_max_restarts(job.max_restarts);
  r.set_config_path(job.config_path);
  for (const std::string& a : job.args) r.add_args(a);
  r.set_device_flag(job.device_flag);
  r.set_out_dir(job.out_dir);
  r.set_resolved_out_dir(job.resolved_out_dir);
  r.set_log_path(job.log_path);
  *r.mutable_control() = job.control;
  for (const auto& e : job.events) *r.add_events() = e;
  for (const std::string& h : job.token_hashes) r.add_token_sha256(h);
  *r.mutable_submitted() = job.submitted;
  r.set_min_data(job.min_data);
  *r.mutable_layout() = job.layout;
  if (!job.claim_file.empty()) {
    controller::GangRecord& g = *r.mutable_gang();
    g.set_claim_file(job.claim_file);
    g.set_status_file(job.status_file);
    if (job.gang) {
      g.set_keeper_pid(job.gang->identity().keeper);
      g.set_start_time(job.gang->identity().start_time);
      g.set_boot_id(job.gang->identity().boot_id);
    }
  }
  r.set_last_checkpoint(job.last_checkpoint);
  return r;
}

void JobSupervisor::journal(const Job& job) const {
  try {
    write_job_record(job_record_path(options_.jobs_dir, job.id), record_of(job));
  } catch (const Error& e) {
    *options_.log << "controller: " << job.id << ": error: the journal was not updated: " << e.what() << std::endl;
  }
}

void JobSupervisor::recover() {
  for (const controller::JobRecord& record : read_job_records(options_.jobs_dir)) recover_job(record);
}

namespace {

// Rank 0's metrics from the run's metrics.jsonl, so the history a restarted controller shows is not lost with
// the reports of its predecessor. Lines that are no step record, or whose fields are out of range, are left out.
std::vector<controller::MetricsReport> metrics_from_run(const std::string& out_dir, const std::string& job_id,
                                                        int attempt, size_t limit) {
  std::vector<controller::MetricsReport> out;
  std::ifstream in(out_dir + "/metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    const nlohmann::json rec = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (!rec.is_object() || !rec.contains("step") || !rec["step"].is_number_integer() || !rec.contains("loss"))
      continue;
    controller::MetricsReport m;
    m.set_job_id(job_id);
    m.set_attempt(attempt);
    m.set_rank(0);
    m.set_step(rec["step"].get<int64_t>());
    const auto number = [&](const char* key) { return rec[key].is_number() ? rec[key].get<double>() : 0.0; };
    m.set_loss(number("loss"));
    m.set_tokens_per_s(number("tokens_per_s"));
    m.set_mfu(number("mfu"));
    m.set_lr(number("lr"));
    m.set_grad_norm(number("grad_norm"));
    m.mutable_step_times()->set_total_ms(number("ms_per_step"));
    if (rec.contains("val_loss") && rec["val_loss"].is_number()) m.set_val_loss(number("val_loss"));
    try {
      check_metrics_report(m);
    } catch (const JobError&) {
      continue;
    }
    while (!out.empty() && out.back().step() >= m.step()) out.pop_back();  // a resumed run trains steps again
    if (out.size() >= limit) out.erase(out.begin());
    out.push_back(m);
  }
  return out;
}

}  // namespace

void JobSupervisor::recover_job(const controller::JobRecord& r) {
  auto owned = std::make_unique<Job>();
  Job& job = *owned;
  job.id = r.job_id();
  job.name = r.name();
  job.state = r.state();
  job.attempt = r.attempt();
  job.restarts = r.restarts();
  job.max_restarts = r.max_restarts();
  job.config_path = r.config_path();
  job.args.assign(r.args().begin(), r.args().end());
  job.device_flag = r.device_flag();
  job.out_dir = r.out_dir();
  job.resolved_out_dir = r.resolved_out_dir();
  job.log_path = r.log_path();
  job.control = r.control();
  job.events.assign(r.events().begin(), r.events().end());
  job.token_hashes.assign(r.token_sha256().begin(), r.token_sha256().end());
  job.submitted = r.submitted();
  job.min_data = r.min_data();
  job.layout = r.layout();
  job.world_size = r.layout().data() * r.layout().tensor();
  job.status_file = r.gang().status_file();
  job.last_checkpoint = r.last_checkpoint();
  job.metrics = metrics_from_run(job.resolved_out_dir, job.id, job.attempt, options_.max_metrics_per_job);
  // The exposition's counters start again from what the run folder holds (a counter reset to Prometheus).
  for (const controller::MetricsReport& m : job.metrics) {
    ++job.steps_total;
    job.tokens_total += m.tokens_per_s() * m.step_times().total_ms() / 1e3;
    if (m.has_val_loss()) job.last_val_loss = m.val_loss();
  }
  const std::string number = job.id.substr(job.id.find('-') + 1);
  next_job_number_ = std::max(next_job_number_, std::stoi(number) + 1);
  jobs_.emplace(job.id, std::move(owned));
  if (job_is_over(job.state)) return;

  const std::string attempt = "attempt " + std::to_string(job.attempt);
  job.claim_file = r.gang().claim_file();
  if (job.claim_file.empty()) {  // no attempt was being started: the job was placing one (probing hosts)
    set_state(job, job.state,
              "controller restarted: placing " +
                  (job.attempt ? "the attempt after " + attempt : std::string("the first attempt")) + " again");
    begin_attempt(job);
    return;
  }
  Claim claim = read_claim(job.claim_file);
  if (claim.state == Claim::State::kNone) {
    // The controller died while starting the attempt, before its keeper claimed it: it never starts now.
    if (create_claim(job.claim_file, kCancelledClaim))
      claim.state = Claim::State::kCancelled;
    else
      claim = read_claim(job.claim_file);  // the keeper claimed it meanwhile
  }
  if (claim.state == Claim::State::kCancelled) {
    set_state(job, job.state == controller::RUNNING ? controller::RESTARTING : job.state,
              "controller restarted: " + attempt + " never started (its keeper had not claimed it); placing it again");
    begin_attempt(job);
    return;
  }
  job.gang = Gang::adopt(claim.keeper, job.status_file);
  if (job.gang && job.gang->launcher_done()) {  // the keeper still holds stragglers of an ended attempt
    end_attempt(job, job.gang->launcher_status(), " (while no controller was running)");
    return;
  }
  if (job.gang) {
    job.started = job.progress_time = Clock::now();  // its ranks register anew within register_timeout_ms
    set_state(job, controller::RUNNING,
              "controller restarted: took up " + attempt + " again (keeper pid " + std::to_string(claim.keeper.keeper) +
                  " still runs); waiting for its ranks to register again");
    return;
  }
  // The keeper is gone, so is its session: the attempt ended while no controller watched it.
  end_attempt(job, read_launcher_status(job.status_file), " (while no controller was running)");
}

}  // namespace loom
