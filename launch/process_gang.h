// The processes of one job attempt (its "gang"): a session that the controller creates, and nothing else.
//
// Gang::start() starts the job's keeper (loom-gang-keeper, launch/process_gang_keeper.cc) with
// posix_spawn(POSIX_SPAWN_SETSID): it leads a new session and a new process group, both numbered with its pid,
// and starts the launcher as its child. Every process the launcher starts stays in that session unless it
// calls setsid() itself (Open MPI's mpirun puts each rank in a process group of its own, but not in a session
// of its own), so the session is the gang. The controller finds the gang's members itself, in /proc; it never
// signals a pid that came from a request.
//
// Why a keeper: a session id stays unique only while a process holds its number (the kernel does not hand a
// pid out again while a process, alive or an unreaped zombie, still has it), and pids are reused (pid_max is
// often 32768). The keeper leads the session, writes the launcher's wait status to a file when the launcher
// exits, and then stays until no other process of its session is left; the controller kills it last. So the
// session id is held by the keeper while the controller sweeps it, also by a controller restarted after a crash
// (Gang::adopt), for which the keeper is not a child it could keep unreaped: before it signals a member whose
// session it read, it checks through the keeper's pidfd that the keeper is still alive, so the number it
// read was still that session's.
//
// Needs Linux >= 5.3 (pidfd_open, pidfd_send_signal).
//
// Thread-safety: the functions share no state; a Gang is used by one thread at a time. Killing may take up to
// ~10 s for processes that do not die at once (uninterruptible sleep).
#pragma once
#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace loom {

// Linux never hands out a pid above this (PID_MAX_LIMIT); anything larger in a request is malformed.
constexpr int64_t kMaxLinuxPid = int64_t{1} << 22;

// Fields of /proc/<pid>/stat. nullopt when the process does not exist (or its stat cannot be parsed).
struct ProcessStat {
  pid_t pid = 0, parent = 0, group = 0, session = 0;
  char state = '?';         // 'R', 'S', 'D', 'Z' (zombie), ...
  uint64_t start_time = 0;  // clock ticks after boot (field 22): with the boot id, names one process for good
};
std::optional<ProcessStat> read_process_stat(pid_t pid);

// The live (not zombie) processes whose session is `session`.
std::vector<pid_t> session_members(pid_t session);

// This boot's id (/proc/sys/kernel/random/boot_id): start times count from the boot.
std::string boot_id();

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
// (Used for the short-lived host probes; a job's processes are a Gang.)
bool kill_session(pid_t leader);

// Who a gang is, as the controller's journal keeps it: a restarted controller takes a gang up again only when
// its keeper is still the process with this pid, start time and boot.
struct GangIdentity {
  pid_t keeper = 0;
  uint64_t start_time = 0;
  std::string boot_id;
};

// An attempt's claim file, created once and atomically (link(2)): by its keeper before it starts the launcher
// ("keeper PID START_TIME BOOT_ID"), or by a restarted controller that found none ("cancelled"; the keeper then
// exits without starting anything). So an attempt whose start a controller crash interrupted is either taken
// up or never started, never both.
struct Claim {
  enum class State { kNone, kCancelled, kKeeper } state = State::kNone;
  GangIdentity keeper;  // with kKeeper
};
// Creates `path` holding `text` unless it exists; true when this call created it. Throws loom::Error naming
// the file on other errors.
bool create_claim(const std::string& path, const std::string& text);
std::string keeper_claim_text(const GangIdentity& keeper);
constexpr char kCancelledClaim[] = "cancelled\n";
// Reads a claim file (kNone when it does not exist). Throws loom::Error naming the file when its text is none
// of the above.
Claim read_claim(const std::string& path);

class Gang {
 public:
  // Starts `keeper_binary CLAIM_FILE STATUS_FILE ARGV...` with exactly `env` as the leader of a new session
  // (spawn_session, output appended to a fresh `output_path`); the keeper claims the attempt and starts ARGV.
  // Throws loom::Error naming the keeper when it cannot be started.
  static std::unique_ptr<Gang> start(const std::string& keeper_binary, const std::string& claim_file,
                                     const std::string& status_file, const std::vector<std::string>& argv,
                                     const std::vector<std::string>& env, const std::string& output_path);
  // The gang of an earlier controller process when `identity` still names its live keeper (pid, start time
  // and boot agree, and it leads its session); nullptr otherwise (the keeper is gone: its session is empty).
  static std::unique_ptr<Gang> adopt(const GangIdentity& identity, const std::string& status_file);
  // Closes the keeper's pidfd; the processes are left as they are (kill() ends them).
  ~Gang();
  Gang(const Gang&) = delete;
  Gang& operator=(const Gang&) = delete;

  const GangIdentity& identity() const { return identity_; }
  // True for a gang taken up by adopt(): its keeper is no child of this process.
  bool adopted() const { return !child_; }
  // True once the launcher has exited (its status is in the file) or the keeper has gone.
  bool launcher_done() const;
  // SIGKILL to every process of the session, the keeper last (a child keeper is then reaped). An adopted
  // gang's members are signalled only while its keeper is seen alive after their session was read. Returns
  // false if members were still alive after the last sweep. Idempotent.
  bool kill();
  // The launcher's wait status (as waitpid gives it) from the status file; nullopt when there is none (the
  // keeper was killed before the launcher ended, or could not write it).
  std::optional<int> launcher_status() const;

 private:
  Gang(GangIdentity identity, int pidfd, bool child, std::string status_file);
  bool keeper_alive() const;

  GangIdentity identity_;
  int pidfd_ = -1;
  bool child_ = false;
  bool killed_ = false;
  std::string status_file_;
};

// The keeper's side: the status file's text for a launcher wait status, and the status read back from it
// (nullopt when the text is not one the keeper writes, or the file cannot be read).
std::string launcher_status_text(int wait_status);
std::optional<int> parse_launcher_status(const std::string& text);
std::optional<int> read_launcher_status(const std::string& status_file);

// True when `pid` is a strict descendant of `ancestor` now (the parent chain in /proc/<pid>/stat reaches it).
bool descends_from(pid_t pid, pid_t ancestor);

}  // namespace loom
