#include "launch/process_gang.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <functional>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/atomic_file.h"
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

bool pidfd_exited(int pidfd) {
  pollfd p{pidfd, POLLIN, 0};
  return poll(&p, 1, 0) != 0;  // readable (exited) or an error: either way no live process behind it
}

// SIGKILL to every live member of session `session` except `spare`, in rounds until none is left. A member is
// signalled through a pidfd opened before its session is read again, and only when `held()` says afterwards
// that the session id still belongs to the gang (so the number read was this session's, not a reused one's).
// Returns false when members were still alive after the last round, or the hold was lost.
bool kill_members(pid_t session, pid_t spare, const std::function<bool()>& held) {
  for (int round = 0; round < kKillRounds; ++round) {
    std::vector<pollfd> dying;
    for (pid_t member : session_members(session)) {
      if (member == spare) continue;
      const int fd = pidfd_open(member);
      if (fd < 0) continue;  // gone already
      const auto s = read_process_stat(member);
      if (!held()) {
        close(fd);
        for (const pollfd& p : dying) close(p.fd);
        return false;
      }
      if (s && s->session == session && s->state != 'Z' && pidfd_send_signal(fd, SIGKILL) == 0) {
        dying.push_back({fd, POLLIN, 0});
      } else {
        close(fd);
      }
    }
    if (dying.empty()) return true;
    wait_until_dead(dying, kDeathWaitMs);
    for (const pollfd& p : dying) close(p.fd);
  }
  return std::ranges::none_of(session_members(session), [&](pid_t p) { return p != spare; });
}

}  // namespace

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

std::string boot_id() {
  std::ifstream in("/proc/sys/kernel/random/boot_id");
  std::string id;
  std::getline(in, id);
  return id;
}

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
  // tty_nr .. itrealvalue (fields 7 to 21), then starttime (22).
  std::string skipped;
  for (int field = 7; field <= 21; ++field) rest >> skipped;
  if (!(rest >> s.start_time)) return std::nullopt;
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
  // The unreaped leader holds the number: the session read is always this one.
  return kill_members(leader, /*spare=*/0, [] { return true; });
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

std::string launcher_status_text(int wait_status) { return "wait_status " + std::to_string(wait_status) + "\n"; }

std::optional<int> parse_launcher_status(const std::string& text) {
  std::istringstream in(text);
  std::string word;
  int status = 0;
  if (!(in >> word >> status) || word != "wait_status") return std::nullopt;
  return status;
}

Gang::Gang(GangIdentity identity, int pidfd, bool child, std::string status_file)
    : identity_(std::move(identity)), pidfd_(pidfd), child_(child), status_file_(std::move(status_file)) {}

Gang::~Gang() {
  if (pidfd_ >= 0) close(pidfd_);
}

bool create_claim(const std::string& path, const std::string& text) {
  const std::string temporary = path + ".tmp." + std::to_string(getpid());
  const int fd = open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644);
  if (fd < 0) fail(temporary, ": cannot create: ", std::strerror(errno));
  const bool written = write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) && fsync(fd) == 0;
  const int saved = errno;
  close(fd);
  if (!written) {
    unlink(temporary.c_str());
    fail(temporary, ": cannot write: ", std::strerror(saved));
  }
  // link(2) never replaces an existing file: exactly one creator wins, and the file is whole when it appears.
  const bool created = link(temporary.c_str(), path.c_str()) == 0;
  const int link_error = errno;
  unlink(temporary.c_str());
  if (!created && link_error != EEXIST) fail(path, ": cannot create: ", std::strerror(link_error));
  if (created) fsync_directory(std::filesystem::path(path).parent_path().string());
  return created;
}

std::string keeper_claim_text(const GangIdentity& keeper) {
  return "keeper " + std::to_string(keeper.keeper) + " " + std::to_string(keeper.start_time) + " " + keeper.boot_id +
         "\n";
}

