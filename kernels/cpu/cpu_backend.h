// The CPU reference backend: fp32 (and f64, for gradient checks), straightforward loops, OpenBLAS GEMMs.
// It defines what every other backend must compute. Thread-safe only in the sense of Backend (one driver).
#pragma once
#include <memory>

#include "kernels/backend.h"

namespace loom {

std::unique_ptr<Backend> make_cpu_backend();

}  // namespace loom
