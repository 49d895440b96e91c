// Fuzz target: the safetensors reader (core/safetensors.h).
//
// Input: the bytes of a .safetensors file. Property: read() either throws loom::Error or returns tensors
// whose sizes agree with their shapes, and writing them back and reading again gives the same bytes.
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "core/error.h"
#include "core/safetensors.h"
#include "fuzz_support.h"

namespace {
std::string g_scratch;  // where accepted files are written back
}

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  g_scratch = loom::fuzz::make_temp_dir("fuzz-safetensors") + "/rewritten.safetensors";
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const loom::fuzz::MemoryFile file(loom::fuzz::as_text(data, size));
  loom::safetensors::File parsed;
  try {
    parsed = loom::safetensors::read(file.path());
  } catch (const loom::Error&) {
    return 0;
  }
  loom::safetensors::write(g_scratch, parsed.tensors, parsed.metadata);
  const loom::safetensors::File again = loom::safetensors::read(g_scratch);
  bool same = again.tensors.size() == parsed.tensors.size() && again.metadata == parsed.metadata;
  for (size_t i = 0; same && i < parsed.tensors.size(); ++i) {
    const loom::Tensor& a = parsed.tensors[i].second;
    const loom::Tensor& b = again.tensors[i].second;
    same = parsed.tensors[i].first == again.tensors[i].first && a.shape() == b.shape() && a.dtype() == b.dtype() &&
           a.nbytes() == b.nbytes() && (a.nbytes() == 0 || std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0);
  }
  if (!same) {
    std::fprintf(stderr, "fuzz_safetensors: a file read, written back and read again changed\n");
    std::abort();
  }
  return 0;
}
