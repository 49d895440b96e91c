#include "trainer/pruning/latency_table.h"

#include <algorithm>
#include <cmath>
#include <ctime>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <ostream>
#include <random>

#include "core/atomic_file.h"
#include "core/error.h"
#include "trainer/optimizer.h"
#include "trainer/pruning/step_timing.h"
#include "trainer/run.h"
#include "trainer/models/transformer_block.h"
#include "trainer/models/vit.h"

namespace loom {
namespace {

constexpr const char* kFormat = "loom-latency-table";
constexpr int kVersion = 1;
constexpr const char* kAxisNames[5] = {"embedding", "heads", "qk_dim", "v_dim", "mlp"};

// Axis a of the grid, in the order of kAxisNames (the file's row-major order).
template <typename Grid>
auto& axis(Grid& g, int a) {
  switch (a) {
    case 0: return g.embedding;
    case 1: return g.heads;
    case 2: return g.qk_dim;
    case 3: return g.v_dim;
    default: return g.mlp;
  }
}

// Throws unless `points` is a non-empty, strictly increasing list of positive widths; `field` names it.
void check_axis(const std::vector<int64_t>& points, const std::string& field) {
  LOOM_CHECK(!points.empty(), field, ": needs at least one width");
  for (size_t i = 0; i < points.size(); ++i) {
    LOOM_CHECK(points[i] > 0, field, "[", i, "] = ", points[i], " must be positive");
    if (i) LOOM_CHECK(points[i] > points[i - 1], field, " must be strictly increasing: [", i - 1, "] = ", points[i - 1],
                      ", [", i, "] = ", points[i]);
  }
}

// The cell of `x` on one axis: points[index] and points[index + 1] weighted (1 − t, t); a single-point axis
// gives index 0, t 0 and answers only for that point.
struct Cell {
  size_t index = 0;
  double t = 0;
  bool single = false;
};
Cell locate(const std::vector<int64_t>& points, int64_t x, const char* axis_name) {
  LOOM_CHECK(x >= points.front() && x <= points.back(), "latency table: ", axis_name, " width ", x,
             " is outside the table's grid.", axis_name, " [", points.front(), ", ", points.back(),
             "] (build a table whose prune.latency_grid covers it)");
  Cell c;
  if (points.size() == 1) {
    c.single = true;
    return c;
  }
  const auto it = std::upper_bound(points.begin(), points.end(), x);
  c.index = std::min<size_t>(static_cast<size_t>(it - points.begin()), points.size() - 1) - 1;
  c.t = static_cast<double>(x - points[c.index]) / static_cast<double>(points[c.index + 1] - points[c.index]);
  return c;
}

std::string utc_now() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

LatencyMode mode_from_name(const std::string& name, const std::string& field) {
  if (name == "training") return LatencyMode::Training;
  if (name == "inference") return LatencyMode::Inference;
  fail(field, ": expected \"training\" or \"inference\", got \"", name, "\"");
}

}  // namespace

const char* latency_mode_name(LatencyMode mode) { return mode == LatencyMode::Training ? "training" : "inference"; }

int64_t LatencyGrid::points() const {
  int64_t n = 1;
  for (int a = 0; a < 5; ++a) n *= static_cast<int64_t>(axis(*this, a).size());
  return n;
}

std::string latency_device_name(const Backend& backend) {
  const std::string name = backend.name();
  if (backend.device().is_cuda()) {
    const size_t space = name.find(' ');  // "cuda:0 NVIDIA H200" -> "NVIDIA H200"
    return space == std::string::npos ? name : name.substr(space + 1);
  }
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpuinfo, line))
    if (line.rfind("model name", 0) == 0) {
      const size_t colon = line.find(':');
      if (colon != std::string::npos) return "cpu: " + line.substr(line.find_first_not_of(" \t", colon + 1));
    }
  return "cpu";
}

