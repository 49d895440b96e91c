// `loom config`: the resolved config as YAML with one line of help per field (run_config_reference, core/config.h).
//
// Written line by line rather than with YAML::Emitter, which cannot write commented-out fields (an absent
// prune section's defaults); every value goes through yaml_scalar, so quoting is the emitter's.
#include <charconv>
#include <string>

#include "core/config.h"
#include "core/config_schema.h"
#include "core/config_text.h"

namespace loom {
namespace {

namespace pb = google::protobuf;

bool is_numeric(const pb::FieldDescriptor* f) {
  using F = pb::FieldDescriptor;
  switch (f->cpp_type()) {
    case F::CPPTYPE_INT32:
    case F::CPPTYPE_INT64:
    case F::CPPTYPE_UINT32:
    case F::CPPTYPE_UINT64:
    case F::CPPTYPE_FLOAT:
    case F::CPPTYPE_DOUBLE:
      return true;
    default:
      return false;
  }
}

// `help` and one more sentence.
std::string and_then(std::string help, const std::string& sentence) {
  if (!help.empty() && help.back() != '.') help += '.';
  return help + (help.empty() ? "" : " ") + sentence;
}

// A range bound as the field's type reads it: integers in full (1000000, not 1e+06), floats in shortest form.
std::string bound(const pb::FieldDescriptor* f, double v) {
  using F = pb::FieldDescriptor;
  if (f->cpp_type() == F::CPPTYPE_FLOAT || f->cpp_type() == F::CPPTYPE_DOUBLE) return yaml_double(v);
  if (v >= 18446744073709551615.0) return "18446744073709551615";  // uint64's maximum, which a double rounds up
  char buf[32];
  return std::string(buf, std::to_chars(buf, buf + sizeof buf, v, std::chars_format::fixed, 0).ptr);
}

// The schema's comment for the field, then what values it takes: "Range [1, 4096]." or "One of: gpt, vit.".
std::string field_help(const pb::FieldDescriptor* f) {
  std::string help = config_field_comment(f);
  std::string values;
  const pb::FieldOptions& o = f->options();
  if (is_numeric(f) && o.HasExtension(config::min) && o.HasExtension(config::max)) {
    values = "Range [" + bound(f, o.GetExtension(config::min)) + ", " + bound(f, o.GetExtension(config::max)) + "].";
  } else if (o.HasExtension(config::choices)) {
    std::string choices = o.GetExtension(config::choices);
    for (size_t bar = choices.find('|'); bar != std::string::npos; bar = choices.find('|', bar))
      choices.replace(bar, 1, ", ");
    values = "One of: " + choices + ".";
  } else if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_ENUM) {
    values = "One of: ";
    for (int i = 0; i < f->enum_type()->value_count(); ++i)
      values += (i ? ", " : "") + f->enum_type()->value(i)->name();
    values += ".";
  }
  return values.empty() ? help : and_then(help, values);
}

// "<prefix><key>: <value>  # <help>\n"
void line(std::string& out, const std::string& prefix, const std::string& key, const std::string& value,
          const std::string& help) {
  out += prefix + key + ":" + (value.empty() ? "" : " " + value);
  if (!help.empty()) out += "  # " + help;
  out += "\n";
}

void write_message(std::string& out, const pb::Message& msg, const std::string& prefix);

// One field of `msg`. `prefix` is the indentation (and "# " for commented-out defaults).
void write_field(std::string& out, const pb::Message& msg, const pb::FieldDescriptor* f, const std::string& prefix) {
  const pb::Reflection* r = msg.GetReflection();
  const std::string help = field_help(f);
  const bool is_message = f->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE;
  if (f->is_repeated()) {
    const int n = r->FieldSize(msg, f);
    if (n == 0 && is_message) {  // the fields an entry takes, commented out
      line(out, prefix, f->name(), "[]", and_then(help, "An entry's fields:"));
      std::string entry;
      write_message(entry, *r->GetMessageFactory()->GetPrototype(f->message_type()), prefix + "#     ");
      out += entry.replace(prefix.size() + 4, 2, "- ");
      return;
    }
    if (n == 0) return line(out, prefix, f->name(), "[]", help);
    if (!is_message) {
      std::string list = "[";
      for (int i = 0; i < n; ++i) list += (i ? ", " : "") + yaml_scalar(msg, f, i);
      return line(out, prefix, f->name(), list + "]", help);
    }
    line(out, prefix, f->name(), "", help);
    for (int i = 0; i < n; ++i) {
      // "- " before the element's first field, its other fields aligned under it.
      std::string element;
      write_message(element, r->GetRepeatedMessage(msg, f, i), prefix + "    ");
      element.replace(prefix.size() + 2, 2, "- ");
      out += element;
    }
    return;
  }
  if (!is_message) {
    const bool has_value = r->HasField(msg, f) || f->has_default_value();
    return line(out, prefix, f->name(), has_value ? yaml_scalar(msg, f, -1) : "~", help);
  }
  if (!r->HasField(msg, f) && config_field_enables_feature(f)) {
    line(out, prefix, f->name(), "~", and_then(help, "Its fields and their defaults:"));
    write_message(out, r->GetMessage(msg, f), prefix + "#   ");
    return;
  }
  line(out, prefix, f->name(), "", help);
  write_message(out, r->GetMessage(msg, f), prefix + "  ");
}

void write_message(std::string& out, const pb::Message& msg, const std::string& prefix) {
  const pb::Descriptor* type = msg.GetDescriptor();
  for (int i = 0; i < type->field_count(); ++i) write_field(out, msg, type->field(i), prefix);
}

}  // namespace

std::string run_config_reference(const config::RunConfig& config) {
  std::string out =
      "# Every field of the run configuration (core/config.proto) as this run resolves it: set by the config or an\n"
      "# override, else the field's default; `~` leaves a field unset (derived, as its help says). This text is a\n"
      "# config itself.\n";
  write_message(out, config, "");
  return out;
}

}  // namespace loom
