// ProcessMesh: the ranks of a job arranged as a data-parallel × tensor-parallel grid.
//
//   rank = data_index * tensor_size + tensor_index
//
// so a tensor-parallel group is tensor_size consecutive ranks (on one host with mpirun's default by-slot
// placement, hence GPUs joined by NVLink), and a data-parallel group is the ranks with equal tensor_index,
// tensor_size apart. Example, 4 ranks as data 2 × tensor 2: tensor groups {0, 1}, {2, 3}; data groups {0, 2},
// {1, 3}.
//
// Contract: constructing a mesh is collective over `world` (every rank, same sizes): it splits world into
// the two sub-communicators, of the same kind as world (MPI or NCCL). The mesh does not own `world`, which
// must outlive it; it owns the sub-communicators. Ranks in the sub-groups follow the mesh indices:
// data_group().rank() == data_index(), tensor_group().rank() == tensor_index().
#pragma once
#include <memory>

#include "parallel/communicator.h"

namespace loom {

class ProcessMesh {
 public:
  // Throws loom::Error (before communicating) unless data_size >= 1, tensor_size >= 1 and
  // data_size * tensor_size == world.size(); the message names the sizes, e.g. from parallel.data/tensor.
  ProcessMesh(Communicator& world, int data_size, int tensor_size);

  int data_size() const { return data_size_; }
  int tensor_size() const { return tensor_size_; }
  int data_index() const { return data_index_; }      // world.rank() / tensor_size
  int tensor_index() const { return tensor_index_; }  // world.rank() % tensor_size

  Communicator& world() const { return world_; }
  // The ranks sharing this rank's tensor_index (gradient all-reduce / ZeRO reduce-scatter run here).
  Communicator& data_group() const { return *data_group_; }
  // The ranks sharing this rank's data_index (the tensor-parallel all-reduces / all-gathers run here).
  Communicator& tensor_group() const { return *tensor_group_; }

 private:
  Communicator& world_;
  int data_size_, tensor_size_, data_index_, tensor_index_;
  std::unique_ptr<Communicator> data_group_, tensor_group_;
};

}  // namespace loom
