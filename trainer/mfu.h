// Model FLOPs utilisation: achieved model FLOP/s over the device's peak.
//
// Peak: the config's train.peak_flops when set; for CUDA a table by device name (dense bf16/fp16 tensor-core
// rates); for the CPU an estimate of cores × clock × 32 fp32 FLOP/cycle (two 8-wide FMA units), read from
// /proc/cpuinfo. The convention for model FLOPs is in trainer/models/gpt.h and docs/ARCHITECTURE.md.
#pragma once
#include <string>

namespace loom {

// Peak FLOP/s of a CUDA device by its name (e.g. "NVIDIA H100 80GB HBM3"); 0 when unknown.
double cuda_peak_flops(const std::string& device_name);
// Estimated fp32 peak of this machine's CPUs available to the process.
double cpu_peak_flops();

}  // namespace loom
