// How a training run shows its progress, two ways (train.progress):
// - a bar on a terminal, "[#####.....] 50% 100/200 ETA 1m23s", redrawn in place on stderr when stderr is a
//   terminal. Everything the run logs goes through log(), which erases a visible bar first, so a validation
//   line, a sample or a checkpoint message always starts on a clean line instead of being glued to the bar.
// - a plain line every `every` steps when stdout is no terminal (a Slurm log, `> file`), in the log itself,
//   stamped with the local time:
//     2026-12-06 20:31:05 | progress 200/1000 (20%) | 3.21 steps/s | elapsed 1m02s | ETA 4m10s
//
// Thread-safety: used by the training thread only.
#pragma once
#include <cstdint>
#include <memory>
#include <ostream>
#include <streambuf>

namespace loom {

struct ProgressOptions {
  bool bar = false;                 // draw the bar on bar_stream
  bool lines = false;               // write plain progress lines into the log
  int64_t every = 0;                // steps between plain lines; 0: about every 5 % of the run
  std::ostream* bar_stream = nullptr;  // where the bar goes (default std::cerr)
};

// The options `loom train` uses: the bar when `enabled` and stderr is a terminal, plain lines when `enabled`
// and stdout is not one, every `every` steps.
ProgressOptions terminal_progress_options(bool enabled, int64_t every);

class ProgressReporter {
 public:
  // `log` (not owned, outlives this) is the run's log.
  ProgressReporter(std::ostream& log, ProgressOptions options);
  ~ProgressReporter();
  ProgressReporter(const ProgressReporter&) = delete;
  ProgressReporter& operator=(const ProgressReporter&) = delete;

  void set_options(const ProgressOptions& options);
  // The run's log: text written here goes to `log`, after erasing a visible bar.
  std::ostream& log() { return stream_; }
  // After each step: `step` of the run's steps (first_step, end_step], `elapsed_seconds` since first_step.
  void step_done(int64_t step, int64_t first_step, int64_t end_step, double elapsed_seconds);
  // Erases the bar (the run is over, or stopped early).
  void finish();

 private:
  class EraseBarFirst;
  void erase_bar();

  ProgressOptions options_;
  std::unique_ptr<EraseBarFirst> buffer_;
  std::ostream stream_;
  bool bar_visible_ = false;
};

// "1m23s", "2h05m": a duration for people.
std::string format_duration(double seconds);

}  // namespace loom