Claim read_claim(const std::string& path) {
  Claim claim;
  std::ifstream in(path);
  if (!in) return claim;
  std::stringstream buffer;
  buffer << in.rdbuf();
  const std::string text = buffer.str();
  if (text == kCancelledClaim) {
    claim.state = Claim::State::kCancelled;
    return claim;
  }
  std::istringstream words(text);
  std::string word;
  int64_t pid = 0;
  if (!(words >> word >> pid >> claim.keeper.start_time >> claim.keeper.boot_id) || word != "keeper" || pid <= 0 ||
      pid > kMaxLinuxPid)
    fail(path, ": not a claim (\"keeper PID START_TIME BOOT_ID\" or \"cancelled\")");
  claim.keeper.keeper = static_cast<pid_t>(pid);
  claim.state = Claim::State::kKeeper;
  return claim;
}

std::unique_ptr<Gang> Gang::start(const std::string& keeper_binary, const std::string& claim_file,
                                  const std::string& status_file, const std::vector<std::string>& argv,
                                  const std::vector<std::string>& env, const std::string& output_path) {
  std::vector<std::string> keeper_argv = {keeper_binary, claim_file, status_file};
  keeper_argv.insert(keeper_argv.end(), argv.begin(), argv.end());
  std::filesystem::remove(status_file);  // a status left by an earlier attempt would end this one at once
  const pid_t pid = spawn_session(keeper_argv, env, output_path);
  // Our child stays unreaped until kill(): its pid cannot be reused, so this pidfd and stat are the keeper's.
  const int fd = pidfd_open(pid);
  const auto stat = read_process_stat(pid);
  GangIdentity identity{pid, stat ? stat->start_time : 0, boot_id()};
  return std::unique_ptr<Gang>(new Gang(std::move(identity), fd, /*child=*/true, status_file));
}

std::unique_ptr<Gang> Gang::adopt(const GangIdentity& identity, const std::string& status_file) {
  if (identity.keeper <= 0 || identity.boot_id != boot_id()) return nullptr;
  const int fd = pidfd_open(identity.keeper);
  if (fd < 0) return nullptr;
  // Read with the pidfd open: if this is still the keeper, the pidfd is the keeper for good.
  const auto s = read_process_stat(identity.keeper);
  if (!s || s->start_time != identity.start_time || s->session != identity.keeper || s->state == 'Z' ||
      s->state == 'X') {
    close(fd);
    return nullptr;
  }
  return std::unique_ptr<Gang>(new Gang(identity, fd, /*child=*/false, status_file));
}

bool Gang::keeper_alive() const {
  if (child_) return !leader_has_exited(identity_.keeper);
  return pidfd_ >= 0 && !pidfd_exited(pidfd_);
}

bool Gang::launcher_done() const {
  if (killed_) return true;
  return std::filesystem::exists(status_file_) || !keeper_alive();
}

bool Gang::kill() {
  if (killed_) return true;
  const pid_t keeper = identity_.keeper;
  // A child keeper holds the session id until it is reaped below, dead or alive; an adopted one while alive.
  const bool child = child_;
  const bool done = kill_members(keeper, keeper, [&] { return child || keeper_alive(); });
  if (pidfd_ >= 0) {
    pidfd_send_signal(pidfd_, SIGKILL);
    std::vector<pollfd> keeper_fd = {{pidfd_, POLLIN, 0}};
    wait_until_dead(keeper_fd, kDeathWaitMs);
  } else if (child_) {
    ::kill(keeper, SIGKILL);  // no pidfd (an old kernel would have failed earlier); the zombie holds the pid
  }
  // A child keeper that dies last: members that forked while the keeper was being killed are swept once more.
  if (child_) {
    kill_members(keeper, 0, [] { return true; });
    waitpid(keeper, nullptr, 0);
  }
  killed_ = true;
  return done;
}

std::optional<int> read_launcher_status(const std::string& status_file) {
  std::ifstream in(status_file);
  if (!in) return std::nullopt;
  std::stringstream text;
  text << in.rdbuf();
  return parse_launcher_status(text.str());
}

std::optional<int> Gang::launcher_status() const { return read_launcher_status(status_file_); }

}  // namespace loom