LatencyTable::LatencyTable(LatencyTableKey key, LatencyGrid grid, std::vector<double> block_ms,
                           std::vector<double> fixed_ms, std::string model_kind, std::string date, int warmup,
                           int repeats)
    : key_(std::move(key)),
      grid_(std::move(grid)),
      block_ms_(std::move(block_ms)),
      fixed_ms_(std::move(fixed_ms)),
      model_kind_(std::move(model_kind)),
      date_(std::move(date)),
      warmup_(warmup),
      repeats_(repeats) {
  for (int a = 0; a < 5; ++a) check_axis(axis(grid_, a), std::string("latency table grid.") + kAxisNames[a]);
  LOOM_CHECK(static_cast<int64_t>(block_ms_.size()) == grid_.points(), "latency table block_ms: has ",
             block_ms_.size(), " values, the grid has ", grid_.points(), " points");
  LOOM_CHECK(fixed_ms_.size() == grid_.embedding.size(), "latency table fixed_ms: has ", fixed_ms_.size(),
             " values, grid.embedding has ", grid_.embedding.size(), " points");
  for (const auto* values : {&block_ms_, &fixed_ms_})
    for (size_t i = 0; i < values->size(); ++i)
      LOOM_CHECK(std::isfinite((*values)[i]) && (*values)[i] >= 0, "latency table ",
                 values == &block_ms_ ? "block_ms" : "fixed_ms", "[", i, "] = ", (*values)[i],
                 " must be a finite, non-negative time");
  LOOM_CHECK(key_.batch > 0 && key_.tokens > 0, "latency table: batch (", key_.batch, ") and tokens (", key_.tokens,
             ") must be positive");
}

LatencyTable LatencyTable::load(const std::string& path) {
  std::ifstream in(path);
  LOOM_CHECK(in, path, ": cannot read the latency table");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    fail(path, ": not valid JSON: ", e.what());
  }
  auto field = [&](const char* name) -> const nlohmann::json& {
    LOOM_CHECK(j.is_object() && j.contains(name), path, ": missing field \"", name, "\"");
    return j[name];
  };
  try {
    LOOM_CHECK(field("format") == kFormat, path, ": format must be \"", kFormat, "\", got ", field("format").dump());
    LOOM_CHECK(field("version") == kVersion, path, ": version ", field("version").dump(), " is not supported (",
               kVersion, ")");
    LatencyTableKey key;
    key.device = field("device").get<std::string>();
    key.dtype = field("dtype").get<std::string>();
    key.batch = field("batch").get<int64_t>();
    key.tokens = field("tokens").get<int64_t>();
    key.mode = mode_from_name(field("mode").get<std::string>(), path + ": mode");
    LatencyGrid grid;
    const nlohmann::json& g = field("grid");
    for (int a = 0; a < 5; ++a) {
      LOOM_CHECK(g.is_object() && g.contains(kAxisNames[a]), path, ": missing field \"grid.", kAxisNames[a], "\"");
      axis(grid, a) = g[kAxisNames[a]].get<std::vector<int64_t>>();
      check_axis(axis(grid, a), path + ": grid." + kAxisNames[a]);
    }
    const auto block = field("block_ms").get<std::vector<double>>();
    const auto fixed = field("fixed_ms").get<std::vector<double>>();
    try {
      return LatencyTable(key, grid, block, fixed, j.value("model", ""), j.value("date", ""), j.value("warmup", 0),
                          j.value("repeats", 0));
    } catch (const Error& e) {
      fail(path, ": ", e.what());
    }
  } catch (const nlohmann::json::exception& e) {
    fail(path, ": a field has the wrong type: ", e.what());
  }
}

void LatencyTable::save(const std::string& path) const {
  nlohmann::json j;
  j["format"] = kFormat;
  j["version"] = kVersion;
  j["device"] = key_.device;
  j["dtype"] = key_.dtype;
  j["batch"] = key_.batch;
  j["tokens"] = key_.tokens;
  j["mode"] = latency_mode_name(key_.mode);
  j["model"] = model_kind_;
  j["date"] = date_;
  j["warmup"] = warmup_;
  j["repeats"] = repeats_;
  for (int a = 0; a < 5; ++a) j["grid"][kAxisNames[a]] = axis(grid_, a);
  j["block_ms"] = block_ms_;
  j["fixed_ms"] = fixed_ms_;
  AtomicFileWriter out(path);
  out.write(j.dump(1) + "\n");
  out.commit();
}

void LatencyTable::check_matches(const LatencyTableKey& e, const std::string& source) const {
  auto mismatch = [&](const char* name, const std::string& table, const std::string& run) {
    fail(source, ": latency table field \"", name, "\" is ", table, " but this run has ", run,
         " (build the table for this run with `loom latency-table`)");
  };
  if (key_.device != e.device) mismatch("device", "\"" + key_.device + "\"", "\"" + e.device + "\"");
  if (key_.dtype != e.dtype) mismatch("dtype", key_.dtype, e.dtype);
  if (key_.batch != e.batch) mismatch("batch", std::to_string(key_.batch), std::to_string(e.batch));
  if (key_.tokens != e.tokens) mismatch("tokens", std::to_string(key_.tokens), std::to_string(e.tokens));
  if (key_.mode != e.mode) mismatch("mode", latency_mode_name(key_.mode), latency_mode_name(e.mode));
}

