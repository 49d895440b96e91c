// Where this process sits in a multi-process job, read from the launcher's environment variables.
//
// Contract: detect_process_environment() looks, in order, at
//   1. Open MPI's mpirun: OMPI_COMM_WORLD_RANK, _SIZE, _LOCAL_RANK, _LOCAL_SIZE;
//   2. Slurm's srun: SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, and the tasks on this node from
//      SLURM_NTASKS_PER_NODE or else SLURM_TASKS_PER_NODE with SLURM_NODEID ("2(x3),1" = 2 on nodes 0-2, 1 on 3);
//   3. neither: a single process (rank 0 of 1).
// A launcher is recognised by its rank variable (OMPI_COMM_WORLD_RANK / SLURM_PROCID); its other variables
// must then be present and consistent (0 <= rank < size, 0 <= local_rank < local_size <= size), else
// loom::Error names the variable and its value. It reads the environment only: MPI need not be initialised,
// so the GPU can be chosen (from local_rank) before MPI or CUDA start.
#pragma once
#include <functional>
#include <string>

namespace loom {

struct ProcessEnvironment {
  int rank = 0;        // index among all processes of the job
  int world_size = 1;  // number of processes in the job
  int local_rank = 0;  // index among the processes on this host (selects the GPU)
  int local_size = 1;  // number of processes on this host
  std::string launcher = "none";  // "openmpi", "slurm" or "none"
};

// Reads the variables through `lookup` (returns nullptr for an unset name); the overload without it uses
// std::getenv. Thread-safe as long as nobody calls setenv meanwhile.
ProcessEnvironment detect_process_environment(const std::function<const char*(const char*)>& lookup);
ProcessEnvironment detect_process_environment();

}  // namespace loom
