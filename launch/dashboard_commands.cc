#include "launch/dashboard_commands.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include "core/atomic_file.h"
#include "core/error.h"
#include "launch/dashboard_server.h"
#include "launch/run_series.h"

extern char** environ;

namespace loom {
namespace {

namespace fs = std::filesystem;

std::string executable_dir() { return fs::canonical("/proc/self/exe").parent_path().string(); }

std::string html_escaped(const std::string& text) {
  std::string out;
  for (char c : text) {
    if (c == '<') out += "&lt;";
    else if (c == '>') out += "&gt;";
    else if (c == '&') out += "&amp;";
    else if (c == '"') out += "&quot;";
    else out += c;
  }
  return out;
}

// A file:// URL of an absolute path (percent-encoding what a URL path may not hold as is).
std::string file_url(const std::string& path) {
  static const char* hex = "0123456789ABCDEF";
  std::string out = "file://";
  for (unsigned char c : fs::absolute(path).lexically_normal().string()) {
    if (std::isalnum(c) || std::strchr("/-._~", c)) {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  return out;
}

// Runs `argv` (argv[0] looked up in PATH), its output into `log_path`; returns its exit status.
int run_program(const std::vector<std::string>& argv, const std::string& log_path) {
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = 0;
  const int error = posix_spawnp(&pid, args[0], &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (error != 0)
    fail("plot: cannot start ", argv[0], ": ", std::strerror(error), " (scripts/setup.sh installs chromium)");
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

std::string tail_of(const std::string& path, size_t bytes) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  const std::string text = s.str();
  return text.size() > bytes ? "..." + text.substr(text.size() - bytes) : text;
}

}  // namespace

FrontEndFiles default_front_end_files() {
  return {std::string(LOOM_SOURCE_DIR) + "/launch/dashboard", executable_dir() + "/npm/node_modules/uplot/dist"};
}

int cmd_dashboard(std::vector<std::string> run_dirs, const std::string& host, int port, const FrontEndFiles& files,
                  const std::string& ready_file) {
  if (run_dirs.empty() && fs::is_directory("runs"))
    for (const auto& e : fs::directory_iterator("runs"))
      if (fs::is_regular_file(e.path() / "metrics.jsonl")) run_dirs.push_back(e.path().string());
  if (run_dirs.empty()) fail("dashboard: no run folders given, and none in runs/ holds a metrics.jsonl");
  std::sort(run_dirs.begin(), run_dirs.end());
  // The signals that end the dashboard are waited for, not handled: blocked here, before the server's threads
  // start (they inherit the mask).
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  DashboardOptions d;
  d.host = host;
  d.port = port;
  d.static_dir = files.static_dir;
  d.vendor_dir = files.vendor_dir;
  DashboardServer server(run_dirs, d);
  std::cout << "dashboard of " << run_dirs.size() << " run(s) on http://" << host << ":" << server.port() << "/"
            << std::endl;
  if (!ready_file.empty()) write_file_atomically(ready_file, std::to_string(server.port()) + "\n");
  int signal_number = 0;
  sigwait(&signals, &signal_number);
  return 0;
}

int cmd_plot(const std::vector<std::string>& run_dirs, const PlotOptions& o, const FrontEndFiles& files) {
  if (run_dirs.empty()) fail("plot: no run folders given");
  if (o.out.empty()) fail("plot: --out names the PNG to write");
  if (o.width < 200 || o.height < 150 || o.width > 8000 || o.height > 8000)
    fail("plot: --width ", o.width, " x --height ", o.height, " must be within 200 x 150 and 8000 x 8000");
  if (!(o.smoothing >= 0 && o.smoothing < 1)) fail("plot: --smoothing ", o.smoothing, " must be in [0, 1)");
  for (const std::string& dir : {files.static_dir, files.vendor_dir})
    if (!fs::is_directory(dir)) fail("plot: folder ", dir, " not found (the chart library: run scripts/setup.sh)");
  nlohmann::json runs = nlohmann::json::array();
  std::string title;
  for (size_t i = 0; i < run_dirs.size(); ++i) {
    MetricsFileTail tail(run_dirs[i] + "/metrics.jsonl");
    if (!tail.update() || tail.series().size() == 0) fail("plot: ", run_dirs[i], "/metrics.jsonl holds no steps");
    nlohmann::json run = run_folder_summary("run" + std::to_string(i + 1), run_dirs[i]);
    run.update(tail.series().to_json(4000));
    title += (title.empty() ? "" : ", ") + run["name"].get<std::string>();
    runs.push_back(std::move(run));
  }
  char temp_template[] = "/tmp/loom-plot-XXXXXX";
  if (!::mkdtemp(temp_template)) fail("plot: cannot create a temporary folder: ", std::strerror(errno));
  const std::string work = temp_template;
  struct Cleanup {
    std::string dir;
    ~Cleanup() {
      std::error_code ec;
      fs::remove_all(dir, ec);
    }
  } cleanup{work};
  // The data in a script of its own (no HTML escaping of the JSON needed); the page is the dashboard's, with
  // only the charts of the picture.
  write_file_atomically(work + "/data.js",
                        "window.loomStatic = " +
                            nlohmann::json({{"runs", runs}, {"smoothing", o.smoothing}, {"height", o.height}}).dump() +
                            ";\n");
  const std::string page = work + "/plot.html";
  std::ostringstream html;
  html << "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
       << "<link rel=\"stylesheet\" href=\"" << file_url(files.vendor_dir + "/uPlot.min.css") << "\">\n"
       << "<link rel=\"stylesheet\" href=\"" << file_url(files.static_dir + "/dashboard.css") << "\">\n"
       << "<title>" << html_escaped(title) << "</title>\n"
       << "<style>body { background: #fff; }</style></head><body>\n"
       << "<p class=\"plot-title\" id=\"plot-legend\"></p>\n<main class=\"plot\">\n"
       << "<section class=\"chart\" id=\"chart-loss\"><h2>loss <small>(train, val dashed)</small></h2></section>\n"
       << "<section class=\"chart\" id=\"chart-mfu\"><h2>MFU (%)</h2></section>\n"
       << "<section class=\"chart\" id=\"chart-throughput\"><h2>throughput</h2></section>\n"
       << "<section class=\"chart\" id=\"chart-lr\"><h2>learning rate</h2></section>\n</main>\n"
       << "<script src=\"" << file_url(work + "/data.js") << "\"></script>\n"
       << "<script src=\"" << file_url(files.vendor_dir + "/uPlot.iife.min.js") << "\"></script>\n"
       << "<script src=\"" << file_url(files.static_dir + "/dashboard.js") << "\"></script>\n</body></html>\n";
  write_file_atomically(page, html.str());
  const std::string out = fs::absolute(o.out).string();
  std::error_code ec;
  fs::remove(out, ec);
  std::vector<std::string> argv = {
      o.chromium, "--headless", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      "--force-device-scale-factor=1", "--user-data-dir=" + work + "/profile",
      "--window-size=" + std::to_string(o.width) + "," + std::to_string(o.height), "--virtual-time-budget=5000",
      "--screenshot=" + out, file_url(page)};
  // Chromium refuses to run as root inside its sandbox; the page is this command's own, read from local files.
  if (::geteuid() == 0) argv.insert(argv.begin() + 1, "--no-sandbox");
  const std::string log = work + "/chromium.log";
  const int status = run_program(argv, log);
  if (status != 0 || !fs::is_regular_file(out) || fs::file_size(out) == 0)
    fail("plot: ", o.chromium, " exited with status ", status, " without writing ", out, ": ", tail_of(log, 1500));
  std::cout << "wrote " << out << " (" << run_dirs.size() << " run(s))" << std::endl;
  return 0;
}

}  // namespace loom
