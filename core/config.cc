#include "core/config.h"

#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <cmath>
#include <fstream>
#include <limits>
#include <optional>
#include <set>
#include <sstream>
#include <string_view>

#include "core/config_text.h"
#include "core/error.h"

namespace loom {
namespace {

namespace pb = google::protobuf;

// Where an error happened: the file, and (for overrides) which override.
struct Source {
  std::string file;
  std::string override_text;  // empty while reading the file itself
};

// "<file>:<line>:<column>: <path>: <reason>" (1-based, where the offending key or value starts), or
// "<file>: override '<text>': <path>: <reason>" for an override, or without a position where there is none
// in the file (a missing field).
template <typename... Args>
[[noreturn]] void fail_at(const Source& src, const YAML::Mark& at, const std::string& path, Args&&... args) {
  if (!src.override_text.empty())
    fail(src.file, ": override '", src.override_text, "': ", path, ": ", std::forward<Args>(args)...);
  if (at.is_null()) fail(src.file, ": ", path, ": ", std::forward<Args>(args)...);
  fail(src.file, ":", at.line + 1, ":", at.column + 1, ": ", path, ": ", std::forward<Args>(args)...);
}
const YAML::Mark kNowhere = YAML::Mark::null_mark();

std::string join_key(const std::string& path, const std::string& key) { return path.empty() ? key : path + "." + key; }
std::string join_index(const std::string& path, int64_t i) { return path + "[" + std::to_string(i) + "]"; }

// ---- YAML scalar syntax (YAML 1.2 core schema) ----

// Quoted ("12", '12') or explicitly !!str-tagged scalars are strings, never numbers or bools.
bool is_string_literal(const YAML::Node& node) { return node.Tag() == "!" || node.Tag() == "tag:yaml.org,2002:str"; }

std::optional<bool> parse_bool(const std::string& s) {
  if (s == "true" || s == "True" || s == "TRUE") return true;
  if (s == "false" || s == "False" || s == "FALSE") return false;
  return std::nullopt;
}

// Decimal, 0x hex or 0o octal integer with an optional sign; nullopt if not integer syntax or beyond 64 bits.
std::optional<__int128> parse_integer_literal(const std::string& s) {
  size_t i = 0;
  bool negative = false;
  if (i < s.size() && (s[i] == '+' || s[i] == '-')) negative = s[i++] == '-';
  int base = 10;
  if (s.compare(i, 2, "0x") == 0)
    base = 16, i += 2;
  else if (s.compare(i, 2, "0o") == 0)
    base = 8, i += 2;
  if (i >= s.size()) return std::nullopt;
  uint64_t magnitude = 0;
  const auto [end, ec] = std::from_chars(s.data() + i, s.data() + s.size(), magnitude, base);
  if (ec != std::errc() || end != s.data() + s.size()) return std::nullopt;
  return negative ? -static_cast<__int128>(magnitude) : static_cast<__int128>(magnitude);
}

// A float in YAML syntax (also plain integers), or .inf/-.inf/.nan. `out_of_range` is set when the literal is
// a number too large for T.
template <typename T>
std::optional<T> parse_float_literal(const std::string& s, bool* out_of_range = nullptr) {
  const std::string body = (!s.empty() && (s[0] == '+' || s[0] == '-')) ? s.substr(1) : s;
  const bool negative = !s.empty() && s[0] == '-';
  if (body == ".inf" || body == ".Inf" || body == ".INF")
    return negative ? -std::numeric_limits<T>::infinity() : std::numeric_limits<T>::infinity();
  if (s == ".nan" || s == ".NaN" || s == ".NAN") return std::numeric_limits<T>::quiet_NaN();
  // from_chars also takes "inf", "nan" and hex floats, which YAML does not: allow only decimal syntax.
  if (body.empty() || body.find_first_not_of("0123456789.eE+-") != std::string::npos) return std::nullopt;
  T value{};
  const auto [end, ec] = std::from_chars(s.data() + (s[0] == '+'), s.data() + s.size(), value);
  if (end != s.data() + s.size()) return std::nullopt;
  if (ec == std::errc::result_out_of_range) {
    if (out_of_range) *out_of_range = true;
    return std::nullopt;
  }
  if (ec != std::errc()) return std::nullopt;
  return value;
}

// How a value is described after "got": numbers and bools bare, other scalars quoted, containers by kind.
std::string describe(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Null:
      return "null";
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Map:
      return "a map";
    case YAML::NodeType::Undefined:
      return "nothing";
    case YAML::NodeType::Scalar:
      break;
  }
  const std::string& s = node.Scalar();
  if (!is_string_literal(node) && (parse_bool(s) || parse_float_literal<double>(s) || parse_integer_literal(s)))
    return s;
  return "\"" + s + "\"";
}

// ---- converting one YAML value into one field slot ----

// A place to store one value: a singular field, a new element appended to a repeated field, or an existing
// element of a repeated field.
struct Slot {
  pb::Message* msg;
  const pb::FieldDescriptor* field;
  int index;  // kSingular, kAppend or an element index
};
constexpr int kSingular = -1, kAppend = -2;

template <typename T, typename V>
void store(const Slot& s, V value, void (pb::Reflection::*set)(pb::Message*, const pb::FieldDescriptor*, T) const,
           void (pb::Reflection::*add)(pb::Message*, const pb::FieldDescriptor*, T) const,
           void (pb::Reflection::*set_at)(pb::Message*, const pb::FieldDescriptor*, int, T) const) {
  const pb::Reflection* r = s.msg->GetReflection();
  if (s.index == kSingular)
    (r->*set)(s.msg, s.field, std::move(value));
  else if (s.index == kAppend)
    (r->*add)(s.msg, s.field, std::move(value));
  else
    (r->*set_at)(s.msg, s.field, s.index, std::move(value));
}

template <typename Int>
Int to_integer(const YAML::Node& node, const Source& src, const std::string& path, const char* type_name) {
  const char* expected = std::is_signed_v<Int> ? "expected an integer" : "expected a non-negative integer";
  if (!node.IsScalar() || is_string_literal(node)) fail_at(src, node.Mark(), path, expected, ", got ", describe(node));
  const std::string& s = node.Scalar();
  std::optional<__int128> value = parse_integer_literal(s);
  if (!value) {
    // Accept an exact whole number written as a float (max_steps: 1e5); reject fractions.
    bool too_large = false;
    const std::optional<double> d = parse_float_literal<double>(s, &too_large);
    if (!d && !too_large) fail_at(src, node.Mark(), path, expected, ", got ", describe(node));
    if (d && std::isfinite(*d) && *d != std::trunc(*d))
      fail_at(src, node.Mark(), path, expected, ", got ", s, " (not a whole number)");
    if (!d || !std::isfinite(*d) || std::fabs(*d) > 9007199254740992.0)  // beyond 2^53 a double is not exact
      fail_at(src, node.Mark(), path, expected, ", got ", s, " (out of range for ", type_name, ")");
    value = static_cast<__int128>(*d);
  }
  if (*value < std::numeric_limits<Int>::min() || *value > std::numeric_limits<Int>::max())
    fail_at(src, node.Mark(), path, expected, ", got ", s, " (out of range for ", type_name, ")");
  return static_cast<Int>(*value);
}

template <typename Float>
Float to_float(const YAML::Node& node, const Source& src, const std::string& path, const char* type_name) {
  if (!node.IsScalar() || is_string_literal(node))
    fail_at(src, node.Mark(), path, "expected a number, got ", describe(node));
  bool too_large = false;
  const std::optional<Float> value = parse_float_literal<Float>(node.Scalar(), &too_large);
  if (too_large)
    fail_at(src, node.Mark(), path, "expected a number, got ", node.Scalar(), " (out of range for ", type_name, ")");
  if (!value) fail_at(src, node.Mark(), path, "expected a number, got ", describe(node));
  return *value;
}

void fill_message(pb::Message* msg, const YAML::Node& node, const Source& src, const std::string& path);


// The field's inclusive range from its (min) / (max) options; every numeric field of config.proto has both
// (tests/unit/config_ranges_test.cc checks that), so a missing bound is an error in the schema itself.
std::pair<double, double> field_range(const pb::FieldDescriptor* field) {
  const pb::FieldOptions& o = field->options();
  LOOM_CHECK(o.HasExtension(config::min) && o.HasExtension(config::max), "config.proto: numeric field ",
             field->full_name(), " lacks a (min) / (max) range");
  return {o.GetExtension(config::min), o.GetExtension(config::max)};
}

// `text` is how the value is written in the error (integers exactly, floats in shortest form). NaN is out of
// every range (both comparisons are false).
template <typename T>
T checked_range(T value, const std::string& text, const pb::FieldDescriptor* field, const Source& src,
                const YAML::Mark& at, const std::string& path) {
  const auto [lo, hi] = field_range(field);
  const double v = static_cast<double>(value);
  if (!(v >= lo && v <= hi))
    fail_at(src, at, path, text, " is out of range [", yaml_double(lo), ", ", yaml_double(hi), "]");
  return value;
}
template <typename Int>
Int integer_in_range(const YAML::Node& node, const Source& src, const std::string& path, const char* type_name,
                     const pb::FieldDescriptor* field) {
  const Int value = to_integer<Int>(node, src, path, type_name);
  return checked_range(value, std::to_string(value), field, src, node.Mark(), path);
}
template <typename Float>
Float float_in_range(const YAML::Node& node, const Source& src, const std::string& path, const char* type_name,
                     const pb::FieldDescriptor* field) {
  const Float value = to_float<Float>(node, src, path, type_name);
  return checked_range(value, yaml_double(value), field, src, node.Mark(), path);
}

// A string field with a (choices) option ("a|b|c") takes only those values.
std::string string_in_choices(const YAML::Node& node, const Source& src, const std::string& path,
                              const pb::FieldDescriptor* field) {
  const std::string& value = node.Scalar();
  if (!field->options().HasExtension(config::choices)) return value;
  const std::string& choices = field->options().GetExtension(config::choices);
  std::vector<std::string> allowed;
  for (size_t begin = 0;;) {
    const size_t bar = choices.find('|', begin);
    allowed.push_back(choices.substr(begin, bar - begin));
    if (bar == std::string::npos) break;
    begin = bar + 1;
  }
  if (std::find(allowed.begin(), allowed.end(), value) != allowed.end()) return value;
  std::string names;
  for (size_t i = 0; i < allowed.size(); ++i) names += (i ? ", " : "") + allowed[i];
  fail_at(src, node.Mark(), path, "expected one of ", names, ", got \"", value, "\"");
}

// Stores a non-null YAML value into the slot, checking its type and range against the field's.
void store_value(const Slot& s, const YAML::Node& node, const Source& src, const std::string& path) {
  using R = pb::Reflection;
  using F = pb::FieldDescriptor;
  const F* f = s.field;
  switch (f->cpp_type()) {
    case F::CPPTYPE_INT32:
      return store<int32_t>(s, integer_in_range<int32_t>(node, src, path, "int32", f), &R::SetInt32, &R::AddInt32,
                            &R::SetRepeatedInt32);
    case F::CPPTYPE_INT64:
      return store<int64_t>(s, integer_in_range<int64_t>(node, src, path, "int64", f), &R::SetInt64, &R::AddInt64,
                            &R::SetRepeatedInt64);
    case F::CPPTYPE_UINT32:
      return store<uint32_t>(s, integer_in_range<uint32_t>(node, src, path, "uint32", f), &R::SetUInt32,
                             &R::AddUInt32, &R::SetRepeatedUInt32);
    case F::CPPTYPE_UINT64:
      return store<uint64_t>(s, integer_in_range<uint64_t>(node, src, path, "uint64", f), &R::SetUInt64,
                             &R::AddUInt64, &R::SetRepeatedUInt64);
    case F::CPPTYPE_FLOAT:
      return store<float>(s, float_in_range<float>(node, src, path, "float", f), &R::SetFloat, &R::AddFloat,
                          &R::SetRepeatedFloat);
    case F::CPPTYPE_DOUBLE:
      return store<double>(s, float_in_range<double>(node, src, path, "double", f), &R::SetDouble, &R::AddDouble,
                           &R::SetRepeatedDouble);
    case F::CPPTYPE_BOOL: {
      const std::optional<bool> b =
          node.IsScalar() && !is_string_literal(node) ? parse_bool(node.Scalar()) : std::nullopt;
      if (!b) fail_at(src, node.Mark(), path, "expected true or false, got ", describe(node));
      return store<bool>(s, *b, &R::SetBool, &R::AddBool, &R::SetRepeatedBool);
    }
    case F::CPPTYPE_STRING:
      if (!node.IsScalar()) fail_at(src, node.Mark(), path, "expected a string, got ", describe(node));
      return store<std::string>(s, string_in_choices(node, src, path, f), &R::SetString, &R::AddString,
                                &R::SetRepeatedString);
    case F::CPPTYPE_ENUM: {
      const pb::EnumValueDescriptor* v =
          node.IsScalar() ? s.field->enum_type()->FindValueByName(node.Scalar()) : nullptr;
      if (!v) {
        std::string names;
        for (int i = 0; i < s.field->enum_type()->value_count(); ++i)
          names += (i ? ", " : "") + s.field->enum_type()->value(i)->name();
        fail_at(src, node.Mark(), path, "expected one of ", names, ", got ", describe(node));
      }
      return store<const pb::EnumValueDescriptor*>(s, v, &R::SetEnum, &R::AddEnum, &R::SetRepeatedEnum);
    }
    case F::CPPTYPE_MESSAGE: {
      const pb::Reflection* r = s.msg->GetReflection();
      pb::Message* sub = s.index == kSingular ? r->MutableMessage(s.msg, s.field)
                         : s.index == kAppend ? r->AddMessage(s.msg, s.field)
                                              : r->MutableRepeatedMessage(s.msg, s.field, s.index);
      sub->Clear();  // a value replaces the message, it does not merge into it
      return fill_message(sub, node, src, path);
    }
  }
}

// Stores a value for a whole field: null clears it, a repeated field takes a list.
void assign_field(pb::Message* msg, const pb::FieldDescriptor* field, const YAML::Node& node, const Source& src,
                  const std::string& path) {
  msg->GetReflection()->ClearField(msg, field);
  if (node.IsNull()) return;
  if (!field->is_repeated()) return store_value({msg, field, kSingular}, node, src, path);
  if (!node.IsSequence()) fail_at(src, node.Mark(), path, "expected a list, got ", describe(node));
  for (size_t i = 0; i < node.size(); ++i) {
    const std::string elem_path = join_index(path, static_cast<int64_t>(i));
    if (node[i].IsNull()) fail_at(src, node[i].Mark(), elem_path, "expected a value, got null");
    store_value({msg, field, kAppend}, node[i], src, elem_path);
  }
}

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] != b[j - 1])});
      diag = up;
    }
  }
  return row[b.size()];
}

