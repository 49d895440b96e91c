// Fuzz target: a checkpoint's state.json (core/checkpoint.h, load_checkpoint).
//
// Input: the bytes of state.json, placed in a checkpoint folder whose two safetensors files are valid.
// Property: load_checkpoint either throws loom::Error or returns a JSON object with the checkpoint format
// and an integer step.
#include <cstdio>
#include <cstdlib>
#include <string>

#include "core/checkpoint.h"
#include "core/error.h"
#include "fuzz_support.h"

namespace {
std::string g_dir;
}

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const std::string out_dir = loom::fuzz::make_temp_dir("fuzz-checkpoint");
  loom::CheckpointContents contents;
  loom::Tensor w = loom::Tensor::empty({2, 3}, loom::DType::F32);
  for (int i = 0; i < 6; ++i) w.data<float>()[i] = static_cast<float>(i);
  contents.model = {{"w", w}};
  contents.optimizer = {{"m.w", w}};
  contents.state = nlohmann::json::object();
  loom::save_checkpoint(out_dir, 7, contents);
  g_dir = loom::checkpoint_dir(out_dir, 7);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  loom::fuzz::write_file(g_dir + "/state.json", loom::fuzz::as_text(data, size));
  try {
    const loom::CheckpointContents loaded = loom::load_checkpoint(g_dir);
    if (!loaded.state.is_object() || !loaded.state.contains("step") || !loaded.state["step"].is_number_integer()) {
      std::fprintf(stderr, "fuzz_checkpoint_state: a state without an integer step was accepted\n");
      std::abort();
    }
  } catch (const loom::Error&) {
  }
  return 0;
}
