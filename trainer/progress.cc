#include "trainer/progress.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <ctime>
#include <iostream>
#include <string>

namespace loom {

std::string format_duration(double seconds) {
  const int64_t s = static_cast<int64_t>(seconds + 0.5);
  char buf[32];
  if (s >= 3600)
    std::snprintf(buf, sizeof buf, "%lldh%02lldm", static_cast<long long>(s / 3600), static_cast<long long>(s / 60 % 60));
  else
    std::snprintf(buf, sizeof buf, "%lldm%02llds", static_cast<long long>(s / 60), static_cast<long long>(s % 60));
  return buf;
}

ProgressOptions terminal_progress_options(bool enabled, int64_t every) {
  ProgressOptions o;
  o.bar = enabled && isatty(STDERR_FILENO);
  o.lines = enabled && !isatty(STDOUT_FILENO);
  o.every = every;
  return o;
}

// A stream buffer in front of the log's: the first character after the bar was drawn erases it.
class ProgressReporter::EraseBarFirst final : public std::streambuf {
 public:
  EraseBarFirst(ProgressReporter& owner, std::streambuf* target) : owner_(owner), target_(target) {}

 protected:
  int overflow(int c) override {
    if (c == traits_type::eof()) return traits_type::not_eof(c);
    owner_.erase_bar();
    return target_->sputc(static_cast<char>(c));
  }
  std::streamsize xsputn(const char* s, std::streamsize n) override {
    if (n > 0) owner_.erase_bar();
    return target_->sputn(s, n);
  }
  int sync() override { return target_->pubsync(); }

 private:
  ProgressReporter& owner_;
  std::streambuf* target_;
};

ProgressReporter::ProgressReporter(std::ostream& log, ProgressOptions options)
    : options_(options), buffer_(std::make_unique<EraseBarFirst>(*this, log.rdbuf())), stream_(buffer_.get()) {
  if (!options_.bar_stream) options_.bar_stream = &std::cerr;
}

ProgressReporter::~ProgressReporter() { finish(); }

void ProgressReporter::set_options(const ProgressOptions& options) {
  erase_bar();
  options_ = options;
  if (!options_.bar_stream) options_.bar_stream = &std::cerr;
}

void ProgressReporter::erase_bar() {
  if (!bar_visible_) return;
  bar_visible_ = false;
  *options_.bar_stream << "\r\033[K" << std::flush;  // to the start of the line, then clear it
}

void ProgressReporter::finish() { erase_bar(); }

void ProgressReporter::step_done(int64_t step, int64_t first_step, int64_t end_step, double elapsed_seconds) {
  const int64_t done = step - first_step, total = end_step - first_step;
  if (done <= 0) return;
  const double eta = elapsed_seconds / static_cast<double>(done) * static_cast<double>(end_step - step);
  const int percent = end_step > 0 ? static_cast<int>(100 * step / end_step) : 100;
  if (options_.bar) {
    const int width = 30;
    const int filled = end_step > 0 ? static_cast<int>(width * step / end_step) : width;
    char line[160];
    std::snprintf(line, sizeof line, "\r[%s%s] %3d%% %lld/%lld ETA %s ", std::string(filled, '#').c_str(),
                  std::string(width - filled, '.').c_str(), percent, static_cast<long long>(step),
                  static_cast<long long>(end_step), format_duration(eta).c_str());
    *options_.bar_stream << line << std::flush;
    bar_visible_ = true;
  }
  const int64_t every = options_.every > 0 ? options_.every : std::max<int64_t>(1, (total + 19) / 20);
  if (options_.lines && (done % every == 0 || step == end_step)) {
    const std::time_t now = std::time(nullptr);
    std::tm local{};
    localtime_r(&now, &local);
    char stamp[32];
    std::strftime(stamp, sizeof stamp, "%Y-%m-%d %H:%M:%S", &local);
    char line[256];
    std::snprintf(line, sizeof line, "%s | progress %lld/%lld (%d%%) | %.3g steps/s | elapsed %s | ETA %s", stamp,
                  static_cast<long long>(step), static_cast<long long>(end_step), percent,
                  static_cast<double>(done) / std::max(elapsed_seconds, 1e-9), format_duration(elapsed_seconds).c_str(),
                  format_duration(eta).c_str());
    stream_ << line << std::endl;
  }
}

}  // namespace loom
