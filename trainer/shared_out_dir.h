// The check that every rank of a job sees the same train.out_dir, made before training starts.
//
// World rank 0 writes every checkpoint, and every rank reads them back on resume (train.resume, the
// controller's restarts), so on several hosts out_dir must be one folder every host mounts at the same path
// (NFS, Lustre, ...). A host that sees a different or no folder there would otherwise go unnoticed until the
// first resume. The check: rank 0 creates out_dir and writes a random nonce to out_dir/.loom_shared_check,
// every rank reads the file back and compares it with the nonce broadcast over MPI, and the results are
// combined over the job; rank 0 then removes the file.
#pragma once
#include <string>

#include "parallel/mpi_communicator.h"

namespace loom {

// Collective over `world` (every rank, the same out_dir). Returns when every rank read rank 0's nonce from
// out_dir; otherwise every rank throws loom::Error naming out_dir, the ranks that could not read it and,
// on those ranks, the host and what it found. Throws loom::Error on rank 0 when out_dir cannot be created
// or written (the other ranks then see a failure too).
void check_out_dir_shared(const std::string& out_dir, MpiCommunicator& world);

}  // namespace loom
