#include "launch/job_supervisor_layout.h"

#include <fstream>
#include <regex>
#include <set>
#include <sstream>

#include "core/atomic_file.h"
#include "core/error.h"

namespace loom {

namespace {

constexpr int kMaxSlots = 65536;
constexpr size_t kMaxHostName = 255;

int total_slots(const std::vector<controller::HostSlots>& hosts) {
  int64_t total = 0;
  for (const auto& h : hosts) total += h.slots();
  return static_cast<int>(std::min<int64_t>(total, 1 << 30));
}

}  // namespace

std::vector<controller::HostSlots> read_hostfile(const std::string& path) {
  std::ifstream in(path);
  if (!in) fail(path, ": cannot read the hostfile");
  static const std::regex name_pattern("[A-Za-z0-9._-]+");
  static const std::regex slots_pattern("slots=([0-9]{1,9})");
  std::vector<controller::HostSlots> hosts;
  std::set<std::string> seen;
  int line_number = 0;
  for (std::string line; std::getline(in, line);) {
    ++line_number;
    line = line.substr(0, line.find('#'));
    std::istringstream words(line);
    std::string name, word;
    if (!(words >> name)) continue;
    const std::string where = path + ":" + std::to_string(line_number) + ": ";
    if (name.size() > kMaxHostName || !std::regex_match(name, name_pattern))
      fail(where, "host name \"", name.substr(0, 64), "\" must be letters, digits, '.', '-' or '_' (at most 255)");
    if (!seen.insert(name).second) fail(where, "host ", name, " is listed twice");
    int slots = 0;
    while (words >> word) {
      std::smatch m;
      if (std::regex_match(word, m, slots_pattern)) {
        slots = std::stoi(m[1]);
        if (slots < 1 || slots > kMaxSlots) fail(where, "slots=", slots, " is outside [1, ", kMaxSlots, "]");
      } else if (word.rfind("max_slots=", 0) != 0 && word.rfind("max-slots=", 0) != 0) {
        fail(where, "\"", word.substr(0, 64), "\" is not slots=N (Open MPI's hostfile format: HOST slots=N)");
      }
    }
    if (slots == 0) fail(where, "host ", name, " has no slots=N (the controller counts the ranks each host takes)");
    controller::HostSlots& h = hosts.emplace_back();
    h.set_name(name);
    h.set_slots(slots);
  }
  if (hosts.empty()) fail(path, ": the hostfile lists no hosts");
  return hosts;
}

void write_hostfile(const std::string& path, const std::vector<controller::HostSlots>& hosts) {
  std::string text;
  for (const auto& h : hosts) text += h.name() + " slots=" + std::to_string(h.slots()) + "\n";
  write_file_atomically(path, text);
}

std::optional<controller::JobLayout> fit_layout(const controller::JobLayout& submitted, int min_data,
                                                const std::vector<controller::HostSlots>& hosts) {
  const int64_t global_micro_batches = int64_t{submitted.data()} * submitted.grad_accum_steps();
  const int slots = total_slots(hosts);
  for (int data = submitted.data(); data >= std::max(1, min_data); --data) {
    if (int64_t{data} * submitted.tensor() > slots || global_micro_batches % data != 0) continue;
    controller::JobLayout layout;
    layout.set_data(data);
    layout.set_tensor(submitted.tensor());
    layout.set_grad_accum_steps(static_cast<int>(global_micro_batches / data));
    int64_t placed = 0;
    for (const auto& h : hosts) {
      if (placed >= int64_t{data} * submitted.tensor()) break;
      *layout.add_hosts() = h;
      placed += h.slots();
    }
    return layout;
  }
  return std::nullopt;
}

std::vector<std::string> layout_overrides(const controller::JobLayout& submitted, const controller::JobLayout& layout) {
  std::vector<std::string> args;
  if (layout.data() != submitted.data()) args.push_back("parallel.data=" + std::to_string(layout.data()));
  if (layout.grad_accum_steps() != submitted.grad_accum_steps())
    args.push_back("train.grad_accum_steps=" + std::to_string(layout.grad_accum_steps()));
  return args;
}

std::string describe_layout(const controller::JobLayout& layout) {
  std::string text = std::to_string(layout.data()) + " data x " + std::to_string(layout.tensor()) +
                     " tensor ranks, grad_accum_steps " + std::to_string(layout.grad_accum_steps());
  for (int i = 0; i < layout.hosts_size(); ++i)
    text += (i ? ", " : " on ") + layout.hosts(i).name() + " (" + std::to_string(layout.hosts(i).slots()) + " slots)";
  return text;
}

}  // namespace loom
