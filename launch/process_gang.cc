#include "launch/process_gang.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"

namespace loom {

namespace {

constexpr int kKillRounds = 10;
constexpr int kDeathWaitMs = 1000;  // per round: SIGKILLed processes normally die within milliseconds

// glibc 2.36 declares pidfd_open/pidfd_send_signal without C linkage for C++; the system calls are stable.
int pidfd_open(pid_t pid) { return static_cast<int>(syscall(SYS_pidfd_open, pid, 0)); }
int pidfd_send_signal(int pidfd, int signal) {
  return static_cast<int>(syscall(SYS_pidfd_send_signal, pidfd, signal, nullptr, 0));
}

// The live (not zombie) processes whose session is `session`.
std::vector<pid_t> session_members(pid_t session) {
  std::vector<pid_t> members;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator("/proc", ec)) {
    const std::string name = entry.path().filename().string();
    if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos || name.size() > 9) continue;
    const auto s = read_process_stat(static_cast<pid_t>(std::stol(name)));
    if (s && s->session == session && s->state != 'Z' && s->state != 'X') members.push_back(s->pid);
  }
  return members;
}

// Waits up to `timeout_ms` until every pidfd in `fds` is readable (a pidfd turns readable once its process
// has exited).
void wait_until_dead(std::vector<pollfd>& fds, int timeout_ms) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  std::vector<pollfd> waiting = fds;
  while (!waiting.empty()) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count();
    if (left <= 0 || poll(waiting.data(), waiting.size(), static_cast<int>(left)) < 0) return;
    std::erase_if(waiting, [](const pollfd& p) { return p.revents != 0; });
    for (pollfd& p : waiting) p.revents = 0;
  }
}

}  // namespace

std::optional<ProcessStat> read_process_stat(pid_t pid) {
  if (pid <= 0) return std::nullopt;
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(in, line)) return std::nullopt;
  // "pid (comm) state ppid pgrp session ...": comm may hold spaces and parentheses, so cut at the last ')'.
  const size_t close = line.rfind(')');
  if (close == std::string::npos) return std::nullopt;
  std::istringstream rest(line.substr(close + 1));
  ProcessStat s;
  s.pid = pid;
  if (!(rest >> s.state >> s.parent >> s.group >> s.session)) return std::nullopt;
  return s;
}

pid_t spawn_session(const std::vector<std::string>& argv, const std::vector<std::string>& env,
                    const std::string& output_path) {
  LOOM_CHECK(!argv.empty(), "spawn_session: empty argv");
  std::vector<std::string> args = argv, vars = env;  // posix_spawn takes non-const char*
  std::vector<char*> argp, envp;
  for (auto& a : args) argp.push_back(a.data());
  argp.push_back(nullptr);
  for (auto& e : vars) envp.push_back(e.data());
  envp.push_back(nullptr);

  posix_spawn_file_actions_t files;
  posix_spawn_file_actions_init(&files);
  posix_spawn_file_actions_addopen(&files, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&files, 1, output_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&files, 1, 2);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t no_signals, default_signals;
  sigemptyset(&no_signals);
  sigemptyset(&default_signals);
  sigaddset(&default_signals, SIGPIPE);
  posix_spawnattr_setsigmask(&attr, &no_signals);
  posix_spawnattr_setsigdefault(&attr, &default_signals);
  // SETSID also makes the child the leader of a new process group (SETPGROUP on top of it would fail).
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  pid_t pid = -1;
  const int rc = posix_spawn(&pid, argp[0], &files, &attr, argp.data(), envp.data());
  posix_spawn_file_actions_destroy(&files);
  posix_spawnattr_destroy(&attr);
  if (rc != 0) fail("cannot start ", argv[0], ": ", std::strerror(rc));
  return pid;
}

bool leader_has_exited(pid_t child) {
  siginfo_t info;
  std::memset(&info, 0, sizeof info);
  return waitid(P_PID, static_cast<id_t>(child), &info, WEXITED | WNOHANG | WNOWAIT) == 0 && info.si_pid == child;
}

bool kill_session(pid_t leader) {
  if (leader <= 0) return true;
  kill(-leader, SIGKILL);  // the process group posix_spawn created (numbered like the session)
  for (int round = 0; round < kKillRounds; ++round) {
    std::vector<pollfd> dying;
    for (pid_t member : session_members(leader)) {
      const int fd = pidfd_open(member);
      if (fd < 0) continue;  // gone already
      // Read again with the pidfd open: if `member` still is in the session, the pidfd is that process.
      const auto s = read_process_stat(member);
      if (s && s->session == leader && s->state != 'Z' && pidfd_send_signal(fd, SIGKILL) == 0) {
        dying.push_back({fd, POLLIN, 0});
      } else {
        close(fd);
      }
    }
    if (dying.empty()) return true;
    wait_until_dead(dying, kDeathWaitMs);
    for (const pollfd& p : dying) close(p.fd);
  }
  return session_members(leader).empty();
}

bool descends_from(pid_t pid, pid_t ancestor) {
  if (pid <= 0 || ancestor <= 0 || pid == ancestor) return false;
  pid_t p = pid;
  for (int depth = 0; depth < 4096; ++depth) {  // parent chains are short; the bound guards against a loop
    const auto s = read_process_stat(p);
    if (!s) return false;
    if (s->parent == ancestor) return true;
    if (s->parent <= 1) return false;
    p = s->parent;
  }
  return false;
}

}  // namespace loom
