// Shared by the distributed-training equivalence tests on the CPU (tests/mpi, MPI) and on GPUs (tests/gpu_mpi,
// NCCL): tiny GPT and ViT runs under a layout (data × tensor ranks, sequence parallelism, ZeRO-1, gradient
// accumulation), compared with the same run in one process and the global batch.
//
// Every layout runs through train_on_mesh (the path run_training takes) on a sub-communicator of the job's first
// data × tensor ranks (the other ranks wait), so one mpirun checks layouts of any size dividing it. The reference
// is computed once by world rank 0 (in a directory every rank reads). Compared: the loss of every step and every
// final weight tensor, read back from metrics.jsonl and the final checkpoint (full, layout-independent tensors).
// Every function here is collective over the test world: all ranks call it in the same order.
#pragma once
#include <cstdint>
#include <set>
#include <string>

#include "core/config.pb.h"

namespace loom::testing {

constexpr int kParallelSteps = 20;

struct Layout {
  int data = 1, tensor = 1;
  bool sequence = false, zero1 = false;
  int accum = 1;  // gradient accumulation micro-steps (the reference uses the same)
  int comm_tiles = 4;  // parallel.comm_tiles: tiled here so every layout covers Tiling-AllReduce (default 1)
  std::string name() const;
};

// Where and in what precision runs happen, and how close a layout must stay to the reference.
struct RunSettings {
  std::string device = "cpu";  // train.device: "cpu" (MPI) or "cuda" (NCCL, one GPU per local rank)
  std::string dtype = "f32";   // train.dtype on the GPU
  double loss_rtol = 1e-5;     // |loss - reference| <= loss_rtol · |reference|, every step
  double weight_rtol = 1e-4;   // ‖w - reference‖ <= weight_rtol · ‖reference‖ + 1e-7, every tensor
  double lr = 0.01;            // optim.lr
  // Parameters left out of the weight comparison, by the last two parts of their name (e.g. "qkv.bias").
  std::set<std::string> weight_not_compared;
  std::string tag() const { return device + "_" + dtype; }
};

// The run config of `kind` ("gpt" or "vit") under `layout`, writing to `out_dir`.
config::RunConfig make_parallel_config(const std::string& kind, const Layout& layout, const std::string& out_dir,
                                       const RunSettings& settings);

// A directory every rank shares for the whole test program (removed at exit), with the data files written.
const std::string& parallel_test_dir();

// Runs `layout` for `kind` if the job has enough ranks (GTEST_SKIP otherwise), and checks it against the
// reference on its ranks.
void check_layout(const std::string& kind, const Layout& layout, const RunSettings& settings);
// Trains 10 steps at `first` (stopped by rank 0's observer), resumes at `second` to the last step, and checks
// steps 11.. and the final weights against the reference.
void check_resume(const std::string& kind, const Layout& first, const Layout& second, const RunSettings& settings);

}  // namespace loom::testing
