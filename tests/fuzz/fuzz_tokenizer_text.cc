// Fuzz target: GPT-2 BPE encoding of arbitrary bytes (core/tokenizer.h) with the real GPT-2 vocabulary.
//
// Input: any bytes (valid UTF-8 or not). Properties promised by tokenizer.h: encode never throws or crashes,
// every id is in [0, vocab_size()), and decode(encode(b)) == b for every byte string b; the same for
// encode_with_special, whose "<|endoftext|>" pieces become eot_token().
// The vocabulary is $LOOM_GPT2_DIR, else data/gpt2 of the checkout (fetched by scripts/setup.sh).
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include "core/error.h"
#include "core/tokenizer.h"
#include "fuzz_support.h"

namespace {

std::unique_ptr<loom::Tokenizer> g_tokenizer;

void check_round_trip(const std::string& text, const std::vector<int32_t>& ids, const char* how) {
  for (int32_t id : ids)
    if (id < 0 || id >= g_tokenizer->vocab_size()) {
      std::fprintf(stderr, "fuzz_tokenizer_text: %s gave id %d outside the vocabulary\n", how, id);
      std::abort();
    }
  if (g_tokenizer->decode(ids) != text) {
    std::fprintf(stderr, "fuzz_tokenizer_text: decode(%s(text)) != text\n", how);
    std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  try {
    g_tokenizer = std::make_unique<loom::Tokenizer>(
        loom::Tokenizer::from_dir(loom::gpt2_vocab_dir(LOOM_SOURCE_DIR "/data/gpt2")));
  } catch (const loom::Error& e) {
    std::fprintf(stderr, "fuzz_tokenizer_text: cannot load the GPT-2 vocabulary (run scripts/setup.sh): %s\n",
                 e.what());
    std::exit(1);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(loom::fuzz::as_text(data, size));
  check_round_trip(text, g_tokenizer->encode(text), "encode");
  check_round_trip(text, g_tokenizer->encode_with_special(text), "encode_with_special");
  return 0;
}
