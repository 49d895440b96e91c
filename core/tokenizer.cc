#include "core/tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <sys/stat.h>

#include <array>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <unordered_map>

#include "core/error.h"

namespace loom {
namespace {

constexpr const char* kPreTokenPattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr const char* kEndOfText = "<|endoftext|>";
// The merge cache is dropped when it grows past this many pre-tokens, bounding memory on huge corpora.
constexpr size_t kMaxCacheEntries = size_t{1} << 20;

std::string read_whole_file(const std::string& path, const char* what) {
  // Only regular files are read: opening a FIFO without a writer would wait forever.
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0 && !S_ISREG(st.st_mode)) fail(what, " '", path, "': not a regular file");
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(what, " '", path, "': cannot open for reading (missing? run scripts/fetch_gpt2_vocab.sh)");
  std::ostringstream os;
  os << in.rdbuf();
  if (in.bad()) fail(what, " '", path, "': read error");
  return os.str();
}

// GPT-2's bytes_to_unicode(): printable Latin-1 bytes map to themselves, the other 68 bytes to code points
// 256, 257, ... in byte order, so that every token string in encoder.json is printable.
std::array<uint32_t, 256> byte_to_codepoint_table() {
  std::array<uint32_t, 256> table{};
  uint32_t next_extra = 256;
  for (uint32_t b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    table[b] = printable ? b : next_extra++;
  }
  return table;
}

// Decodes one UTF-8 code point at s[i], advancing i; false on malformed input. Hand-written because the
// vocab files are tiny and only need this to map GPT-2's printable symbols back to bytes.
bool next_codepoint(std::string_view s, size_t& i, uint32_t& cp) {
  const auto byte = [&](size_t k) { return static_cast<uint8_t>(s[k]); };
  const uint8_t lead = byte(i);
  int extra = 0;
  if (lead < 0x80) {
    cp = lead;
  } else if ((lead & 0xE0) == 0xC0) {
    cp = lead & 0x1F, extra = 1;
  } else if ((lead & 0xF0) == 0xE0) {
    cp = lead & 0x0F, extra = 2;
  } else if ((lead & 0xF8) == 0xF0) {
    cp = lead & 0x07, extra = 3;
  } else {
    return false;
  }
  if (i + extra >= s.size()) return false;
  for (int k = 1; k <= extra; ++k) {
    if ((byte(i + k) & 0xC0) != 0x80) return false;
    cp = (cp << 6) | (byte(i + k) & 0x3F);
  }
  i += 1 + extra;
  return true;
}

std::string pcre2_message(int code) {
  PCRE2_UCHAR buffer[256];
  pcre2_get_error_message(code, buffer, sizeof(buffer));
  return reinterpret_cast<const char*>(buffer);
}

uint64_t pair_key(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

}  // namespace

struct Tokenizer::Impl {
  struct Merge {
    int32_t rank;
    int32_t merged_id;
  };

  std::vector<std::string> token_bytes;                   // id -> bytes
  std::unordered_map<std::string, int32_t> id_of_bytes;   // bytes -> id
  std::array<int32_t, 256> byte_token{};                  // byte -> id of its one-byte token
  std::unordered_map<uint64_t, Merge> merges;             // (left id, right id) -> rank, merged id
  int32_t eot = -1;
  pcre2_code* regex = nullptr;

  mutable std::mutex cache_mutex;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache;  // pre-token bytes -> ids

  ~Impl() {
    if (regex) pcre2_code_free(regex);
  }

  // Maps a symbol of GPT-2's printable alphabet back to bytes; false if a code point is not in it.
  static bool symbol_to_bytes(std::string_view symbol, std::string& bytes) {
    static const std::array<int16_t, 512> byte_of_codepoint = [] {
      std::array<int16_t, 512> inverse;
      inverse.fill(-1);
      const auto table = byte_to_codepoint_table();
      for (int b = 0; b < 256; ++b) inverse[table[b]] = static_cast<int16_t>(b);
      return inverse;
    }();
    bytes.clear();
    for (size_t i = 0; i < symbol.size();) {
      uint32_t cp = 0;
      if (!next_codepoint(symbol, i, cp) || cp >= byte_of_codepoint.size() || byte_of_codepoint[cp] < 0)
        return false;
      bytes.push_back(static_cast<char>(byte_of_codepoint[cp]));
    }
    return !bytes.empty();
  }

