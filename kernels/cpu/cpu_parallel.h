// OpenMP conventions shared by the CPU kernels (internal to kernels/cpu).
//
// Work is always split statically into pieces whose results do not depend on which thread computes them, so
// outputs are bit-identical for any thread count. Small problems run serially: starting a parallel region
// costs microseconds, more than the work itself below these sizes.
#pragma once
#include <algorithm>
#include <cstdint>

namespace loom::cpu {

// Below this many elements (or multiply-adds) a kernel runs on the calling thread only.
constexpr int64_t kParallelMinWork = 1 << 15;
// Width of the column blocks that reductions over rows are split into (each block summed by one thread).
constexpr int64_t kColumnBlock = 32;

}  // namespace loom::cpu
