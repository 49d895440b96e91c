// GPT-2's byte-level BPE tokenizer, exact to OpenAI's encoder.py (checked against the JavaScript port
// `gpt-3-encoder` by tests/unit/tokenizer_test.cc on tests/data/tokenizer/parity.json).
//
// How text becomes ids:
//  1. The text is split into pre-tokens by GPT-2's regex
//       's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//     (PCRE2, UTF + UCP).
//  2. Each pre-token's UTF-8 bytes start as one token per byte; adjacent pairs are merged by the rank of
//     their line in vocab.bpe, lowest rank first, until no listed pair is left.
//  3. The resulting symbols are looked up in encoder.json.
//
// Invalid UTF-8 (a decision, since encoder.py only ever sees valid strings): the regex runs with
// PCRE2_MATCH_INVALID_UTF, so no match ever includes an invalid byte. Each maximal run of bytes the regex
// skips becomes a pre-token of its own and is BPE-encoded like any other bytes. Nothing crashes, no byte is
// dropped or replaced, and decode(encode(b)) == b holds for every byte string b. On valid UTF-8 the
// result is exactly GPT-2's.
//
// Known difference from the JavaScript reference: in UCP mode PCRE2's \s is \p{Z}, \h and \v (Unicode
// White_Space plus U+180E, close to Python's `regex` module used by encoder.py), while JS's \s also
// matches U+FEFF and not U+0085. Text with those characters can tokenize differently from gpt-3-encoder.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace loom {

class Tokenizer {
 public:
  // Loads encoder.json (token string -> id) and vocab.bpe (merges, one "a b" pair per line in rank order,
  // after a "#version" line). Throws loom::Error naming the file for a missing or unreadable file, invalid
  // JSON, ids that are not exactly 0..n-1, a merge line that is not two symbols, or a symbol (or merged
  // pair) that encoder.json does not have. The special token "<|endoftext|>" must be in encoder.json.
  Tokenizer(const std::string& encoder_json_path, const std::string& vocab_bpe_path);
  // Loads DIR/encoder.json and DIR/vocab.bpe (see scripts/fetch_gpt2_vocab.sh).
  static Tokenizer from_dir(const std::string& dir);
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  // Ids of `text` (any bytes; see the note on invalid UTF-8 above). "<|endoftext|>" in the text is
  // ordinary text here (several tokens), as in encoder.py. Thread-safe: the merge cache is locked.
  std::vector<int32_t> encode(std::string_view text) const;
  // Like encode(), but every "<|endoftext|>" in the text becomes the single id eot_token(); the pieces
  // between are encoded separately (tiktoken's allowed_special semantics).
  std::vector<int32_t> encode_with_special(std::string_view text) const;
  // The bytes of `ids` concatenated (eot_token() gives "<|endoftext|>"). Throws loom::Error naming the
  // first id outside [0, vocab_size()).
  std::string decode(std::span<const int32_t> ids) const;
  // The bytes of one token; throws like decode().
  const std::string& token_bytes(int32_t id) const;

  int32_t vocab_size() const;  // 50257 for GPT-2
  int32_t eot_token() const;   // id of "<|endoftext|>", 50256 for GPT-2

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The folder holding GPT-2's encoder.json and vocab.bpe: $LOOM_GPT2_DIR when set and non-empty, else
// `fallback`. Does not check that the files exist (the Tokenizer constructor does).
std::string gpt2_vocab_dir(const std::string& fallback);

}  // namespace loom