  void load_encoder(const std::string& path) {
    const std::string text = read_whole_file(path, "encoder.json");
    nlohmann::json json;
    try {
      json = nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception& e) {
      fail("encoder.json '", path, "': invalid JSON: ", e.what());
    }
    if (!json.is_object() || json.empty()) fail("encoder.json '", path, "': expected a non-empty JSON object");
    token_bytes.assign(json.size(), std::string());
    std::vector<bool> seen(json.size(), false);
    std::string bytes;
    for (const auto& [symbol, value] : json.items()) {
      if (!value.is_number_integer() || value.get<int64_t>() < 0 ||
          value.get<int64_t>() >= static_cast<int64_t>(json.size()))
        fail("encoder.json '", path, "': token '", symbol, "' has id ", value.dump(), ", expected an integer in [0, ",
             json.size(), ")");
      const int32_t id = value.get<int32_t>();
      if (seen[id]) fail("encoder.json '", path, "': id ", id, " is used twice (again by '", symbol, "')");
      seen[id] = true;
      if (symbol == kEndOfText) {
        bytes = kEndOfText;
        eot = id;
      } else if (!symbol_to_bytes(symbol, bytes)) {
        fail("encoder.json '", path, "': token '", symbol, "' (id ", id,
             ") is not a string of GPT-2's byte-level alphabet");
      }
      token_bytes[id] = bytes;
      if (symbol != kEndOfText) id_of_bytes.emplace(bytes, id);
    }
    if (eot < 0) fail("encoder.json '", path, "': has no '", kEndOfText, "' token");
    for (int b = 0; b < 256; ++b) {
      const auto it = id_of_bytes.find(std::string(1, static_cast<char>(b)));
      if (it == id_of_bytes.end()) fail("encoder.json '", path, "': has no token for the single byte ", b);
      byte_token[b] = it->second;
    }
  }

  void load_merges(const std::string& path) {
    const std::string text = read_whole_file(path, "vocab.bpe");
    std::istringstream lines(text);
    std::string line;
    int64_t line_number = 0;
    int32_t rank = 0;
    std::string left, right;
    while (std::getline(lines, line)) {
      ++line_number;
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.empty() || (line_number == 1 && line.rfind("#version", 0) == 0)) continue;
      const size_t space = line.find(' ');
      if (space == std::string::npos || line.find(' ', space + 1) != std::string::npos)
        fail("vocab.bpe '", path, "' line ", line_number, ": expected two symbols separated by one space, got '",
             line, "'");
      if (!symbol_to_bytes(std::string_view(line).substr(0, space), left) ||
          !symbol_to_bytes(std::string_view(line).substr(space + 1), right))
        fail("vocab.bpe '", path, "' line ", line_number, ": '", line,
             "' has a symbol outside GPT-2's byte-level alphabet");
      const auto left_id = id_of_bytes.find(left), right_id = id_of_bytes.find(right),
                 merged_id = id_of_bytes.find(left + right);
      if (left_id == id_of_bytes.end() || right_id == id_of_bytes.end() || merged_id == id_of_bytes.end())
        fail("vocab.bpe '", path, "' line ", line_number, ": merge '", line,
             "' uses or makes a token that encoder.json does not have");
      // encoder.py builds a dict from the merge list, so a repeated pair would take its last rank.
      merges[pair_key(left_id->second, right_id->second)] = Merge{rank++, merged_id->second};
    }
    if (merges.empty()) fail("vocab.bpe '", path, "': has no merges");
  }

