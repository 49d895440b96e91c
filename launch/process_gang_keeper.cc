// loom-gang-keeper: the leader of a job attempt's session (launch/process_gang.h says why it exists).
//
//   loom-gang-keeper CLAIM_FILE STATUS_FILE LAUNCHER [ARGS...]
//
// Started by the controller as the leader of a new session, it claims the attempt (creates CLAIM_FILE with its
// pid, start time and boot id; when a restarted controller has cancelled the attempt there first, it exits 3
// and starts nothing), starts LAUNCHER ARGS... (no PATH search, the
// same environment and file descriptors) as its child, waits for it, writes its wait status to STATUS_FILE
// atomically ("wait_status N", core/atomic_file.h), and then stays until no other process of its session is
// left, so that the session's number cannot be handed to another session while the controller may still sweep
// it. SIGHUP, SIGINT, SIGTERM and SIGQUIT are ignored (the launcher gets them at their defaults): only the
// controller's SIGKILL ends the keeper early, and it kills the keeper last. Exit status: 0 once the session is
// empty, 2 on bad arguments, 3 when the attempt was cancelled, 1 when the claim or the status cannot be written
// or the launcher cannot be started.
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <thread>
#include <vector>

#include "core/atomic_file.h"
#include "launch/process_gang.h"

extern char** environ;

namespace {

constexpr int kHeldSignals[] = {SIGHUP, SIGINT, SIGTERM, SIGQUIT};
constexpr auto kSessionPollPeriod = std::chrono::milliseconds(100);

pid_t start_launcher(char** argv) {
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t defaults, none;
  sigemptyset(&defaults);
  sigemptyset(&none);
  for (int s : kHeldSignals) sigaddset(&defaults, s);
  sigaddset(&defaults, SIGPIPE);
  posix_spawnattr_setsigdefault(&attr, &defaults);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);
  pid_t pid = -1;
  const int rc = posix_spawn(&pid, argv[0], nullptr, &attr, argv, environ);
  posix_spawnattr_destroy(&attr);
  if (rc != 0) {
    std::fprintf(stderr, "loom-gang-keeper: cannot start %s: %s\n", argv[0], std::strerror(rc));
    return -1;
  }
  return pid;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: loom-gang-keeper CLAIM_FILE STATUS_FILE LAUNCHER [ARGS...]\n");
    return 2;
  }
  for (int s : kHeldSignals) signal(s, SIG_IGN);
  const std::string claim_file = argv[1], status_file = argv[2];
  try {
    const auto self = loom::read_process_stat(getpid());
    const loom::GangIdentity identity{getpid(), self ? self->start_time : 0, loom::boot_id()};
    if (!loom::create_claim(claim_file, loom::keeper_claim_text(identity))) {
      std::fprintf(stderr, "loom-gang-keeper: %s exists: the attempt was cancelled; not starting it\n",
                   claim_file.c_str());
      return 3;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "loom-gang-keeper: %s\n", e.what());
    return 1;
  }
  const pid_t launcher = start_launcher(argv + 3);
  int status = 0;
  if (launcher > 0) {
    while (waitpid(launcher, &status, 0) < 0 && errno == EINTR) {
    }
  } else {
    status = 127 << 8;  // as a shell reports a command it could not run
  }
  int rc = launcher > 0 ? 0 : 1;
  try {
    loom::write_file_atomically(status_file, loom::launcher_status_text(status));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "loom-gang-keeper: %s\n", e.what());
    rc = 1;
  }
  const pid_t self = getpid();
  while (true) {
    bool others = false;
    for (pid_t member : loom::session_members(self)) others |= member != self;
    if (!others) return rc;
    std::this_thread::sleep_for(kSessionPollPeriod);
  }
}
