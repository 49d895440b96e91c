#include "trainer/run.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <ostream>

#include "core/checkpoint.h"
#include "core/config.h"
#include "core/run_dir_lock.h"
#include "core/safetensors.h"
#include "core/tokenizer.h"
#include "parallel/environment.h"
#include "parallel/mesh.h"
#include "parallel/mpi_communicator.h"
#if LOOM_HAVE_NCCL
#include "parallel/nccl_communicator.h"
#endif
#include "trainer/gradient_sync.h"
#include "trainer/image_source.h"
#include "trainer/kernel_paths.h"
#include "trainer/models/gpt.h"
#include "trainer/models/interop/import.h"
#include "trainer/models/vit.h"
#include "trainer/pruning/distillation.h"
#include "trainer/pruning/engine.h"
#include "trainer/pruning/report.h"
#include "trainer/sampler.h"
#include "trainer/shared_out_dir.h"
#include "trainer/text_source.h"

namespace loom {

Device select_device(const config::TrainConfig& t) {
  const std::string& d = t.device();
  if (d == "cpu") return Device::cpu();
  if (d == "cuda") {
    if (!cuda_available()) fail("train.device is \"cuda\" but no CUDA GPU is usable in this build/machine");
    return Device::cuda(0);
  }
  if (d == "auto") return cuda_available() ? Device::cuda(0) : Device::cpu();
  fail("train.device: expected auto, cpu or cuda, got \"", d, "\"");
}

DType select_compute_dtype(Device device, const config::TrainConfig& t) {
  // Checked on the CPU too (where the value is not used), so a typo fails on every machine.
  DType requested;
  if (t.dtype() == "bf16")
    requested = DType::BF16;
  else if (t.dtype() == "f16")
    requested = DType::F16;
  else if (t.dtype() == "f32")
    requested = DType::F32;
  else
    fail("train.dtype: expected bf16, f16 or f32, got \"", t.dtype(), "\"");
  return device.is_cpu() ? DType::F32 : requested;
}

std::string resume_checkpoint_dir(const config::RunConfig& cfg) {
  const auto& t = cfg.train();
  if (!t.has_resume() || t.resume().empty()) return "";
  return t.resume() == "latest" ? latest_checkpoint(t.out_dir()) : t.resume();
}

ModelShape resolve_model_shape(const config::RunConfig& cfg) {
  const auto& m = cfg.model();
  LOOM_CHECK(m.kind() == "gpt" || m.kind() == "vit", "model.kind: expected \"gpt\" or \"vit\", got \"", m.kind(), "\"");
  const std::string resume = resume_checkpoint_dir(cfg);
  if (!resume.empty()) {
    const std::string file = resume + "/model.json";
    if (std::filesystem::is_regular_file(file)) {
      std::ifstream in(file);
      nlohmann::json json;
      try {
        json = nlohmann::json::parse(in);
      } catch (const nlohmann::json::exception& e) {
        fail(file, ": not valid JSON: ", e.what());
      }
      return reconcile_model_shape(m, model_shape_from_json(json, file), file);
    }
  } else if (m.has_init_from() && !m.init_from().empty()) {
    const safetensors::File file = safetensors::read(m.init_from());
    if (const auto saved = shape_in_file(file, m.init_from())) return reconcile_model_shape(m, *saved, m.init_from());
  }
  return model_shape_from_config(m);
}

void load_initial_weights(const std::string& path, Model& model, const TensorParallelContext* tp) {
  const NamedTensors tensors = to_own_layout(model.shape(), safetensors::read(path).tensors);
  if (tensor_size(tp) == 1) {
    model.params().load_named(tensors, path);
    return;
  }
  // Full tensors in the file; this tensor rank keeps its shard.
  ParameterStore& params = model.params();
  params.master().copy_from(arena_from_full_tensors(params.layout(), tensors, tp, "", params.master().dtype(), path));
  params.sync_compute_from_master();
}

std::unique_ptr<Model> build_model_of_shape(const ModelShape& shape, const config::RunConfig& cfg, Backend& backend,
                                            DType master_dtype, DType compute_dtype, const TensorParallelContext* tp) {
  if (shape.is_gpt())
    return std::make_unique<GptModel>(shape, backend, master_dtype, compute_dtype, cfg.data().seq_len(),
                                      cfg.train().seed(), tp);
  return std::make_unique<VitModel>(shape, backend, master_dtype, compute_dtype, cfg.train().seed(),
                                    cfg.optim().label_smoothing(), tp);
}

std::unique_ptr<Model> build_model(const config::RunConfig& cfg, Backend& backend, DType compute_dtype,
                                   const TensorParallelContext* tp) {
  const auto& m = cfg.model();
  auto model = build_model_of_shape(resolve_model_shape(cfg), cfg, backend, DType::F32, compute_dtype, tp);
  // A resumed run loads its weights from the checkpoint (Trainer::resume_from); init_from is for fresh runs.
  if (m.has_init_from() && !m.init_from().empty() && resume_checkpoint_dir(cfg).empty())
    load_initial_weights(m.init_from(), *model, tp);
  return model;
}

std::unique_ptr<DataSource> build_data_source(const config::RunConfig& cfg, int rank, int world_size) {
  if (cfg.model().kind() == "gpt") return std::make_unique<TextSource>(cfg, rank, world_size);
  return std::make_unique<ImageSource>(cfg, rank, world_size);
}

namespace {

// True when `dir` (a checkpoint) holds the dense model a pruning run produced (state.json "prune".pruned):
// resuming there fine-tunes, it does not prune again.
bool checkpoint_is_pruned(const std::string& dir) {
  std::ifstream in(dir + "/state.json");
  if (!in) fail(dir, "/state.json: cannot read");
  nlohmann::json state;
  try {
    state = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    fail(dir, "/state.json: not valid JSON: ", e.what());
  }
  return state.contains("prune") && state["prune"].value("pruned", false);
}

// The end of a pruning run: <out_dir>/pruning.svg from the run's metrics.jsonl (the predicted latency each
// step recorded while pruning, the final one after the shrink, and the loss of every step).
void write_pruning_picture(const std::string& out_dir, const ModelShape& from, const ModelShape& to,
                           double final_ms, std::ostream& log) {
  std::map<int64_t, PruningPoint> points;  // the last record of each step (a resumed run repeats some)
  std::ifstream in(out_dir + "/metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    const nlohmann::json rec = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (!rec.is_object() || !rec.contains("step") || !rec.contains("loss")) continue;
    PruningPoint p{rec["step"].get<int64_t>(), final_ms, rec["loss"].get<double>()};
    if (rec.contains("prune")) p.predicted_ms = rec["prune"].value("predicted_ms", final_ms);
    points[p.step] = p;
  }
  std::vector<PruningPoint> history;
  for (const auto& [step, p] : points) history.push_back(p);
  const std::string path = out_dir + "/pruning.svg";
  std::ofstream out(path);
  out << pruning_svg(from, to, history);
  if (!out) fail(path, ": cannot write");
  log << "pruning: widths per block and predicted latency vs loss in " << path << std::endl;
}

// Discards what non-writing ranks would log (world rank 0 speaks for the job).
class NullBuffer final : public std::streambuf {
 protected:
  int overflow(int c) override { return c; }
};

// What one phase of a run (training or pruning, then a pruning run's fine-tuning) leaves for the next.
struct PhaseResult {
  TrainResult result;
  ModelShape original, pruned;  // a pruning phase that reached its target: the widths before and after
  double final_ms = 0;          // and the pruned model's predicted latency
};

// One phase on this rank: device, model (and teacher), data, trainer, then training. Everything it builds is
// released when it returns, so a fine-tuning phase never holds the pruning phase's model beside its own.
PhaseResult train_phase(const config::RunConfig& cfg_in, std::ostream& log,
                        const std::vector<TrainingObserver*>& observers, ProcessMesh* mesh) {
  const auto& t = cfg_in.train();
  // On a GPU mesh each rank runs on its communicator's GPU (one per local rank).
  const Device device = mesh && mesh->world().device().is_cuda() ? mesh->world().device() : select_device(t);
  auto backend = make_backend(device);
  backend->set_deterministic(t.deterministic());
  if (mesh)
    LOOM_CHECK(mesh->world().device() == backend->device() && t.device() != (device.is_cpu() ? "cuda" : "cpu"),
               "train.device is \"", t.device(), "\" but the ", mesh->world().backend_name(), " communicator works on ",
               mesh->world().device().str(), " (the CPU path uses MPI, GPUs use NCCL)");
  const DType compute = select_compute_dtype(device, t);
  CommTimeline timeline(*backend);
  TensorParallelContext tp;
  if (mesh) {
    tp.group = &mesh->tensor_group();
    tp.sequence = cfg_in.parallel().sequence();
    tp.timeline = &timeline;
    LOOM_CHECK(cfg_in.parallel().comm_tiles() >= 1, "parallel.comm_tiles must be at least 1, got ",
               cfg_in.parallel().comm_tiles());
    tp.tiles = cfg_in.parallel().comm_tiles();
  }
  // A pruning run (prune:) starts from a trained checkpoint, unless it resumes one: checked before any work.
  const std::string resume_dir = resume_checkpoint_dir(cfg_in);
  const bool prunes = cfg_in.has_prune() && (resume_dir.empty() || !checkpoint_is_pruned(resume_dir));
  if (prunes) {
    LOOM_CHECK(!resume_dir.empty() || (cfg_in.model().has_init_from() && !cfg_in.model().init_from().empty()),
               "prune: a pruning run starts from a trained model: set model.init_from to its checkpoint's "
               "model.safetensors");
    LOOM_CHECK(cfg_in.prune().has_latency_table() && !cfg_in.prune().latency_table().empty(),
               "prune.latency_table: a pruning run needs the latency table of its device (write it with "
               "`loom latency-table CONFIG --out table.json`)");
  }
  auto model = build_model(cfg_in, *backend, compute, mesh ? &tp : nullptr);
  // From here on the config's model section spells out the model's shape (which a checkpoint may have filled
  // in): the data sources read the vocabulary or image geometry from it, and checkpoints record it.
  config::RunConfig cfg = cfg_in;
  const std::string init_from = cfg.model().init_from();
  *cfg.mutable_model() = model_config_of_shape(model->shape());
  if (!init_from.empty()) cfg.mutable_model()->set_init_from(init_from);
  auto data = build_data_source(cfg, mesh ? mesh->data_index() : 0, mesh ? mesh->data_size() : 1);
  const SampleFlops flops = model->flops_per_sample();
  log << "loom: " << cfg.model().kind() << " model, " << model->params().layout().total() << " parameters"
      << (tp.active() ? " per tensor rank" : "") << ", " << flops.model / model->tokens_per_sample()
      << " model FLOPs/token, on " << backend->name() << " (" << dtype_name(compute) << ")";
  if (mesh)
    log << ", " << mesh->data_size() << " data x " << mesh->tensor_size() << " tensor ranks"
        << (tp.sequence_parallel() ? " with sequence parallelism" : "") << (cfg.parallel().zero1() ? ", ZeRO-1" : "");
  log << std::endl;
  log_slow_paths(model_slow_paths(model->shape(), cfg.data().batch_size(), cfg.data().seq_len(),
                                  mesh ? mesh->tensor_size() : 1, compute,
                                  [&](const BlockKernelShape& s, DType d) { return backend->slow_paths(s, d); }),
                 log);

  std::unique_ptr<PruningEngine> pruning;
  if (prunes) {
    const std::string& table = cfg.prune().latency_table();
    pruning = std::make_unique<PruningEngine>(cfg, *model, LatencyTable::load(table), table);
    log << "pruning: predicted " << pruning->original_ms() << " ms (latency table " << table << "), target "
        << pruning->final_target_ms() << " ms" << std::endl;
  }
  // Distillation from model.init_from's model while pruning and fine-tuning (prune.distill_weight).
  const std::unique_ptr<Distiller> distiller = make_distiller(cfg_in, *backend, compute);
  if (distiller)
    log << "distillation: teacher " << init_from << " (" << distiller->teacher().params().layout().total()
        << " parameters, forward only), temperature " << distiller->temperature() << ", weight "
        << distiller->weight() << std::endl;
  Trainer trainer(cfg, *model, *data, log, TrainerParallelism{mesh, mesh ? &tp : nullptr});
  if (pruning) trainer.set_pruning(pruning.get());
  if (distiller) trainer.set_distiller(distiller.get());
  for (TrainingObserver* o : observers) trainer.add_observer(o);
  if (t.has_resume() && !t.resume().empty()) {
    const std::string dir = resume_checkpoint_dir(cfg);
    if (!dir.empty())
      trainer.resume_from(dir);
    else
      log << "no checkpoint in " << t.out_dir() << " yet: starting from scratch" << std::endl;
  }

  std::unique_ptr<Tokenizer> tokenizer;
  if (model->shape().is_gpt() && t.sample_every() > 0) {
    // Every rank samples (the forward is collective over the tensor group); world rank 0 prints.
    tokenizer = std::make_unique<Tokenizer>(Tokenizer::from_dir(gpt2_vocab_dir(cfg.data().tokenizer())));
    trainer.set_sampler([&](int64_t step) {
      PhiloxStream rng(t.seed(), 0x5a3d1e00ull + static_cast<uint64_t>(step));
      SampleOptions opts;
      opts.max_new_tokens = t.sample_tokens();
      opts.temperature = 1.0;
      opts.top_k = 40;
      const auto ids = sample_tokens(*model, {tokenizer->eot_token()}, opts, rng);
      log << "sample at step " << step << ": " << tokenizer->decode(ids) << std::endl;
    });
  }
  PhaseResult phase;
  phase.result = trainer.run();
  if (pruning && phase.result.pruned_checkpoint.empty())
    log << "pruning: train.max_steps ended the run before the latency target (predicted " << pruning->predicted_ms()
        << " ms, target " << pruning->final_target_ms() << " ms); the last checkpoint holds the masked model"
        << std::endl;
  if (!phase.result.pruned_checkpoint.empty()) {
    phase.original = model->shape();
    phase.pruned = pruning->pruned_shape();
    phase.final_ms = pruning->predicted_ms();
  }
  return phase;
}

}  // namespace

TrainResult train_on_mesh(const config::RunConfig& cfg_in, std::ostream& rank0_log,
                          const std::vector<TrainingObserver*>& observers, ProcessMesh* mesh) {
  const auto& t = cfg_in.train();
  const bool writer = !mesh || mesh->world().rank() == 0;
  NullBuffer null_buffer;
  std::ostream null_log(&null_buffer);
  std::ostream& log = writer ? rank0_log : null_log;
  // World rank 0 holds out_dir's lock for the whole run (no second run writes into it), and under the lock
  // removes what interrupted checkpoint writes left behind.
  std::optional<RunDirectoryLock> out_dir_lock;
  if (writer) {
    out_dir_lock.emplace(t.out_dir());
    if (const int stale = remove_stale_checkpoint_temporaries(*out_dir_lock))
      log << "removed " << stale << " stale temporary checkpoint folder(s) from " << t.out_dir() << std::endl;
    std::ofstream out(t.out_dir() + "/config.yaml");
    out << run_config_to_yaml(cfg_in);
    if (!out) fail(t.out_dir(), "/config.yaml: cannot write");
  }
  if (mesh) mesh->world().barrier();  // out_dir exists for every rank
  const PhaseResult pruning = train_phase(cfg_in, log, observers, mesh);
  if (pruning.result.pruned_checkpoint.empty()) return pruning.result;
  log << width_table(pruning.original, pruning.pruned) << std::flush;
  auto picture = [&] {
    if (writer) write_pruning_picture(t.out_dir(), pruning.original, pruning.pruned, pruning.final_ms, log);
  };
  if (pruning.result.steps_done >= t.max_steps()) {
    picture();
    return pruning.result;
  }
  // Fine-tuning: the rest of train.max_steps (learning-rate schedule continued) on the dense pruned model,
  // resumed from its checkpoint exactly as `train.resume` would (the teacher, if any, is built again).
  config::RunConfig finetune = cfg_in;
  finetune.mutable_train()->set_resume(pruning.result.pruned_checkpoint);
  log << "fine-tuning the pruned model from step " << pruning.result.steps_done << " to " << t.max_steps()
      << std::endl;
  TrainResult tuned = train_phase(finetune, log, observers, mesh).result;
  tuned.pruned_checkpoint = pruning.result.pruned_checkpoint;
  picture();
  return tuned;
}

TrainResult run_training(const config::RunConfig& cfg, std::ostream& log,
                         const std::vector<TrainingObserver*>& observers) {
  const auto& par = cfg.parallel();
  const ProcessEnvironment env = detect_process_environment();
  const int64_t ranks = static_cast<int64_t>(par.data()) * par.tensor();
  if (env.world_size == 1 && ranks == 1 && env.launcher == "none") return train_on_mesh(cfg, log, observers, nullptr);

  init_mpi();
  auto world = MpiCommunicator::world();
  LOOM_CHECK(par.data() >= 1 && par.tensor() >= 1 && ranks == world->size(), "parallel.data (", par.data(),
             ") x parallel.tensor (", par.tensor(), ") must equal the number of processes (", world->size(),
             "; start them with launch/loom-mpirun --np ", ranks, ")");
  if (world->size() == 1) return train_on_mesh(cfg, log, observers, nullptr);
  try {
    // Checkpoints go to rank 0's out_dir: every host must see that folder (an error now, not at a resume).
    check_out_dir_shared(cfg.train().out_dir(), *world);
    // GPUs communicate over NCCL (one GPU per local rank), the CPU backend over MPI.
    std::unique_ptr<Communicator> gpu_world;
    if (!select_device(cfg.train()).is_cpu()) {
#if LOOM_HAVE_NCCL
      gpu_world = NcclCommunicator::create(*world, env.local_rank);
#else
      fail("train.device selects a GPU for ", world->size(), " processes but this build has no NCCL");
#endif
    }
    ProcessMesh mesh(gpu_world ? *gpu_world : static_cast<Communicator&>(*world), par.data(), par.tensor());
    return train_on_mesh(cfg, log, observers, &mesh);
  } catch (const std::exception& e) {
    // The other ranks may be blocked in a collective this rank will never join: end the whole job.
    std::fprintf(stderr, "loom: rank %d of %d failed: %s\n", world->rank(), world->size(), e.what());
    std::fflush(stderr);
    abort_all_ranks(1);
  }
}

}  // namespace loom