  void compile_regex() {
    int error_code = 0;
    PCRE2_SIZE error_offset = 0;
    regex = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(kPreTokenPattern), PCRE2_ZERO_TERMINATED,
                          PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &error_code, &error_offset, nullptr);
    if (!regex) fail("tokenizer: cannot compile the GPT-2 pre-token regex: ", pcre2_message(error_code));
    // JIT is only a speed-up; without it (unsupported platform) pcre2_match interprets the pattern.
    pcre2_jit_compile(regex, PCRE2_JIT_COMPLETE);
  }

  // Byte-level BPE of one pre-token: start from one token per byte and repeatedly merge every
  // non-overlapping occurrence (left to right) of the adjacent pair with the lowest rank, as encoder.py does.
  std::vector<int32_t> bpe(std::string_view piece) const {
    std::vector<int32_t> word(piece.size());
    for (size_t i = 0; i < piece.size(); ++i) word[i] = byte_token[static_cast<uint8_t>(piece[i])];
    std::vector<int32_t> merged_word;
    while (word.size() > 1) {
      const Merge* best = nullptr;
      int32_t best_left = 0, best_right = 0;
      for (size_t i = 0; i + 1 < word.size(); ++i) {
        const auto it = merges.find(pair_key(word[i], word[i + 1]));
        if (it != merges.end() && (!best || it->second.rank < best->rank)) {
          best = &it->second;
          best_left = word[i];
          best_right = word[i + 1];
        }
      }
      if (!best) break;
      merged_word.clear();
      for (size_t i = 0; i < word.size(); ++i) {
        if (i + 1 < word.size() && word[i] == best_left && word[i + 1] == best_right) {
          merged_word.push_back(best->merged_id);
          ++i;
        } else {
          merged_word.push_back(word[i]);
        }
      }
      word.swap(merged_word);
    }
    return word;
  }

  void encode_piece(std::string_view piece, std::vector<int32_t>& out) const {
    {
      std::lock_guard<std::mutex> lock(cache_mutex);
      const auto it = cache.find(std::string(piece));
      if (it != cache.end()) {
        out.insert(out.end(), it->second.begin(), it->second.end());
        return;
      }
    }
    std::vector<int32_t> ids = bpe(piece);
    out.insert(out.end(), ids.begin(), ids.end());
    std::lock_guard<std::mutex> lock(cache_mutex);
    if (cache.size() >= kMaxCacheEntries) cache.clear();
    cache.emplace(std::string(piece), std::move(ids));
  }

  // Splits `text` with the pre-token regex and BPE-encodes each match, and each run of invalid UTF-8 bytes
  // between matches, appending to `out`.
  void encode_ordinary(std::string_view text, std::vector<int32_t>& out) const {
    if (text.empty()) return;
    std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> match(
        pcre2_match_data_create_from_pattern(regex, nullptr), &pcre2_match_data_free);
    if (!match) fail("tokenizer: out of memory creating PCRE2 match data");
    const auto subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    size_t pos = 0;
    while (pos < text.size()) {
      const int rc = pcre2_match(regex, subject, text.size(), pos, 0, match.get(), nullptr);
      if (rc == PCRE2_ERROR_NOMATCH) {
        encode_piece(text.substr(pos), out);  // only invalid bytes are left
        return;
      }
      if (rc < 0) fail("tokenizer: PCRE2 match failed at byte ", pos, ": ", pcre2_message(rc));
      const PCRE2_SIZE* span = pcre2_get_ovector_pointer(match.get());
      LOOM_CHECK(span[1] > span[0], "tokenizer: the pre-token regex matched an empty string at byte ", span[0]);
      if (span[0] > pos) encode_piece(text.substr(pos, span[0] - pos), out);
      encode_piece(text.substr(span[0], span[1] - span[0]), out);
      pos = span[1];
    }
  }
};

Tokenizer::Tokenizer(const std::string& encoder_json_path, const std::string& vocab_bpe_path)
    : impl_(std::make_unique<Impl>()) {
  impl_->load_encoder(encoder_json_path);
  impl_->load_merges(vocab_bpe_path);
  impl_->compile_regex();
}

Tokenizer Tokenizer::from_dir(const std::string& dir) {
  return Tokenizer(dir + "/encoder.json", dir + "/vocab.bpe");
}

Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

std::vector<int32_t> Tokenizer::encode(std::string_view text) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 1);
  impl_->encode_ordinary(text, ids);
  return ids;
}

std::vector<int32_t> Tokenizer::encode_with_special(std::string_view text) const {
  const std::string_view special = kEndOfText;
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 1);
  size_t start = 0;
  for (size_t found; (found = text.find(special, start)) != std::string_view::npos; start = found + special.size()) {
    impl_->encode_ordinary(text.substr(start, found - start), ids);
    ids.push_back(impl_->eot);
  }
  impl_->encode_ordinary(text.substr(start), ids);
  return ids;
}

const std::string& Tokenizer::token_bytes(int32_t id) const {
  if (id < 0 || id >= vocab_size()) fail("tokenizer: token id ", id, " is outside the vocabulary [0, ", vocab_size(), ")");
  return impl_->token_bytes[id];
}

std::string Tokenizer::decode(std::span<const int32_t> ids) const {
  std::string text;
  for (const int32_t id : ids) text += token_bytes(id);
  return text;
}

int32_t Tokenizer::vocab_size() const { return static_cast<int32_t>(impl_->token_bytes.size()); }
int32_t Tokenizer::eot_token() const { return impl_->eot; }

std::string gpt2_vocab_dir(const std::string& fallback) {
  const char* env = std::getenv("LOOM_GPT2_DIR");
  return env && *env ? std::string(env) : fallback;
}

}  // namespace loom
