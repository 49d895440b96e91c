// Where a job's attempt runs: the hosts of the controller's hostfile, which of them answer, and the
// data-parallel size that fits them (parallel.elastic, core/config.proto).
//
// Elastic restarts keep the global batch: a job submitted with parallel.data = D and train.grad_accum_steps = A
// that restarts with d data ranks (min_data <= d <= D) trains with grad_accum_steps = D·A / d, so each step
// still averages the gradients of D·A·data.batch_size samples, the same ones (the data loaders hand the ranks
// interleaved windows of one permutation, and resume converts the position: trainer/trainer.h).
//
// Thread-safety: free functions without shared state.
#pragma once
#include <optional>
#include <string>
#include <vector>

#include "launch/controller.pb.h"

namespace loom {

// Reads a hostfile in Open MPI's format: one `HOST slots=N` line per host, `#` comments. The controller counts
// slots, so each line needs slots= (1 <= N <= 65536); a name is letters, digits, '.', '-' and '_' (it is
// passed to the host probe and names a log file), at most 255 characters, and appears once. Throws loom::Error
// naming the file and line.
std::vector<controller::HostSlots> read_hostfile(const std::string& path);

// Writes `hosts` as a hostfile (`HOST slots=N` lines) atomically.
void write_hostfile(const std::string& path, const std::vector<controller::HostSlots>& hosts);

// The layout of an attempt on `hosts` (those that answered, in hostfile order): the largest data size d with
// min_data <= d <= submitted.data() such that d x tensor ranks fit the hosts' slots and d divides
// submitted.data() x submitted.grad_accum_steps(); grad_accum_steps then keeps the global batch. Its hosts
// are the first ones whose slots hold the ranks. nullopt when no d fits.
std::optional<controller::JobLayout> fit_layout(const controller::JobLayout& submitted, int min_data,
                                                const std::vector<controller::HostSlots>& hosts);

// The overrides that turn the submitted layout into `layout` for `loom train` (none when they agree).
std::vector<std::string> layout_overrides(const controller::JobLayout& submitted, const controller::JobLayout& layout);

// "2 data x 1 tensor ranks, grad_accum_steps 2 on host1 (2 slots)" for the job's events.
std::string describe_layout(const controller::JobLayout& layout);

}  // namespace loom
