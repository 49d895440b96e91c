#include "trainer/run.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <ostream>

#include "core/allocator.h"
#include "core/checkpoint.h"
#include "core/config.h"
#include "core/run_dir_lock.h"
#include "core/safetensors.h"
#include "core/tokenizer.h"
#include "parallel/environment.h"
#include "parallel/host_collectives.h"
#include "parallel/mesh.h"
#include "parallel/mpi_communicator.h"
#if LOOM_HAVE_NCCL
#include "parallel/nccl_communicator.h"
#endif
#include "trainer/gradient_sync.h"
#include "trainer/image_source.h"
#include "trainer/kernel_paths.h"
#include "trainer/memory_estimate.h"
#include "trainer/models/gpt.h"
#include "trainer/models/interop/import.h"
#include "trainer/models/vit.h"
#include "trainer/pruning/distillation.h"
#include "trainer/pruning/engine.h"
#include "trainer/pruning/report.h"
#include "trainer/run_folder.h"
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

DType select_residual_dtype(DType compute, const config::TrainConfig& t) {
  if (t.residual_dtype() != "compute" && t.residual_dtype() != "f32")
    fail("train.residual_dtype: expected compute or f32, got \"", t.residual_dtype(), "\"");
  return t.residual_dtype() == "f32" ? DType::F32 : compute;
}

bool select_recompute_gelu(const config::TrainConfig& t) {
  if (t.recompute() != "none" && t.recompute() != "gelu")
    fail("train.recompute: expected none or gelu, got \"", t.recompute(), "\"");
  return t.recompute() == "gelu";
}

GemmAlgorithm select_gemm_algorithm(const config::RunConfig& cfg) {
  const std::string& choice = cfg.train().gemm_algorithm();
  if (choice != "heuristic" && choice != "timed")
    fail("train.gemm_algorithm: expected heuristic or timed, got \"", choice, "\"");
  return choice == "timed" && cfg.parallel().tensor() == 1 ? GemmAlgorithm::Timed : GemmAlgorithm::Heuristic;
}

std::unique_ptr<Backend> make_run_backend(Device device, const config::RunConfig& cfg) {
  auto backend = make_backend(device);
  backend->set_deterministic(cfg.train().deterministic());
  backend->set_gemm_algorithm(select_gemm_algorithm(cfg));
  return backend;
}

std::string resume_checkpoint_dir(const config::RunConfig& cfg) {
  const auto& t = cfg.train();
  if (!t.has_resume() || t.resume().empty()) return "";
  return t.resume() == "latest" ? latest_checkpoint(t.out_dir()) : t.resume();
}

ModelShape resolve_model_shape(const config::RunConfig& cfg) {
  const auto& m = cfg.model();
  if (m.kind() != "gpt" && m.kind() != "vit") fail("model.kind: expected \"gpt\" or \"vit\", got \"", m.kind(), "\"");
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
  if (const DType residual = select_residual_dtype(compute_dtype, cfg.train()); residual != compute_dtype)
    model->set_residual_dtype(residual);
  if (select_recompute_gelu(cfg.train())) model->set_recompute_gelu(true);
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

// `step` on this rank; with a mesh, the ranks agree on its failures (agree_on_failure).
void on_every_rank(ProcessMesh* mesh, const std::function<void()>& step) {
  if (mesh)
    agree_on_failure(mesh->world(), step);
  else
    step();
}

// Discards what non-writing ranks would log (world rank 0 speaks for the job).
class NullBuffer final : public std::streambuf {
 protected:
  int overflow(int c) override { return c; }
};

}  // namespace