// Σ over the 2^5 corners of the cell of Π_axes (1 − t or t) · value(corner); single-point axes contribute
// their one point with weight 1.
double LatencyTable::block_ms(int64_t embedding, const BlockWidths& w) const {
  const int64_t x[5] = {embedding, w.heads, w.qk_dim, w.v_dim, w.mlp_dim};
  Cell cells[5];
  for (int a = 0; a < 5; ++a) cells[a] = locate(axis(grid_, a), x[a], kAxisNames[a]);
  double total = 0;
  for (int corner = 0; corner < 32; ++corner) {
    double weight = 1;
    int64_t flat = 0;
    for (int a = 0; a < 5; ++a) {
      const bool upper = (corner >> (4 - a)) & 1;
      if (cells[a].single && upper) {
        weight = 0;
        break;
      }
      weight *= upper ? cells[a].t : 1 - cells[a].t;
      flat = flat * static_cast<int64_t>(axis(grid_, a).size()) + static_cast<int64_t>(cells[a].index + upper);
    }
    if (weight != 0) total += weight * block_ms_[flat];
  }
  return total;
}

double LatencyTable::fixed_ms(int64_t embedding) const {
  const Cell c = locate(grid_.embedding, embedding, "embedding");
  if (c.single) return fixed_ms_[0];
  return (1 - c.t) * fixed_ms_[c.index] + c.t * fixed_ms_[c.index + 1];
}

double LatencyTable::model_ms(int64_t embedding, const std::vector<BlockWidths>& blocks) const {
  double total = fixed_ms(embedding);
  for (const auto& b : blocks) total += block_ms(embedding, b);
  return total;
}

// ---- building a table ----

LatencyGrid latency_grid_for(const config::RunConfig& cfg) {
  const auto& p = cfg.prune();
  // The run's shape: a pruning config takes its widths from the model.init_from checkpoint.
  const ModelShape shape = resolve_model_shape(cfg);
  const std::vector<BlockWidths>& blocks = shape.blocks;
  int64_t widest[5] = {shape.d_model, 0, 0, 0, 0};
  for (const auto& b : blocks) {
    widest[1] = std::max(widest[1], b.heads);
    widest[2] = std::max(widest[2], b.qk_dim);
    widest[3] = std::max(widest[3], b.v_dim);
    widest[4] = std::max(widest[4], b.mlp_dim);
  }
  const int64_t groups[5] = {p.embedding_group(), p.heads_group(), p.qk_group(), p.v_group(), p.mlp_group()};
  const auto& g = p.latency_grid();
  const google::protobuf::RepeatedField<int32_t>* explicit_lists[5] = {&g.embedding(), &g.heads(), &g.qk_dim(),
                                                                       &g.v_dim(), &g.mlp()};
  const int64_t points = g.points_per_axis();
  LOOM_CHECK(points >= 1, "prune.latency_grid.points_per_axis must be at least 1, got ", points);
  LatencyGrid grid;
  for (int a = 0; a < 5; ++a) {
    std::vector<int64_t>& out = axis(grid, a);
    if (!explicit_lists[a]->empty()) {
      out.assign(explicit_lists[a]->begin(), explicit_lists[a]->end());
      check_axis(out, std::string("prune.latency_grid.") + kAxisNames[a]);
      continue;
    }
    // From one group to the widest block, in multiples of the group, the width itself last.
    const int64_t W = widest[a], lo = std::min(groups[a], W);
    for (int64_t k = 0; k + 1 < points; ++k) {
      const double x = lo + static_cast<double>(W - lo) * static_cast<double>(k) / static_cast<double>(points - 1);
      const int64_t aligned = std::max<int64_t>(lo, std::llround(x / groups[a]) * groups[a]);
      if (aligned < W && (out.empty() || aligned > out.back())) out.push_back(aligned);
    }
    out.push_back(W);
  }
  return grid;
}

LatencyTableKey latency_key_for(const config::RunConfig& cfg, const Backend& backend) {
  LatencyTableKey key;
  key.device = latency_device_name(backend);
  key.dtype = dtype_name(select_compute_dtype(backend.device(), cfg.train()));
  key.batch = cfg.data().batch_size();
  key.tokens = cfg.model().kind() == "vit" ? resolve_model_shape(cfg).tokens() : cfg.data().seq_len();
  key.mode = cfg.prune().latency_mode() == config::PruneConfig::inference ? LatencyMode::Inference
                                                                           : LatencyMode::Training;
  return key;
}