const pb::FieldDescriptor* find_field(const pb::Descriptor* type, const std::string& key, const Source& src,
                                      const YAML::Mark& at, const std::string& path) {
  if (const pb::FieldDescriptor* f = type->FindFieldByName(key)) return f;
  std::string closest, names;
  size_t best = 3;  // suggest only names within two edits
  for (int i = 0; i < type->field_count(); ++i) {
    const std::string& name = type->field(i)->name();
    names += (i ? ", " : "") + name;
    if (const size_t d = edit_distance(key, name); d < best) best = d, closest = name;
  }
  if (!closest.empty()) fail_at(src, at, path, "unknown key (did you mean '", closest, "'?)");
  fail_at(src, at, path, "unknown key (", type->name(), " has: ", names, ")");
}

void fill_message(pb::Message* msg, const YAML::Node& node, const Source& src, const std::string& path) {
  if (!node.IsMap())
    fail_at(src, node.Mark(), path.empty() ? "(top level)" : path, "expected a map, got ", describe(node));
  std::set<std::string> seen;
  for (const auto& kv : node) {
    if (!kv.first.IsScalar())
      fail_at(src, kv.first.Mark(), path.empty() ? "(top level)" : path, "keys must be plain names, got ",
              describe(kv.first));
    const std::string& key = kv.first.Scalar();
    const std::string key_path = join_key(path, key);
    if (!seen.insert(key).second) fail_at(src, kv.first.Mark(), key_path, "duplicate key");
    assign_field(msg, find_field(msg->GetDescriptor(), key, src, kv.first.Mark(), key_path), kv.second, src, key_path);
  }
}

