// The controller's journal: each job's controller::JobRecord (launch/controller.proto) as JSON in
// JOBS_DIR/<id>/job.json, replaced atomically (core/atomic_file.h) at every change, so that it is always a
// whole record, the old one or the new one. Tokens are never written: only their SHA-256 hashes.
// JobSupervisor (launch/job_supervisor.h) writes and reads it; what a restarted controller does with the
// records is described there.
//
// Thread-safety: free functions without shared state. Errors throw loom::Error naming the file.
#pragma once
#include <string>
#include <vector>

#include "launch/controller.pb.h"

namespace loom {

// Lower-case hex SHA-256 of `text` (OpenSSL).
std::string sha256_hex(const std::string& text);

// The journal file of job `job_id` in `jobs_dir`.
std::string job_record_path(const std::string& jobs_dir, const std::string& job_id);

// Writes `record` to `path` atomically.
void write_job_record(const std::string& path, const controller::JobRecord& record);

// Reads a record back. Throws naming the file when it is not a JobRecord in JSON, or when a field is out of
// range (a job id that is not the folder's name, a negative attempt or restart count, a token hash that is
// not 64 hex digits, an unknown state).
controller::JobRecord read_job_record(const std::string& path);

// The records of every job folder of `jobs_dir` that holds one (job-<n> folders in the order of n).
std::vector<controller::JobRecord> read_job_records(const std::string& jobs_dir);

}  // namespace loom
