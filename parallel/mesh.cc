#include "parallel/mesh.h"

#include "core/error.h"

namespace loom {
namespace {

// Checked before the members are set, so a bad mesh fails before any split is attempted.
int checked_tensor_size(const Communicator& world, int data_size, int tensor_size) {
  if (data_size < 1 || tensor_size < 1)
    fail("process mesh: parallel.data = ", data_size, " and parallel.tensor = ", tensor_size,
         " must both be at least 1");
  if (static_cast<int64_t>(data_size) * tensor_size != world.size())
    fail("process mesh: parallel.data × parallel.tensor = ", data_size, " × ", tensor_size, " = ",
         static_cast<int64_t>(data_size) * tensor_size, " but the job has ", world.size(),
         " ranks (start it with loom-mpirun -np ", static_cast<int64_t>(data_size) * tensor_size, ")");
  return tensor_size;
}

}  // namespace

ProcessMesh::ProcessMesh(Communicator& world, int data_size, int tensor_size)
    : world_(world),
      data_size_(data_size),
      tensor_size_(checked_tensor_size(world, data_size, tensor_size)),
      data_index_(world.rank() / tensor_size_),
      tensor_index_(world.rank() % tensor_size_) {
  // Color picks the group, key the order inside it, so sub-group ranks equal the mesh indices.
  data_group_ = world.split(/*color=*/tensor_index_, /*key=*/data_index_);
  tensor_group_ = world.split(/*color=*/data_index_, /*key=*/tensor_index_);
}

}  // namespace loom
