// Error handling for the whole framework.
//
// Contract: every failure is reported as a loom::Error (a std::runtime_error) whose message names
// the thing that failed (a file, a config key, a tensor, a CUDA call) and why. Nothing fails silently:
// code that can fail either throws or returns a value that the caller must inspect.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace loom {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

namespace detail {
template <typename... Args>
std::string concat(Args&&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
[[noreturn]] void throw_check_failure(const char* file, int line, const char* cond, const std::string& msg);
}  // namespace detail

// An error every rank of a multi-process job raises alike, at the same point: a problem the ranks agreed on
// during set-up (trainer/run.h, agree_on_failure), or a decision taken from values every rank shares (a
// non-finite loss or state). `loom train` prints it once, from world rank 0, instead of once per rank.
class JobWideError : public Error {
 public:
  using Error::Error;
};

// Throws loom::Error built from the streamed arguments.
template <typename... Args>
[[noreturn]] void fail(Args&&... args) {
  throw Error(detail::concat(std::forward<Args>(args)...));
}

// Throws JobWideError built from the streamed arguments (see JobWideError for when).
template <typename... Args>
[[noreturn]] void fail_job_wide(Args&&... args) {
  throw JobWideError(detail::concat(std::forward<Args>(args)...));
}

}  // namespace loom

// LOOM_CHECK(cond, msg...) throws loom::Error with file:line, the condition and the message.
#define LOOM_CHECK(cond, ...)                                                                      \
  do {                                                                                             \
    if (!(cond))                                                                                   \
      ::loom::detail::throw_check_failure(__FILE__, __LINE__, #cond,                               \
                                          ::loom::detail::concat("" __VA_OPT__(, ) __VA_ARGS__)); \
  } while (0)
