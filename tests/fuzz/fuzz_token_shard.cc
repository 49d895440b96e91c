// Fuzz target: llm.c token shards (core/token_shards.h).
//
// Input: the bytes of a shard file. Properties: opening either throws loom::Error or gives a shard whose
// token count matches the file size; opened with GPT-2's vocabulary size, every token it serves is below it.
#include <cstdio>
#include <cstdlib>

#include "core/error.h"
#include "core/token_shards.h"
#include "fuzz_support.h"

namespace {
constexpr int32_t kGpt2Vocab = 50257;

void require(bool ok, const char* what) {
  if (ok) return;
  std::fprintf(stderr, "fuzz_token_shard: %s\n", what);
  std::abort();
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const loom::fuzz::MemoryFile file(loom::fuzz::as_text(data, size));
  try {
    const loom::TokenShard shard(file.path());
    require(loom::kShardHeaderBytes + 2 * shard.size() == static_cast<int64_t>(size),
            "an accepted shard's token count disagrees with its file size");
  } catch (const loom::Error&) {
    return 0;
  }
  try {
    const loom::TokenShard shard(file.path(), kGpt2Vocab);
    for (uint16_t token : shard.tokens()) require(token < kGpt2Vocab, "a token at or above the vocabulary passed");
  } catch (const loom::Error&) {
    // out-of-vocabulary tokens: refused at open, as promised
  }
  return 0;
}
