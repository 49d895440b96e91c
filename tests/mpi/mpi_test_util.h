// Helpers shared by the MPI tests: the world communicator, a seed shared by all ranks, every rank's inputs
// (computable on any rank, so each rank checks collectives against a local float64 reference).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "parallel/mpi_communicator.h"

namespace loom::testing {

// One world communicator for the whole test run (created by the first test; all ranks run tests in order).
MpiCommunicator& test_world();

// A fresh random seed drawn on rank 0 and broadcast, so every rank can recompute every rank's inputs.
uint64_t shared_seed(MpiCommunicator& comm);

// Rank `rank`'s input: n values uniform in [-1, 1), a pure function of (seed, rank, n).
std::vector<double> rank_values(uint64_t seed, int rank, int64_t n);

// A CPU tensor of `dtype` (F32 or F64) holding `values` (rounded to f32 for F32).
Tensor tensor_of(const std::vector<double>& values, DType dtype);
// A CPU tensor of n NaNs, so elements a collective fails to write are caught.
Tensor poisoned(int64_t n, DType dtype);

// Tolerance for comparing a reduction of up to a few ranks' values against a float64 reference.
double tolerance(DType dtype);

// EXPECTs every element of `actual` to equal `expected` within tolerance(dtype); `what` names the check.
void expect_values(const Tensor& actual, const std::vector<double>& expected, const std::string& what);

}  // namespace loom::testing
