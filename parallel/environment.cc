#include "parallel/environment.h"

#include <charconv>
#include <cstdlib>
#include <string_view>

#include "core/error.h"

namespace loom {
namespace {

using Lookup = std::function<const char*(const char*)>;

// A whole-string decimal integer, or loom::Error naming the variable.
int parse_int(std::string_view text, const char* name, std::string_view whole_value) {
  int value = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size() || text.empty())
    fail("environment variable ", name, "=\"", whole_value, "\" is not an integer");
  return value;
}

int required_int(const Lookup& lookup, const char* name, const char* launcher) {
  const char* value = lookup(name);
  if (!value) fail("environment variable ", name, " is unset, though ", launcher, " variables are present");
  return parse_int(value, name, value);
}

// Tasks on node `node_id` from Slurm's compressed list, e.g. "2(x3),1": 2 tasks on each of nodes 0..2, 1 on 3.
int slurm_tasks_on_node(const char* list, int node_id) {
  const std::string_view all(list);
  int first_node = 0;
  size_t start = 0;
  while (start <= all.size()) {
    const size_t comma = std::min(all.find(',', start), all.size());
    const std::string_view entry = all.substr(start, comma - start);
    const size_t paren = entry.find("(x");
    int repeat = 1;
    if (paren != std::string_view::npos) {
      if (entry.back() != ')') fail("environment variable SLURM_TASKS_PER_NODE=\"", all, "\" is malformed");
      repeat = parse_int(entry.substr(paren + 2, entry.size() - paren - 3), "SLURM_TASKS_PER_NODE", all);
    }
    const int tasks = parse_int(entry.substr(0, paren), "SLURM_TASKS_PER_NODE", all);
    if (node_id < first_node + repeat) return tasks;
    first_node += repeat;
    start = comma + 1;
  }
  fail("environment variable SLURM_TASKS_PER_NODE=\"", all, "\" lists no node ", node_id, " (SLURM_NODEID)");
}

int slurm_local_size(const Lookup& lookup) {
  const char* per_node = lookup("SLURM_NTASKS_PER_NODE");
  if (per_node) return parse_int(per_node, "SLURM_NTASKS_PER_NODE", per_node);
  const char* list = lookup("SLURM_TASKS_PER_NODE");
  if (!list) fail("environment variables SLURM_NTASKS_PER_NODE and SLURM_TASKS_PER_NODE are both unset");
  return slurm_tasks_on_node(list, required_int(lookup, "SLURM_NODEID", "Slurm"));
}

void check_consistent(const ProcessEnvironment& e, const char* rank_var, const char* size_var,
                      const char* local_rank_var, const char* local_size_var) {
  auto describe = [](const char* name, int value) { return std::string(name) + "=" + std::to_string(value); };
  if (e.world_size < 1 || e.rank < 0 || e.rank >= e.world_size)
    fail("inconsistent ", e.launcher, " environment: ", describe(rank_var, e.rank), ", ",
         describe(size_var, e.world_size));
  if (e.local_size < 1 || e.local_size > e.world_size || e.local_rank < 0 || e.local_rank >= e.local_size)
    fail("inconsistent ", e.launcher, " environment: ", describe(local_rank_var, e.local_rank), ", ",
         describe(local_size_var, e.local_size), ", ", describe(size_var, e.world_size));
}

}  // namespace

ProcessEnvironment detect_process_environment(const Lookup& lookup) {
  ProcessEnvironment e;
  if (lookup("OMPI_COMM_WORLD_RANK")) {
    e.launcher = "openmpi";
    e.rank = required_int(lookup, "OMPI_COMM_WORLD_RANK", "Open MPI");
    e.world_size = required_int(lookup, "OMPI_COMM_WORLD_SIZE", "Open MPI");
    e.local_rank = required_int(lookup, "OMPI_COMM_WORLD_LOCAL_RANK", "Open MPI");
    e.local_size = required_int(lookup, "OMPI_COMM_WORLD_LOCAL_SIZE", "Open MPI");
    check_consistent(e, "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
                     "OMPI_COMM_WORLD_LOCAL_SIZE");
  } else if (lookup("SLURM_PROCID")) {
    e.launcher = "slurm";
    e.rank = required_int(lookup, "SLURM_PROCID", "Slurm");
    e.world_size = required_int(lookup, "SLURM_NTASKS", "Slurm");
    e.local_rank = required_int(lookup, "SLURM_LOCALID", "Slurm");
    e.local_size = slurm_local_size(lookup);
    check_consistent(e, "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "tasks on this node");
  }
  return e;
}

ProcessEnvironment detect_process_environment() {
  return detect_process_environment([](const char* name) -> const char* { return std::getenv(name); });
}

}  // namespace loom