void check_required(const pb::Message& msg, const Source& src, const std::string& path) {
  const pb::Reflection* r = msg.GetReflection();
  const pb::Descriptor* type = msg.GetDescriptor();
  for (int i = 0; i < type->field_count(); ++i) {
    const pb::FieldDescriptor* f = type->field(i);
    const std::string key_path = join_key(path, f->name());
    if (!f->is_repeated() && config_field_required(f) && !r->HasField(msg, f))
      fail_at(src, kNowhere, key_path, "missing required field");
    if (f->cpp_type() != pb::FieldDescriptor::CPPTYPE_MESSAGE) continue;
    if (f->is_repeated()) {
      for (int j = 0; j < r->FieldSize(msg, f); ++j)
        check_required(r->GetRepeatedMessage(msg, f, j), src, join_index(key_path, j));
    } else if (r->HasField(msg, f)) {
      check_required(r->GetMessage(msg, f), src, key_path);
    }
  }
}

YAML::Node load_yaml(const std::string& text, const Source& src) {
  try {
    return YAML::Load(text);
  } catch (const YAML::Exception& e) {
    const std::string where = src.override_text.empty() ? "" : " in override '" + src.override_text + "'";
    fail(src.file, ":", e.mark.line + 1, ":", e.mark.column + 1, ": YAML syntax error", where, ": ", e.msg);
  }
}

