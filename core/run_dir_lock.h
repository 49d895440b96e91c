// An exclusive lock on a run folder (train.out_dir), so two runs never write into one folder at once (they
// would interleave metrics and mix checkpoints of two runs).
//
// How: flock(LOCK_EX | LOCK_NB) on <dir>/.lock, a file that holds the owner's pid as text for the error
// message. The kernel releases a flock when its last descriptor closes, so a killed run (SIGKILL, crash)
// never leaves a stale lock: the next run takes it at once. The file itself stays (removing it would race
// with a run that has just opened it). The descriptor is O_CLOEXEC, so processes started by the owner do not
// inherit the lock; a fork()ed child shares it until it closes the descriptor or exits.
//
// Errors: loom::Error naming the folder; when another process holds the lock, also its pid.
// Threads: a lock object is used by one thread; flock semantics make a second lock of the same folder fail
// even within one process.
#pragma once
#include <string>

namespace loom {

class RunDirectoryLock {
 public:
  // Creates `dir` if needed and takes the lock, or throws
  //   "<dir>: another run (pid 1234) is using this folder (lock file <dir>/.lock)".
  explicit RunDirectoryLock(const std::string& dir);
  // Releases the lock.
  ~RunDirectoryLock();
  RunDirectoryLock(const RunDirectoryLock&) = delete;
  RunDirectoryLock& operator=(const RunDirectoryLock&) = delete;

  const std::string& dir() const { return dir_; }

 private:
  std::string dir_;
  int fd_ = -1;
};

}  // namespace loom
