// The controller's Prometheus exposition (GET /metrics; text format 0.0.4), following Prometheus' naming and
// labelling conventions:
// - job labels are `loom_job` (a `job` label would collide with the one the scraper attaches to every series);
// - a job's state is a gauge per state, 1 for the current one and 0 for the others (loom_job_state), so a
//   series never changes its labels; the number of jobs in each state is loom_jobs{state};
// - work done is counted by counters with the _total suffix, which rate() takes: loom_job_steps_total,
//   loom_job_tokens_total, loom_job_restarts_total;
// - a step's time is split into phases that add up to it (loom_rank_step_time_seconds{phase}: data, forward,
//   backward, grad_sync, optimizer, other), the whole step being its own gauge (loom_rank_step_seconds), not a
//   phase="total" beside its parts; communication overlaps the phases and has gauges of its own;
// - seconds and bytes in base units; loom_controller_up is 1 while the controller answers (the scraper's own
//   `up` says whether it could scrape at all).
// `promtool check metrics` accepts the text (tests/controller, tests/browser).
// Thread-safety: a pure function.
#pragma once
#include <string>

#include "launch/controller.pb.h"

namespace loom {

// The exposition text of every job in `jobs`.
std::string prometheus_text(const controller::ListJobsReply& jobs);

}  // namespace loom