// Splits "model.blocks[1].heads" or "model.blocks.1.heads" into {"model", "blocks", "1", "heads"}.
std::vector<std::string> split_key(const std::string& key, const Source& src) {
  std::vector<std::string> parts;
  std::string current;
  auto flush = [&] {
    if (current.empty()) fail_at(src, kNowhere, key, "empty component in key");
    parts.push_back(current);
    current.clear();
  };
  for (size_t i = 0; i < key.size(); ++i) {
    const char c = key[i];
    if (c == '.') {
      if (i > 0 && key[i - 1] == ']') continue;  // "blocks[1].heads"
      flush();
    } else if (c == '[') {
      flush();
    } else if (c == ']') {
      flush();
      if (i + 1 < key.size() && key[i + 1] != '.' && key[i + 1] != '[') fail_at(src, kNowhere, key, "malformed key");
    } else {
      current += c;
    }
  }
  if (!(key.size() > 0 && key.back() == ']')) flush();
  return parts;
}

// Applies "key.sub=value" to `config`.
void apply_override(pb::Message* root, const std::string& text, const std::string& file) {
  const Source src{file, text};
  const size_t eq = text.find('=');
  if (eq == std::string::npos || eq == 0) fail(file, ": override '", text, "': expected key=value");
  const std::vector<std::string> parts = split_key(text.substr(0, eq), src);
  const YAML::Node value = load_yaml(text.substr(eq + 1), src);

  pb::Message* msg = root;
  std::string path;
  for (size_t p = 0; p < parts.size(); ++p) {
    const std::string key_path = join_key(path, parts[p]);
    const pb::FieldDescriptor* field = find_field(msg->GetDescriptor(), parts[p], src, kNowhere, key_path);
    path = key_path;
    const bool last = p + 1 == parts.size();
    if (last) return assign_field(msg, field, value, src, path);
    if (!field->is_repeated()) {
      if (field->cpp_type() != pb::FieldDescriptor::CPPTYPE_MESSAGE)
        fail_at(src, kNowhere, path, "is a scalar (", field->type_name(), "), not a map");
      msg = msg->GetReflection()->MutableMessage(msg, field);
      continue;
    }
    // A list: the next component is an element index, which must exist or equal the size (append).
    const std::string& index_text = parts[++p];
    const int size = msg->GetReflection()->FieldSize(*msg, field);
    int index = -1;
    const auto [end, ec] = std::from_chars(index_text.data(), index_text.data() + index_text.size(), index);
    if (ec != std::errc() || end != index_text.data() + index_text.size() || index < 0)
      fail_at(src, kNowhere, path, "is a list; expected an element index, got \"", index_text, "\"");
    if (index > size)
      fail_at(src, kNowhere, join_index(path, index), "index out of range (the list has ", size, " elements)");
    path = join_index(path, index);
    const Slot slot{msg, field, index == size ? kAppend : index};
    if (p + 1 == parts.size()) {
      if (value.IsNull()) fail_at(src, kNowhere, path, "expected a value, got null");
      return store_value(slot, value, src, path);
    }
    if (field->cpp_type() != pb::FieldDescriptor::CPPTYPE_MESSAGE)
      fail_at(src, kNowhere, path, "is a scalar (", field->type_name(), "), not a map");
    const pb::Reflection* r = msg->GetReflection();
    msg = index == size ? r->AddMessage(msg, field) : r->MutableRepeatedMessage(msg, field, index);
  }
}