void agree_on_failure(Communicator& world, const std::function<void()>& step) {
  std::string error;
  try {
    step();
  } catch (const std::exception& e) {
    error = e.what();
  }
  // Which ranks failed, then the lowest one's message (its bytes as floats: host collectives carry numbers).
  Tensor failed = Tensor::zeros({world.size()}, DType::F64);
  Tensor mine = Tensor::from_vector({error.empty() ? 0.f : 1.f}, {1}, DType::F64);
  all_gather_host(world, failed, mine);
  int first = -1;
  for (int r = world.size() - 1; r >= 0; --r)
    if (failed.item(r) != 0) first = r;
  if (first < 0) return;
  constexpr size_t kMaxMessage = 4096;
  Tensor bytes = Tensor::zeros({static_cast<int64_t>(kMaxMessage) + 1}, DType::F32);
  if (world.rank() == first) {
    const size_t length = std::min(error.size(), kMaxMessage);
    bytes.data<float>()[0] = static_cast<float>(length);
    for (size_t i = 0; i < length; ++i) bytes.data<float>()[i + 1] = static_cast<unsigned char>(error[i]);
  }
  broadcast_host(world, bytes, first);
  std::string message(static_cast<size_t>(bytes.item(0)), ' ');
  for (size_t i = 0; i < message.size(); ++i) message[i] = static_cast<char>(static_cast<int>(bytes.item(i + 1)));
  throw JobWideError(message);
}

