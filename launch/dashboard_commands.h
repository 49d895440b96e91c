// The `loom` subcommands that show runs: `loom dashboard` serves the live dashboard of run folders, `loom plot`
// draws their curves into a PNG. Both use the dashboard's front end (launch/dashboard/) and its charting library
// (uPlot, installed by scripts/setup.sh into build/npm): the picture is the dashboard's charts, rendered by
// Debian's headless Chromium (scripts/setup.sh installs it for the browser test too). One set of charts to
// keep right, and a picture that looks like the page.
// Errors: loom::Error naming the folder, file or program; `loom` prints it and exits 1.
// Thread-safety: one call per process.
#pragma once
#include <string>
#include <vector>

namespace loom {

struct FrontEndFiles {
  std::string static_dir;  // launch/dashboard
  std::string vendor_dir;  // uPlot's dist folder (uPlot.iife.min.js, uPlot.min.css)
};

// The defaults: the source tree's launch/dashboard and build/npm/node_modules/uplot/dist next to the binary.
FrontEndFiles default_front_end_files();

// Serves the dashboard of `run_dirs` (default: every folder in runs/ with a metrics.jsonl) on host:port until
// SIGINT or SIGTERM; prints the URL, and writes the port to `ready_file` (when given) once serving.
int cmd_dashboard(std::vector<std::string> run_dirs, const std::string& host, int port, const FrontEndFiles& files,
                  const std::string& ready_file);

struct PlotOptions {
  std::string out;                  // the PNG
  int width = 1200, height = 720;   // pixels
  double smoothing = 0;             // the dashboard's smoothing, 0 (none) to 0.99
  std::string chromium = "chromium";  // the browser (a name looked up in PATH, or a path)
};

// Draws loss (train and validation), MFU, throughput and learning rate over steps for every run folder, one
// colour per run, into options.out: the dashboard's charts in a static page (window.loomStatic), rendered by
// `chromium --headless --screenshot`. Throws naming a folder without metrics.jsonl, or the browser's exit
// status and output when it fails.
int cmd_plot(const std::vector<std::string>& run_dirs, const PlotOptions& options, const FrontEndFiles& files);

}  // namespace loom