// The first place where `text` stops being YAML text: a byte that breaks UTF-8 (overlong forms, surrogates and
// code points above U+10FFFF included), or a code point outside YAML's printable set (c-printable: tab, line
// feed, carriage return, U+0020–U+007E, U+0085, U+00A0–U+D7FF, U+E000–U+FFFD, U+10000 and above). Hand-written:
// none of the libraries in use exposes a UTF-8 check, and yaml-cpp reads the other characters into strings
// that its emitter then writes back as something else.
struct TextFault {
  size_t at = std::string_view::npos;  // byte offset, npos when the text is fine
  bool utf8 = false;                   // a UTF-8 error (else a non-printable code point)
  uint32_t code = 0;                   // the non-printable code point
};

bool yaml_printable(uint32_t c) {
  return c == 0x9 || c == 0xa || c == 0xd || (c >= 0x20 && c <= 0x7e) || c == 0x85 || (c >= 0xa0 && c <= 0xd7ff) ||
         (c >= 0xe000 && c <= 0xfffd) || c >= 0x10000;
}

TextFault first_text_fault(std::string_view text) {
  const auto* p = reinterpret_cast<const unsigned char*>(text.data());
  for (size_t i = 0; i < text.size();) {
    const unsigned c = p[i];
    const size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + n > text.size()) return {i, true, 0};
    uint32_t code = n == 1 ? c : c & (0x7f >> n);
    for (size_t k = 1; k < n; ++k) {
      if ((p[i + k] & 0xc0) != 0x80) return {i, true, 0};
      code = (code << 6) | (p[i + k] & 0x3f);
    }
    static constexpr uint32_t kMinForLength[] = {0, 0, 0x80, 0x800, 0x10000};
    if (code < kMinForLength[n] || code > 0x10ffff || (code >= 0xd800 && code <= 0xdfff)) return {i, true, 0};
    if (!yaml_printable(code)) return {i, false, code};
    i += n;
  }
  return {};
}

