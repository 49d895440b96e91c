#include "kernels/cpu/cpu_backend.h"

namespace loom {

std::unique_ptr<Backend> make_cpu_backend() { fail("cpu backend: not yet implemented"); }

}  // namespace loom
