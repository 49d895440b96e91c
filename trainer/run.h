// Building a training run from its configuration: device, backend, model, data, trainer; then training.
// This is what `loom train` does, exposed so that tests and the controller's workers run the same path.
#pragma once
#include <iosfwd>
#include <memory>
#include <vector>

#include "core/config.pb.h"
#include "trainer/data_source.h"
#include "trainer/model.h"
#include "trainer/trainer.h"

namespace loom {

// train.device: "cpu", "cuda" (throws when no GPU is usable) or "auto" (CUDA when available).
Device select_device(const config::TrainConfig& train);
// The activation/compute dtype: f32 on the CPU, train.dtype (bf16 or f16) on CUDA.
DType select_compute_dtype(Device device, const config::TrainConfig& train);

// The model named by model.kind ("gpt" or "vit"), initialised from train.seed, then from model.init_from when
// set (our safetensors layout, or Hugging Face GPT-2 / timm names, detected from the tensor names).
std::unique_ptr<Model> build_model(const config::RunConfig& cfg, Backend& backend, DType compute_dtype);
std::unique_ptr<DataSource> build_data_source(const config::RunConfig& cfg, int rank, int world_size);

// Trains as configured: writes out_dir/config.yaml, resumes when train.resume is set ("latest" resumes from
// the newest checkpoint in out_dir if there is one), logs to `log`, and returns the result. `observers` (not
// owned) see every step and may stop the run or ask for checkpoints (e.g. the controller's worker client).
TrainResult run_training(const config::RunConfig& cfg, std::ostream& log,
                         const std::vector<TrainingObserver*>& observers = {});

}  // namespace loom