// Documents in `text` that have content, counting up to 2 and stopping at the first empty one. Not
// YAML::LoadAll: in yaml-cpp 0.7 it never returns on some invalid input (e.g. ", ", found by
// tests/fuzz/fuzz_config), adding empty documents until memory runs out (jbeder/yaml-cpp#1040, fixed
// upstream by stopping at the first empty document, as here).
int count_documents(const std::string& text) {
  struct ContentSeen : YAML::EventHandler {
    bool content = false;
    void OnDocumentStart(const YAML::Mark&) override {}
    void OnDocumentEnd() override {}
    void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
    void OnAlias(const YAML::Mark&, YAML::anchor_t) override { content = true; }
    void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t, const std::string&) override {
      content = true;
    }
    void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override {
      content = true;
    }
    void OnSequenceEnd() override {}
    void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override {
      content = true;
    }
    void OnMapEnd() override {}
  };
  std::istringstream in(text);
  YAML::Parser parser(in);
  int documents = 0;
  for (ContentSeen seen; documents < 2 && parser.HandleNextDocument(seen) && seen.content; seen.content = false)
    ++documents;
  return documents;
}

// YAML is printable Unicode text; yaml-cpp passes other bytes and control characters through into strings,
// which then cannot be written back (run_config_to_yaml) unchanged. A file's error gives the line and column
// (in bytes) of the bad byte.
void check_yaml_text(std::string_view text, const std::string& what, bool with_position) {
  const TextFault fault = first_text_fault(text);
  const size_t at = fault.at;
  if (at == std::string_view::npos) return;
  std::string where = what;
  if (with_position) {
    const size_t line_start = at == 0 ? 0 : text.rfind('\n', at - 1) + 1;  // npos + 1 == 0: the first line
    const auto line = 1 + std::count(text.begin(), text.begin() + static_cast<std::ptrdiff_t>(at), '\n');
    where += ":" + std::to_string(line) + ":" + std::to_string(at - line_start + 1);
  }
  if (fault.utf8)
    fail(where, ": not UTF-8 text (invalid byte 0x", std::hex, unsigned{static_cast<unsigned char>(text[at])},
         std::dec, " at byte offset ", at, ")");
  char code[16];
  std::snprintf(code, sizeof code, "U+%04X", static_cast<unsigned>(fault.code));
  fail(where, ": not YAML text (control character ", code, " at byte offset ", at,
       "; YAML allows only tab, line feed and carriage return among the control characters)");
}

}  // namespace