namespace {

// train_on_mesh's work; `held` is out_dir's lock when this process holds it already (a pruning run's
// fine-tuning continues in the folder its pruning locked), else null.
TrainResult train_in_folder(const config::RunConfig& cfg_in, std::ostream& rank0_log,
                            const std::vector<TrainingObserver*>& observers, ProcessMesh* mesh,
                            const RunDirectoryLock* held) {
  const bool fine_tuning = held != nullptr;  // only a pruning run's fine-tuning comes with the lock held
  const auto& t = cfg_in.train();
  const bool writer = !mesh || mesh->world().rank() == 0;
  NullBuffer null_buffer;
  std::ostream null_log(&null_buffer);
  std::ostream& log = writer ? rank0_log : null_log;
  // World rank 0 holds out_dir's lock for the whole run (no second run writes into it), and under the lock
  // removes what interrupted checkpoint writes left behind. A new run does not take over a folder holding
  // another run unless told to (trainer/run_folder.h). The other ranks wait: out_dir exists for all after it.
  std::optional<RunDirectoryLock> out_dir_lock;
  const bool resumes = t.has_resume() && !t.resume().empty();
  on_every_rank(mesh, [&] {
    if (!writer) return;
    if (!held) held = &out_dir_lock.emplace(t.out_dir());
    if (const int stale = remove_stale_checkpoint_temporaries(*held))
      log << "removed " << stale << " stale temporary checkpoint folder(s) from " << t.out_dir() << std::endl;
    if (!resumes) take_over_run_folder(*held, t.overwrite(), log);
    if (const std::string dir = resumes ? resume_checkpoint_dir(cfg_in) : ""; !dir.empty())
      remove_later_checkpoints(*held, checkpoint_step(dir), t.overwrite(), log);
    std::ofstream out(t.out_dir() + "/config.yaml");
    out << run_config_to_yaml(cfg_in);
    if (!out) fail(t.out_dir(), "/config.yaml: cannot write");
  });
  // On a GPU mesh each rank runs on its communicator's GPU (one per local rank).
  const Device device = mesh && mesh->world().device().is_cuda() ? mesh->world().device() : select_device(t);
  auto backend = make_run_backend(device, cfg_in);
  const DType compute = select_compute_dtype(device, t);
  CommTimeline timeline(*backend);
  TensorParallelContext tp;
  if (mesh) {
    tp.group = &mesh->tensor_group();
    tp.sequence = cfg_in.parallel().sequence();
    tp.timeline = &timeline;
    tp.tiles = cfg_in.parallel().comm_tiles();
  }
  // Model, data, trainer and resume: the ranks agree on their errors, so a problem every rank meets (a missing
  // file, widths that do not divide) is reported once.
  config::RunConfig cfg = cfg_in;
  std::unique_ptr<Model> model;
  std::unique_ptr<DataSource> data;
  std::unique_ptr<PruningEngine> pruning;
  std::unique_ptr<Distiller> distiller;
  std::unique_ptr<Trainer> trainer;
  on_every_rank(mesh, [&] {
    if (mesh && (mesh->world().device() != backend->device() || t.device() == (device.is_cpu() ? "cuda" : "cpu")))
      fail("train.device is \"", t.device(), "\" but the ", mesh->world().backend_name(), " communicator works on ",
           mesh->world().device().str(), " (the CPU path uses MPI, GPUs use NCCL)");
    // A pruning run (prune:) starts from a trained checkpoint, unless it resumes one: checked before any work.
    const std::string resume_dir = resume_checkpoint_dir(cfg_in);
    const bool prunes = cfg_in.has_prune() && (resume_dir.empty() || !checkpoint_is_pruned(resume_dir));
    if (prunes) {
      if (resume_dir.empty() && cfg_in.model().init_from().empty())
        fail("prune: a pruning run starts from a trained model: set model.init_from to its checkpoint's "
             "model.safetensors");
      if (cfg_in.prune().latency_table().empty())
        fail("prune.latency_table: a pruning run needs the latency table of its device (write it with "
             "`loom latency-table CONFIG --out table.json`)");
    }
    // Before anything is allocated: what the run will need, against what the device has.
    const MemoryEstimate memory = estimate_training_memory(resolve_model_shape(cfg_in), cfg_in, *backend, compute);
    const int64_t available = allocator_for(device).available_bytes();
    log << "memory: about " << memory.describe() << " per rank; "
        << (available < 0 ? std::string("unknown") : format_bytes(static_cast<double>(available))) << " free on "
        << device.str() << std::endl;
    check_memory_fits(memory, available, device.str());
    model = build_model(cfg_in, *backend, compute, mesh ? &tp : nullptr);
    // From here on the config's model section spells out the model's shape (which a checkpoint may have
    // filled in): the data sources read the vocabulary or image geometry from it, and checkpoints record it.
    const std::string init_from = cfg.model().init_from();
    *cfg.mutable_model() = model_config_of_shape(model->shape());
    if (!init_from.empty()) cfg.mutable_model()->set_init_from(init_from);
    data = build_data_source(cfg, mesh ? mesh->data_index() : 0, mesh ? mesh->data_size() : 1);
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
    if (prunes) {
      const std::string& table = cfg.prune().latency_table();
      pruning = std::make_unique<PruningEngine>(cfg, *model, LatencyTable::load(table), table);
      log << "pruning: predicted " << pruning->original_ms() << " ms (latency table " << table << "), target "
          << pruning->final_target_ms() << " ms" << std::endl;
    }
    // Distillation from model.init_from's model while pruning and fine-tuning (prune.distill_weight).
    distiller = make_distiller(cfg_in, *backend, compute);
    if (distiller)
      log << "distillation: teacher " << init_from << " (" << distiller->teacher().params().layout().total()
          << " parameters, forward only), temperature " << distiller->temperature() << ", weight "
          << distiller->weight() << std::endl;
    trainer = std::make_unique<Trainer>(cfg, *model, *data, log, TrainerParallelism{mesh, mesh ? &tp : nullptr});
    if (pruning) trainer->set_pruning(pruning.get());
    if (distiller) trainer->set_distiller(distiller.get());
    for (TrainingObserver* o : observers) trainer->add_observer(o);
    if (resumes) {
      const std::string dir = resume_checkpoint_dir(cfg);
      if (!dir.empty()) {
        trainer->resume_from(dir, fine_tuning ? "fine-tuning" : "resumed");
      } else {
        log << "no checkpoint in " << t.out_dir() << " yet: starting from scratch" << std::endl;
        if (writer) rewind_run_outputs(t.out_dir(), 0);  // what an attempt without a checkpoint logged goes
      }
    }
  });

  std::unique_ptr<Tokenizer> tokenizer;
  if (model->shape().is_gpt() && t.sample_every() > 0) {
    // Every rank samples (the forward is collective over the tensor group); world rank 0 prints.
    tokenizer = std::make_unique<Tokenizer>(Tokenizer::from_dir(gpt2_vocab_dir(cfg.data().tokenizer())));
    trainer->set_sampler([&](int64_t step) {
      PhiloxStream rng(t.seed(), 0x5a3d1e00ull + static_cast<uint64_t>(step));
      SampleOptions opts;
      opts.max_new_tokens = t.sample_tokens();
      opts.temperature = 1.0;
      opts.top_k = 40;
      const auto ids = sample_tokens(*model, {tokenizer->eot_token()}, opts, rng);
      trainer->log() << "sample at step " << step << ": " << tokenizer->decode(ids) << std::endl;
    });
  }
  TrainResult result = trainer->run();
  if (pruning && result.pruned_checkpoint.empty())
    log << "pruning: train.max_steps ended the run before the latency target (predicted " << pruning->predicted_ms()
        << " ms, target " << pruning->final_target_ms() << " ms); the last checkpoint holds the masked model"
        << std::endl;
  if (result.pruned_checkpoint.empty()) return result;
  log << width_table(model->shape(), pruning->pruned_shape()) << std::flush;
  const ModelShape original = model->shape(), pruned_shape = pruning->pruned_shape();
  const double final_ms = pruning->predicted_ms();
  auto picture = [&] {
    if (writer) write_pruning_picture(t.out_dir(), original, pruned_shape, final_ms, log);
  };
  if (result.steps_done >= t.max_steps()) {
    picture();
    return result;
  }
  // Fine-tuning: the rest of train.max_steps (learning-rate schedule continued) on the dense pruned model,
  // resumed from its checkpoint exactly as `train.resume` would (the teacher, if any, is built again). The
  // unpruned model, its teacher and their activations are released first.
  trainer.reset();
  distiller.reset();
  pruning.reset();
  data.reset();
  model.reset();
  config::RunConfig finetune = cfg_in;
  finetune.mutable_train()->set_resume(result.pruned_checkpoint);
  log << "fine-tuning the pruned model from step " << result.steps_done << " to " << t.max_steps() << std::endl;
  TrainResult tuned = train_in_folder(finetune, rank0_log, observers, mesh, held);
  tuned.pruned_checkpoint = result.pruned_checkpoint;
  picture();
  return tuned;
}

}  // namespace

