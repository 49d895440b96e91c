#include "trainer/pruning/report.h"

#include <algorithm>
#include <cstdio>
#include <sstream>

namespace loom {
namespace {

std::string fmt(const char* format, double a, double b = 0, double c = 0, double d = 0) {
  char buf[256];
  std::snprintf(buf, sizeof buf, format, a, b, c, d);
  return buf;
}

}  // namespace

std::string width_table(const ModelShape& from, const ModelShape& to) {
  std::ostringstream out;
  char line[200];
  std::snprintf(line, sizeof line, "pruned widths (was -> now): embedding %lld -> %lld\n",
                static_cast<long long>(from.d_model), static_cast<long long>(to.d_model));
  out << line << "block |  heads     |  qk dim    |  v dim     |  mlp\n";
  for (size_t b = 0; b < to.blocks.size() && b < from.blocks.size(); ++b) {
    const BlockWidths &f = from.blocks[b], &w = to.blocks[b];
    std::snprintf(line, sizeof line, "%5zu | %3lld -> %-3lld | %3lld -> %-3lld | %3lld -> %-3lld | %5lld -> %lld\n", b,
                  static_cast<long long>(f.heads), static_cast<long long>(w.heads), static_cast<long long>(f.qk_dim),
                  static_cast<long long>(w.qk_dim), static_cast<long long>(f.v_dim), static_cast<long long>(w.v_dim),
                  static_cast<long long>(f.mlp_dim), static_cast<long long>(w.mlp_dim));
    out << line;
  }
  return out.str();
}

std::string pruning_svg(const ModelShape& from, const ModelShape& to, const std::vector<PruningPoint>& history) {
  const double W = 900, panel_h = 320, left = 60, top = 40;
  const int n = static_cast<int>(from.blocks.size());
  std::ostringstream s;
  s << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << 2 * panel_h + 80
    << "\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  // Panel 1: per block, three bars (attention width heads·v, q/k width heads·qk, MLP), the original as an
  // outline and the pruned width filled.
  double widest = 1;
  for (const BlockWidths& b : from.blocks)
    widest = std::max({widest, double(b.heads * b.v_dim), double(b.heads * b.qk_dim), double(b.mlp_dim)});
  s << fmt("<text x=\"%g\" y=\"%g\" font-size=\"15\">", left, top - 15) << "Widths per block (outline: unpruned, "
    << "filled: pruned); embedding " << from.d_model << " -> " << to.d_model << "</text>\n";
  const double plot_w = W - left - 20, plot_h = panel_h - 70, slot = plot_w / std::max(1, n);
  const char* colors[3] = {"#4c72b0", "#dd8452", "#55a868"};
  const char* names[3] = {"heads x v dim", "heads x q/k dim", "mlp"};
  for (int b = 0; b < n; ++b) {
    const BlockWidths& f = from.blocks[b];
    const BlockWidths& p = b < static_cast<int>(to.blocks.size()) ? to.blocks[b] : f;
    const double was[3] = {double(f.heads * f.v_dim), double(f.heads * f.qk_dim), double(f.mlp_dim)};
    const double now[3] = {double(p.heads * p.v_dim), double(p.heads * p.qk_dim), double(p.mlp_dim)};
    for (int k = 0; k < 3; ++k) {
      const double x = left + b * slot + slot * (0.15 + 0.23 * k), bw = slot * 0.2;
      const double hw = plot_h * was[k] / widest, hn = plot_h * now[k] / widest;
      s << fmt("<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" ", x, top + plot_h - hw, bw, hw)
        << "stroke=\"" << colors[k] << "\"/>\n";
      s << fmt("<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" ", x, top + plot_h - hn, bw, hn) << "fill=\""
        << colors[k] << "\"/>\n";
    }
    s << fmt("<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">", left + (b + 0.5) * slot, top + plot_h + 16) << b
      << "</text>\n";
  }
  for (int k = 0; k < 3; ++k)
    s << fmt("<rect x=\"%.1f\" y=\"%.1f\" width=\"10\" height=\"10\" ", left + 160 * k, top + plot_h + 28)
      << "fill=\"" << colors[k] << "\"/>" << fmt("<text x=\"%.1f\" y=\"%.1f\">", left + 160 * k + 14, top + plot_h + 37)
      << names[k] << "</text>\n";
  // Panel 2: predicted latency (left axis) and training loss (right axis) against the step.
  if (!history.empty()) {
    const double y0 = panel_h + 60;
    double max_ms = 0, min_ms = history.front().predicted_ms, max_loss = 0, min_loss = history.front().loss;
    for (const PruningPoint& p : history) {
      max_ms = std::max(max_ms, p.predicted_ms);
      min_ms = std::min(min_ms, p.predicted_ms);
      max_loss = std::max(max_loss, p.loss);
      min_loss = std::min(min_loss, p.loss);
    }
    const double first = double(history.front().step), span = std::max(1.0, double(history.back().step) - first);
    auto x_of = [&](int64_t step) { return left + plot_w * (double(step) - first) / span; };
    auto y_of = [&](double v, double lo, double hi) { return y0 + plot_h - plot_h * (v - lo) / std::max(1e-12, hi - lo); };
    s << fmt("<text x=\"%g\" y=\"%g\" font-size=\"15\">", left, y0 - 15)
      << "Predicted latency (blue, ms) and training loss (orange) per step</text>\n";
    s << fmt("<rect x=\"%g\" y=\"%g\" width=\"%g\" height=\"%g\" fill=\"none\" stroke=\"#999\"/>\n", left, y0, plot_w,
             plot_h);
    for (int k = 0; k < 2; ++k) {
      s << "<polyline fill=\"none\" stroke=\"" << (k ? "#dd8452" : "#4c72b0") << "\" points=\"";
      for (const PruningPoint& p : history)
        s << fmt("%.1f,%.1f ", x_of(p.step),
                 k ? y_of(p.loss, min_loss, max_loss) : y_of(p.predicted_ms, std::min(0.0, min_ms), max_ms));
      s << "\"/>\n";
    }
    s << fmt("<text x=\"%g\" y=\"%g\">%.3g ms</text>", 4, y0 + 10, max_ms)
      << fmt("<text x=\"%g\" y=\"%g\">loss %.3g..%.3g</text>", W - 170, y0 - 2, min_loss, max_loss)
      << fmt("<text x=\"%g\" y=\"%g\">step %.0f</text>", left, y0 + plot_h + 16, first)
      << fmt("<text x=\"%g\" y=\"%g\" text-anchor=\"end\">step %.0f</text>\n", left + plot_w, y0 + plot_h + 16,
             first + span);
  }
  s << "</svg>\n";
  return s.str();
}

}  // namespace loom
