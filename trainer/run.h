// Building a training run from its configuration: device, backend, model, data, trainer; then training.
// This is what `loom train` does, exposed so that tests and the controller's workers run the same path.
#pragma once
#include <functional>
#include <iosfwd>
#include <memory>
#include <string>
#include <vector>

#include "core/config.pb.h"
#include "trainer/data_source.h"
#include "parallel/mesh.h"
#include "parallel/tensor_parallel.h"
#include "trainer/models/model.h"
#include "trainer/trainer.h"

namespace loom {

// train.device: "cpu", "cuda" (throws when no GPU is usable) or "auto" (CUDA when available).
Device select_device(const config::TrainConfig& train);
// The activation/compute dtype: f32 on the CPU, train.dtype (bf16, f16 or f32) on CUDA. Throws for any other
// train.dtype on every device.
DType select_compute_dtype(Device device, const config::TrainConfig& train);
// The residual stream's dtype for activations of `compute`: `compute` for train.residual_dtype "compute" (and
// wherever compute is f32, e.g. on the CPU), f32 for "f32". Throws for any other value on every device.
DType select_residual_dtype(DType compute, const config::TrainConfig& train);
// Whether train.recompute asks for the GELU output to be recomputed ("gelu") or kept ("none"); throws for any
// other value.
bool select_recompute_gelu(const config::TrainConfig& train);

// The GEMM algorithm choice for the backend (Backend::set_gemm_algorithm): train.gemm_algorithm, except
// Heuristic under tensor parallelism (parallel.tensor > 1), whose ranks must compute replicated layers (ViT's
// head) bit-identically and could time different winners. Throws for an unknown value on every device.
GemmAlgorithm select_gemm_algorithm(const config::RunConfig& cfg);
// The backend a run computes with on `device`: make_backend with train.deterministic and the GEMM algorithm
// choice (select_gemm_algorithm) applied. Everything that measures or trains as a run does builds it here.
std::unique_ptr<Backend> make_run_backend(Device device, const config::RunConfig& cfg);

// The checkpoint directory train.resume names ("latest": the newest in train.out_dir), or "" for none.
std::string resume_checkpoint_dir(const config::RunConfig& cfg);

// The shape of the model a run builds: the resumed checkpoint's model.json, else the "loom_model" metadata of
// model.init_from's file, reconciled with the config (reconcile_model_shape: fields the config leaves out come
// from the checkpoint, disagreeing ones are an error naming both values); the config alone when neither has
// a shape (a fresh run, Hugging Face or timm weights, checkpoints older than model.json).
ModelShape resolve_model_shape(const config::RunConfig& cfg);

// A freshly initialised model of `shape` (weights from train.seed; GPT runs data.seq_len tokens, ViT uses
// optim.label_smoothing). With a tensor-parallel context (not owned, may be null) it holds this rank's shard.
std::unique_ptr<Model> build_model_of_shape(const ModelShape& shape, const config::RunConfig& cfg, Backend& backend,
                                            DType master_dtype, DType compute_dtype,
                                            const TensorParallelContext* tp = nullptr);

// Loads the weights of `path` (our safetensors layout, or Hugging Face GPT-2 / timm names, detected from the
// tensor names and shapes) into `model`, this tensor rank's shard with a context (not owned, may be null).
// Throws loom::Error naming the file and tensor on a missing, extra or misshapen tensor.
void load_initial_weights(const std::string& path, Model& model, const TensorParallelContext* tp = nullptr);

// The model of resolve_model_shape(cfg), initialised from train.seed, then (unless the run resumes) from
// model.init_from when set (our safetensors layout, or Hugging Face GPT-2 / timm names, detected from the
// tensor names and shapes). With a tensor-parallel context (not owned, may be null) the model holds this
// rank's shard. Its residual stream has select_residual_dtype(compute_dtype, cfg.train()), and it recomputes the
// GELU output when select_recompute_gelu(cfg.train()).
std::unique_ptr<Model> build_model(const config::RunConfig& cfg, Backend& backend, DType compute_dtype,
                                   const TensorParallelContext* tp = nullptr);
std::unique_ptr<DataSource> build_data_source(const config::RunConfig& cfg, int rank, int world_size);

// Runs `step` on every rank of `world` and agrees on its outcome: when it threw on any rank, every rank throws
// JobWideError with the message of the lowest rank that failed, so a problem several ranks meet alike is
// reported once. Collective over `world`; `step` must not communicate.
void agree_on_failure(Communicator& world, const std::function<void()>& step);

// Trains as configured. Multi-process when the process was started by a launcher (mpirun / srun: see
// parallel/environment.h) or parallel.data × parallel.tensor > 1: MPI is initialised here, the ranks form a
// data × tensor mesh (their number must equal the product), every rank trains its share, and world rank 0
// logs and writes files. Errors the ranks meet alike (set-up problems they agree on, non-finite losses) are
// thrown as JobWideError on every rank, for the caller to print once; any other error on a rank is printed
// with the rank and ends the whole job (abort_all_ranks), so no rank hangs in a collective. World rank 0 locks out_dir for the run
// (core/run_dir_lock.h: a second run into the same folder fails at once) and removes stale temporary
// checkpoint folders there. Single process: writes out_dir/config.yaml, resumes when train.resume is set ("latest" resumes from
// the newest checkpoint in out_dir if there is one), logs to `log`, and returns the result. `observers` (not
// owned) see every step and may stop the run or ask for checkpoints (e.g. the controller's worker client).
TrainResult run_training(const config::RunConfig& cfg, std::ostream& log,
                         const std::vector<TrainingObserver*>& observers = {});

// run_training's work on one rank of `mesh` (not owned; null: a single process), without the MPI set-up and
// without ending the job on an error (it throws, as a single process does). Collective over mesh's world: the
// MPI tests run several layouts in one job through it, each on a sub-communicator.
TrainResult train_on_mesh(const config::RunConfig& cfg, std::ostream& log,
                          const std::vector<TrainingObserver*>& observers, ProcessMesh* mesh);

}  // namespace loom