TrainResult train_on_mesh(const config::RunConfig& cfg, std::ostream& log,
                          const std::vector<TrainingObserver*>& observers, ProcessMesh* mesh) {
  return train_in_folder(cfg, log, observers, mesh, nullptr);
}

TrainResult run_training(const config::RunConfig& cfg, std::ostream& log,
                         const std::vector<TrainingObserver*>& observers) {
  const auto& par = cfg.parallel();
  const ProcessEnvironment env = detect_process_environment();
  const int64_t ranks = static_cast<int64_t>(par.data()) * par.tensor();
  if (env.world_size == 1 && ranks == 1 && env.launcher == "none") return train_on_mesh(cfg, log, observers, nullptr);

  init_mpi();
  auto world = MpiCommunicator::world();
  if (ranks != world->size())
    fail("parallel.data (", par.data(), ") x parallel.tensor (", par.tensor(), ") must equal the number of processes (",
         world->size(), "; start them with launch/loom-mpirun --np ", ranks, ")");
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
  } catch (const JobWideError&) {
    throw;  // every rank has it: the caller prints it once
  } catch (const std::exception& e) {
    // The other ranks may be blocked in a collective this rank will never join: end the whole job.
    std::fprintf(stderr, "loom: error on rank %d of %d: %s\n", world->rank(), world->size(), e.what());
    std::fflush(stderr);
    abort_all_ranks(1);
  }
}

}  // namespace loom