namespace {

// A random tensor of `shape` on the backend's device in `dtype` (values in [-1, 1)).
Tensor random_tensor(const Shape& shape, DType dtype, Device device, std::mt19937& rng) {
  std::uniform_real_distribution<float> dist(-1.f, 1.f);
  std::vector<float> v(static_cast<size_t>(shape_numel(shape)));
  for (auto& x : v) x = dist(rng);
  return Tensor::from_vector(v, shape, dtype).to(device);
}

struct Timing {
  Backend& be;
  const config::RunConfig& cfg;
  DType dtype;
  int64_t batch, tokens;
  bool training;
  int warmup, repeats;
  std::mt19937 rng{20261204};
  // Drawn once and reused, so the host's random draws do not dominate a GPU table's time (kernel times do not
  // depend on the values): the block input and output gradient of the current embedding width, and values
  // for the parameters (the largest block's count, filled into each block's arena).
  int64_t inputs_width = -1;
  Tensor x{}, dout{};
  Tensor parameter_values{};

  // Fills `params` (master and compute copy) from parameter_values: 0.02 · normal, LayerNorm weights too.
  void fill(ParameterStore& params) {
    const int64_t n = params.layout().total();
    if (!parameter_values.defined() || parameter_values.numel() < n) {
      std::normal_distribution<float> normal(0.f, 0.02f);
      std::vector<float> v(static_cast<size_t>(n));
      for (auto& value : v) value = normal(rng);
      parameter_values = Tensor::from_vector(v, {n}).to(be.device());
    }
    params.master().copy_from(parameter_values.slice_flat(0, {n}));
    if (!params.compute_is_master()) be.convert(params.compute(), params.master());
  }

  double block(int64_t E, const BlockWidths& w) {
    const bool gpt = cfg.model().kind() == "gpt";
    const double ln_eps = cfg.model().has_ln_eps() ? cfg.model().ln_eps() : gpt ? 1e-5 : 1e-6;
    TransformerBlock block(0, E, w, /*causal=*/gpt, gpt ? GeluKind::Tanh : GeluKind::Erf, ln_eps);
    std::vector<ParamSpec> specs;
    block.declare_parameters(specs, 0.02, cfg.model().n_layer());
    ParameterStore params(ParameterLayout(specs), DType::F32, dtype, be.device());
    fill(params);
    AdamW adamw(params, cfg.optim(), be);
    BlockActivations acts = block.allocate_activations(batch, tokens, dtype, be, dtype);
    std::vector<TransformerBlock> blocks{block};
    BlockScratch scratch = allocate_block_scratch(blocks, E, batch, tokens, dtype, dtype, be.device());
    if (inputs_width != E) {
      x = random_tensor({batch, tokens, E}, dtype, be.device(), rng);
      dout = random_tensor({batch, tokens, E}, dtype, be.device(), rng);
      inputs_width = E;
    }
    Tensor out = Tensor::empty({batch, tokens, E}, dtype, be.device());
    Tensor dresid = Tensor::empty({batch, tokens, E}, dtype, be.device());
    int64_t step = 0;
    auto prepare = [&] {
      if (training) dresid.copy_from(dout);
    };
    auto run = [&] {
      block.forward(be, params, x, out, acts);
      if (!training) return;
      be.zero(params.grads());
      block.backward(be, params, dresid, x, acts, scratch);
      adamw.step(cfg.optim().lr(), ++step, 1.0);
    };
    return median_ms(be, warmup, repeats, prepare, run);
  }

  // A step of the model with one block of widths `w` at embedding width E.
  double one_block_model(int64_t E, const BlockWidths& w) {
    config::RunConfig c = cfg;
    auto* m = c.mutable_model();
    m->set_n_layer(1);
    m->set_d_model(static_cast<int32_t>(E));
    m->set_n_head(static_cast<int32_t>(w.heads));
    m->set_head_dim(static_cast<int32_t>(w.qk_dim));
    m->set_mlp_dim(static_cast<int32_t>(w.mlp_dim));
    m->clear_blocks();
    auto* b = m->add_blocks();
    b->set_heads(static_cast<int32_t>(w.heads));
    b->set_qk_head_dim(static_cast<int32_t>(w.qk_dim));
    b->set_v_head_dim(static_cast<int32_t>(w.v_dim));
    b->set_mlp_dim(static_cast<int32_t>(w.mlp_dim));
    m->clear_init_from();
    std::unique_ptr<Model> model = build_model(c, be, dtype);
    const Batch data = random_batch(model->shape(), batch, tokens, be.device(), rng());
    return model_step_ms(*model, c.optim(), data, training ? LatencyMode::Training : LatencyMode::Inference, warmup,
                         repeats);
  }
};

}  // namespace

