#include "trainer/run.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
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
#include "trainer/gpt.h"
#include "trainer/gradient_sync.h"
#include "trainer/hf_gpt2.h"
#include "trainer/image_source.h"
#include "trainer/sampler.h"
#include "trainer/shared_out_dir.h"
#include "trainer/text_source.h"
#include "trainer/timm_vit.h"
#include "trainer/vit.h"

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

namespace {

bool looks_like_hf_gpt2(const NamedTensors& tensors) {
  for (const auto& [name, t] : tensors)
    if (name.rfind("h.0.", 0) == 0 || name.rfind("transformer.h.0.", 0) == 0) return true;
  return false;
}

void load_initial_weights(const config::RunConfig& cfg, Model& model, const TensorParallelContext* tp) {
  const std::string& path = cfg.model().init_from();
  NamedTensors tensors = safetensors::read(path).tensors;
  if (cfg.model().kind() == "gpt" && looks_like_hf_gpt2(tensors)) {
    const auto* gpt = dynamic_cast<GptModel*>(&model);
    tensors = import_hf_gpt2(tensors, gpt->shape().padded_vocab);
  } else if (const auto* vit = dynamic_cast<VitModel*>(&model)) {
    tensors = import_timm_vit(tensors, vit->shape());
  }
  if (tensor_size(tp) == 1) {
    model.params().load_named(tensors, path);
    return;
  }
  // Full tensors in the file; this tensor rank keeps its shard.
  ParameterStore& params = model.params();
  params.master().copy_from(arena_from_full_tensors(params.layout(), tensors, tp, "", params.master().dtype(), path));
  params.sync_compute_from_master();
}

}  // namespace

std::unique_ptr<Model> build_model(const config::RunConfig& cfg, Backend& backend, DType compute_dtype,
                                   const TensorParallelContext* tp) {
  const auto& m = cfg.model();
  std::unique_ptr<Model> model;
  if (m.kind() == "gpt") {
    model = std::make_unique<GptModel>(gpt_shape_from_config(m), backend, DType::F32, compute_dtype,
                                       cfg.data().seq_len(), cfg.train().seed(), tp);
  } else if (m.kind() == "vit") {
    model = std::make_unique<VitModel>(vit_shape_from_config(m), backend, DType::F32, compute_dtype,
                                       cfg.train().seed(), cfg.optim().label_smoothing(), tp);
  } else {
    fail("model.kind: expected \"gpt\" or \"vit\", got \"", m.kind(), "\"");
  }
  if (m.has_init_from() && !m.init_from().empty()) load_initial_weights(cfg, *model, tp);
  return model;
}

std::unique_ptr<DataSource> build_data_source(const config::RunConfig& cfg, int rank, int world_size) {
  if (cfg.model().kind() == "gpt") return std::make_unique<TextSource>(cfg, rank, world_size);
  return std::make_unique<ImageSource>(cfg, rank, world_size);
}

namespace {

// Discards what non-writing ranks would log (world rank 0 speaks for the job).
class NullBuffer final : public std::streambuf {
 protected:
  int overflow(int c) override { return c; }
};

}  // namespace

TrainResult train_on_mesh(const config::RunConfig& cfg, std::ostream& rank0_log,
                          const std::vector<TrainingObserver*>& observers, ProcessMesh* mesh) {
  const auto& t = cfg.train();
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
    out << run_config_to_yaml(cfg);
    if (!out) fail(t.out_dir(), "/config.yaml: cannot write");
  }
  if (mesh) mesh->world().barrier();  // out_dir exists for every rank
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
    tp.sequence = cfg.parallel().sequence();
    tp.timeline = &timeline;
    LOOM_CHECK(cfg.parallel().comm_tiles() >= 1, "parallel.comm_tiles must be at least 1, got ",
               cfg.parallel().comm_tiles());
    tp.tiles = cfg.parallel().comm_tiles();
  }
  auto model = build_model(cfg, *backend, compute, mesh ? &tp : nullptr);
  auto data = build_data_source(cfg, mesh ? mesh->data_index() : 0, mesh ? mesh->data_size() : 1);
  const SampleFlops flops = model->flops_per_sample();
  log << "loom: " << cfg.model().kind() << " model, " << model->params().layout().total() << " parameters"
      << (tp.active() ? " per tensor rank" : "") << ", " << flops.model / model->tokens_per_sample()
      << " model FLOPs/token, on " << backend->name() << " (" << dtype_name(compute) << ")";
  if (mesh)
    log << ", " << mesh->data_size() << " data x " << mesh->tensor_size() << " tensor ranks"
        << (tp.sequence_parallel() ? " with sequence parallelism" : "") << (cfg.parallel().zero1() ? ", ZeRO-1" : "");
  log << std::endl;

  Trainer trainer(cfg, *model, *data, log, TrainerParallelism{mesh, mesh ? &tp : nullptr});
  for (TrainingObserver* o : observers) trainer.add_observer(o);
  if (t.has_resume() && !t.resume().empty()) {
    const std::string dir = t.resume() == "latest" ? latest_checkpoint(t.out_dir()) : t.resume();
    if (!dir.empty())
      trainer.resume_from(dir);
    else
      log << "no checkpoint in " << t.out_dir() << " yet: starting from scratch" << std::endl;
  }

  std::unique_ptr<Tokenizer> tokenizer;
  if (auto* gpt = dynamic_cast<GptModel*>(model.get()); gpt && (t.sample_every() > 0)) {
    // Every rank samples (the forward is collective over the tensor group); world rank 0 prints.
    tokenizer = std::make_unique<Tokenizer>(Tokenizer::from_dir(gpt2_vocab_dir(cfg.data().tokenizer())));
    trainer.set_sampler([&, gpt](int64_t step) {
      PhiloxStream rng(t.seed(), 0x5a3d1e00ull + static_cast<uint64_t>(step));
      SampleOptions opts;
      opts.max_new_tokens = t.sample_tokens();
      opts.temperature = 1.0;
      opts.top_k = 40;
      const auto ids = sample_tokens(*gpt, {tokenizer->eot_token()}, opts, rng);
      log << "sample at step " << step << ": " << tokenizer->decode(ids) << std::endl;
    });
  }
  return trainer.run();
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
