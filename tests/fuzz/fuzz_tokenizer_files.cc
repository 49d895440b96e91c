// Fuzz target: loading a tokenizer's encoder.json and vocab.bpe (core/tokenizer.h).
//
// Input: encoder.json, a NUL byte, then vocab.bpe (no NUL: vocab.bpe is empty). Properties: the constructor
// either throws loom::Error or gives a tokenizer that encodes a fixed sample and its own tokens' bytes with
// ids in range and decodes them back unchanged.
#include <cstdio>
#include <cstdlib>
#include <string>

#include "core/error.h"
#include "core/tokenizer.h"
#include "fuzz_support.h"

namespace {

void require(bool ok, const char* what) {
  if (ok) return;
  std::fprintf(stderr, "fuzz_tokenizer_files: %s\n", what);
  std::abort();
}

void check_round_trip(const loom::Tokenizer& tokenizer, const std::string& text) {
  const std::vector<int32_t> ids = tokenizer.encode(text);
  for (int32_t id : ids) require(id >= 0 && id < tokenizer.vocab_size(), "encode gave an id outside the vocabulary");
  require(tokenizer.decode(ids) == text, "decode(encode(text)) != text");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input = loom::fuzz::as_text(data, size);
  const size_t split = input.find('\0');
  const loom::fuzz::MemoryFile encoder(input.substr(0, split));
  const loom::fuzz::MemoryFile merges(split == std::string_view::npos ? std::string_view() : input.substr(split + 1));
  try {
    const loom::Tokenizer tokenizer(encoder.path(), merges.path());
    require(tokenizer.eot_token() >= 0 && tokenizer.eot_token() < tokenizer.vocab_size(), "eot_token out of range");
    check_round_trip(tokenizer, "Hello world, it's 2024!\n\tcaf\xc3\xa9 <|endoftext|> \xff\xfe");
    for (int32_t id = 0; id < tokenizer.vocab_size() && id < 64; ++id) check_round_trip(tokenizer, tokenizer.token_bytes(id));
  } catch (const loom::Error&) {
  }
  return 0;
}