// A suffix minimum along each axis in turn: after axis a, the values fall nowhere along a, and a later axis'
// minimum keeps that (the minimum over j' >= j of values that are ordered along a is ordered along a).
int64_t make_monotone_in_every_width(const LatencyGrid& grid, std::vector<double>& block_ms,
                                     std::vector<double>& fixed_ms) {
  LOOM_CHECK(static_cast<int64_t>(block_ms.size()) == grid.points() && fixed_ms.size() == grid.embedding.size(),
             "latency table: ", block_ms.size(), " block values and ", fixed_ms.size(), " fixed values for a grid of ",
             grid.points(), " points and ", grid.embedding.size(), " embedding widths");
  const std::vector<double> measured_block = block_ms, measured_fixed = fixed_ms;
  size_t stride = block_ms.size();
  for (int a = 0; a < 5; ++a) {
    const size_t n = axis(grid, a).size();
    stride /= n;  // distance between neighbours along axis a (row-major: mlp fastest)
    for (size_t outer = 0; outer < block_ms.size(); outer += n * stride)
      for (size_t at = outer + (n - 1) * stride; at-- > outer;)  // from the second-widest point down
        block_ms[at] = std::min(block_ms[at], block_ms[at + stride]);
  }
  for (size_t i = fixed_ms.size(); i-- > 1;) fixed_ms[i - 1] = std::min(fixed_ms[i - 1], fixed_ms[i]);
  int64_t lowered = 0;
  for (size_t i = 0; i < block_ms.size(); ++i) lowered += block_ms[i] != measured_block[i];
  for (size_t i = 0; i < fixed_ms.size(); ++i) lowered += fixed_ms[i] != measured_fixed[i];
  return lowered;
}

LatencyTable build_latency_table(const config::RunConfig& run_cfg, Backend& backend, std::ostream* progress) {
  // The model section spelled out from the run's shape (a pruning config takes it from model.init_from), so
  // the timed blocks and fixed parts are those of the model the run prunes.
  config::RunConfig cfg = run_cfg;
  *cfg.mutable_model() = model_config_of_shape(resolve_model_shape(run_cfg));
  const LatencyTableKey key = latency_key_for(cfg, backend);
  const LatencyGrid grid = latency_grid_for(cfg);
  const auto& g = cfg.prune().latency_grid();
  Timing t{backend,  cfg, select_compute_dtype(backend.device(), cfg.train()), key.batch, key.tokens,
           key.mode == LatencyMode::Training, g.warmup(), g.repeats()};
  LOOM_CHECK(t.repeats >= 1, "prune.latency_grid.repeats must be at least 1, got ", t.repeats);
  std::vector<double> block_ms, fixed_ms;
  block_ms.reserve(static_cast<size_t>(grid.points()));
  const BlockWidths smallest{grid.heads.front(), grid.qk_dim.front(), grid.v_dim.front(), grid.mlp.front()};
  for (int64_t E : grid.embedding) {
    const size_t first = block_ms.size();
    for (int64_t H : grid.heads)
      for (int64_t Dqk : grid.qk_dim)
        for (int64_t Dv : grid.v_dim)
          for (int64_t M : grid.mlp) block_ms.push_back(t.block(E, BlockWidths{H, Dqk, Dv, M}));
    // The block at the smallest widths is this embedding point's first entry.
    fixed_ms.push_back(std::max(0.0, t.one_block_model(E, smallest) - block_ms[first]));
    if (progress)
      *progress << "latency table: embedding " << E << ": " << block_ms.size() - first << " block shapes, fixed parts "
                << fixed_ms.back() << " ms" << std::endl;
  }
  const int64_t lowered = make_monotone_in_every_width(grid, block_ms, fixed_ms);
  if (progress && lowered > 0)
    *progress << "latency table: " << lowered << " of " << block_ms.size() + fixed_ms.size()
              << " values lowered to a wider point's time (timing noise: a time never falls when a width grows)"
              << std::endl;
  return LatencyTable(key, grid, std::move(block_ms), std::move(fixed_ms), cfg.model().kind(), utc_now(), t.warmup,
                      t.repeats);
}

}  // namespace loom
