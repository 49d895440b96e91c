// A latency lookup table of one transformer block over a grid of widths, measured with the project's own
// kernels on the device it runs on, plus the model's fixed parts; the pruning planner's cost model (NViT).
//
// What is timed (build_latency_table), at the run's batch and token count, in the run's compute dtype:
// - block_ms[E, H, Dqk, Dv, M]: one TransformerBlock (trainer/transformer_block.h) of embedding width E, H heads,
//   q/k head dim Dqk, v head dim Dv and MLP width M. Mode training: forward + backward + the AdamW update of the
//   block's own parameters (the optimizer's cost shrinks with the block, so it belongs to the block);
//   inference: the forward only.
// - fixed_ms[E]: everything else of a step at embedding width E (embeddings, final norm, head, loss and the
//   AdamW update of those parameters; the forward to the logits only for inference), measured as a one-block
//   model's step (step_timing.h model_step_ms) minus its block's entry at the grid's smallest widths (clamped
//   at 0 against timing noise).
// Each value is the median of `repeats` runs after `warmup` untimed ones, timed with the backend's WorkMarkers
// (CUDA events on the GPU, the host clock on the CPU, where work is complete when a call returns). A block's
// time and the fixed parts never fall when a width grows (the work of every kernel grows with each width,
// and the grid is aligned to the kernels' tiles), so a measured value above that of a wider point is timing
// noise (another process, a clock change): the built table keeps, at each point, the smallest time measured
// there or at any point at least as wide on every axis (make_monotone_in_every_width). Without this, a noisy
// point made the planner see pruning as slowing the model down, and over-prune.
//
// Lookups interpolate multilinearly between grid points (exact at them); an axis with a single point only
// answers for that width. The whole model: model_ms = Σ_blocks block_ms(E, widths_b) + fixed_ms(E).
//
// File: JSON (nlohmann) with "format": "loom-latency-table", "version": 1, "device", "dtype", "batch",
// "tokens", "mode" ("training" | "inference"), "model" (kind), "date" (UTC, ISO 8601), "warmup", "repeats",
// "grid": {"embedding", "heads", "qk_dim", "v_dim", "mlp"} (strictly increasing positive integers),
// "block_ms" (row-major over the grid, embedding slowest, mlp fastest) and "fixed_ms" (one per embedding point).
//
// Errors: loom::Error naming the file and the field for a malformed file; a table for another device, dtype,
// batch, token count or mode (check_matches) or a width outside the grid (lookups) names that field.
// Thread-safety: a table is immutable after construction; lookups may run concurrently.
#pragma once
#include <cstdint>
#include <iosfwd>
#include <string>
#include <vector>

#include "core/config.pb.h"
#include "kernels/backend.h"
#include "trainer/models/widths.h"

namespace loom {

enum class LatencyMode { Training, Inference };
const char* latency_mode_name(LatencyMode mode);  // "training" | "inference"

// The widths a table covers, per axis strictly increasing.
struct LatencyGrid {
  std::vector<int64_t> embedding, heads, qk_dim, v_dim, mlp;
  int64_t points() const;
  bool operator==(const LatencyGrid&) const = default;
};

// What a table's numbers depend on besides the widths; a run may only use a table whose key equals its own.
struct LatencyTableKey {
  std::string device;  // latency_device_name()
  std::string dtype;   // dtype_name() of the compute dtype
  int64_t batch = 0, tokens = 0;
  LatencyMode mode = LatencyMode::Training;
  bool operator==(const LatencyTableKey&) const = default;
};

// The device as tables record it: "cpu: <model name from /proc/cpuinfo>" or the GPU's name (the CUDA device
// index left out, so a table serves every GPU of one model).
std::string latency_device_name(const Backend& backend);

class LatencyTable {
 public:
  // block_ms has grid.points() values (row-major as in the file), fixed_ms one per embedding point, all finite
  // and >= 0. Throws loom::Error otherwise.
  LatencyTable(LatencyTableKey key, LatencyGrid grid, std::vector<double> block_ms, std::vector<double> fixed_ms,
               std::string model_kind = "", std::string date = "", int warmup = 0, int repeats = 0);

  // Reads and validates a table file; errors name `path` and the field.
  static LatencyTable load(const std::string& path);
  // Writes the file atomically (core/atomic_file.h).
  void save(const std::string& path) const;

  // Throws loom::Error unless every field of `expected` equals this table's, naming the first field that differs
  // with both values and `source` (the table's path).
  void check_matches(const LatencyTableKey& expected, const std::string& source) const;

  // Multilinear interpolation over the grid. Throws loom::Error naming the axis ("grid.mlp") and its range when
  // a width lies outside it.
  double block_ms(int64_t embedding, const BlockWidths& widths) const;
  double fixed_ms(int64_t embedding) const;
  // Σ over `blocks` of block_ms + fixed_ms.
  double model_ms(int64_t embedding, const std::vector<BlockWidths>& blocks) const;

  const LatencyTableKey& key() const { return key_; }
  const LatencyGrid& grid() const { return grid_; }
  const std::vector<double>& block_values() const { return block_ms_; }
  const std::vector<double>& fixed_values() const { return fixed_ms_; }
  const std::string& model_kind() const { return model_kind_; }
  const std::string& date() const { return date_; }

 private:
  LatencyTableKey key_;
  LatencyGrid grid_;
  std::vector<double> block_ms_, fixed_ms_;
  std::string model_kind_, date_;
  int warmup_ = 0, repeats_ = 0;
};

// The grid for `cfg`: prune.latency_grid's explicit lists where given, else points_per_axis widths from one
// group (prune.*_group, or the model's width when smaller) up to the widest block of the model, multiples of
// the group size, always including the model's own width. Throws naming the field on a bad list.
LatencyGrid latency_grid_for(const config::RunConfig& cfg);
// The key a run of `cfg` on `backend` needs: the compute dtype (trainer/run.h), data.batch_size, the tokens
// per sample (data.seq_len for GPT, patches + class tokens for ViT) and prune.latency_mode.
LatencyTableKey latency_key_for(const config::RunConfig& cfg, const Backend& backend);

// Lowers each value of `block_ms` (row-major over `grid`) to the smallest value at any point at least as wide
// on every axis, and each of `fixed_ms` (one per grid.embedding point) to the smallest at that embedding width
// or a wider one: the largest table below the measured one that never falls when a width grows. Returns how
// many values it lowered. Throws loom::Error when the sizes do not match the grid.
int64_t make_monotone_in_every_width(const LatencyGrid& grid, std::vector<double>& block_ms,
                                     std::vector<double>& fixed_ms);

// Times every grid point of latency_grid_for(cfg) and the fixed parts on `backend` (see the header comment).
// Writes one progress line per embedding point to `progress` when not null. Throws loom::Error for a config
// that cannot be timed (naming the field).
LatencyTable build_latency_table(const config::RunConfig& cfg, Backend& backend, std::ostream* progress = nullptr);

}  // namespace loom