config::RunConfig parse_run_config(const std::string& yaml_text, const std::string& source_name,
                                   const std::vector<std::string>& overrides) {
  const Source src{source_name, ""};
  check_yaml_text(yaml_text, source_name, /*with_position=*/true);
  for (const std::string& o : overrides) check_yaml_text(o, source_name + ": override '" + o + "'", false);
  YAML::Node root;
  int documents = 0;
  try {
    root = YAML::Load(yaml_text);
    documents = count_documents(yaml_text);
  } catch (const YAML::Exception& e) {
    fail(source_name, ":", e.mark.line + 1, ":", e.mark.column + 1, ": YAML syntax error: ", e.msg);
  }
  if (documents > 1) fail(source_name, ": expected one YAML document, found several");
  if (root.IsNull()) fail(source_name, ": the config is empty");
  config::RunConfig config;
  fill_message(&config, root, src, "");
  for (const std::string& o : overrides) apply_override(&config, o, source_name);
  check_required(config, src, "");
  return config;
}

config::RunConfig load_run_config(const std::string& yaml_path, const std::vector<std::string>& overrides) {
  std::ifstream in(yaml_path, std::ios::binary);
  if (!in) fail(yaml_path, ": cannot open config file");
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) fail(yaml_path, ": error reading config file");
  return parse_run_config(text.str(), yaml_path, overrides);
}

}  // namespace loom
