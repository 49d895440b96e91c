// The processes of one job attempt (its "gang"): a session that the controller creates, and nothing else.
//
// spawn_session() starts the launcher with posix_spawn(POSIX_SPAWN_SETSID): it leads a new session and a new
// process group, both numbered with its pid. Every process it starts stays in that session unless it calls
// setsid() itself (Open MPI's mpirun puts each rank in a process group of its own, but not in a session of
// its own), so the session is the gang. The controller finds the gang's members itself, in /proc; it never
// signals a pid that came from a request.
//
// The session id stays unique while the leader is unreaped: the kernel does not hand a pid out again while a
// process (here the leader, alive or a zombie) still holds it. Callers therefore look at an exited leader with
// leader_has_exited() (which does not reap it), kill the session, and only then reap the leader (waitpid).
//
// Needs Linux >= 5.3 (pidfd_open, pidfd_send_signal).
//
// Thread-safety: the functions share no state; kill_session() may take up to ~10 s for processes that do not
// die at once (uninterruptible sleep) and returns false if some are still alive then.
#pragma once
#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace loom {

// Linux never hands out a pid above this (PID_MAX_LIMIT); anything larger in a request is malformed.
constexpr int64_t kMaxLinuxPid = int64_t{1} << 22;

// Fields of /proc/<pid>/stat. nullopt when the process does not exist (or its stat cannot be parsed).
struct ProcessStat {
  pid_t pid = 0, parent = 0, group = 0, session = 0;
  char state = '?';  // 'R', 'S', 'D', 'Z' (zombie), ...
};
std::optional<ProcessStat> read_process_stat(pid_t pid);

// Starts `argv` (argv[0] is the executable's path, no PATH search) with exactly `env`, stdin from /dev/null
// and stdout and stderr appended to a fresh `output_path` (created 0644, truncated), as the leader of a new
// session, with no signals blocked and SIGPIPE at its default. Returns its pid; throws loom::Error naming
// argv[0] when it cannot be started.
pid_t spawn_session(const std::vector<std::string>& argv, const std::vector<std::string>& env,
                    const std::string& output_path);

// True when `child` (a child of this process, not yet reaped) has exited; it stays unreaped (a zombie).
bool leader_has_exited(pid_t child);

// SIGKILL to the process group `leader` and to every live process of the session `leader`, through pidfds
// opened before each process's session is read again (a pid that is reused meanwhile is never hit), sweeping
// /proc again until no member is left (members may fork while the sweep runs). `leader` must be a child of
// this process that has not been reaped yet. Returns false if members were still alive after the last sweep.
bool kill_session(pid_t leader);

// True when `pid` is a strict descendant of `ancestor` now (the parent chain in /proc/<pid>/stat reaches it).
bool descends_from(pid_t pid, pid_t ancestor);

}  // namespace loom
