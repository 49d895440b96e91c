// Writing run configurations as YAML (run_config_to_yaml, core/config.h) and the scalar text it shares with
// the loader's messages and `loom config` (core/config_text.h).
#include <yaml-cpp/yaml.h>

#include <charconv>
#include <cmath>

#include "core/config.h"
#include "core/config_text.h"
#include "core/error.h"

namespace loom {

namespace pb = google::protobuf;

std::string yaml_double(double v) {
  if (std::isnan(v)) return ".nan";
  if (std::isinf(v)) return v > 0 ? ".inf" : "-.inf";
  char buf[64];
  return std::string(buf, std::to_chars(buf, buf + sizeof buf, v).ptr);  // shortest round-trip form
}

std::string yaml_float(float v) {
  if (std::isnan(v) || std::isinf(v)) return yaml_double(v);
  char buf[64];
  return std::string(buf, std::to_chars(buf, buf + sizeof buf, v).ptr);
}

bool config_field_required(const pb::FieldDescriptor* field) {
  return field->options().GetExtension(config::required);
}

bool config_field_enables_feature(const pb::FieldDescriptor* field) {
  return field->options().GetExtension(config::enables_feature);
}

namespace {

bool has_required_fields(const pb::Descriptor* type) {
  for (int i = 0; i < type->field_count(); ++i)
    if (config_field_required(type->field(i))) return true;
  return false;
}

void emit_scalar(YAML::Emitter& out, const pb::Message& msg, const pb::FieldDescriptor* f, int index) {
  const pb::Reflection* r = msg.GetReflection();
  const bool rep = index >= 0;
  using F = pb::FieldDescriptor;
  switch (f->cpp_type()) {
    case F::CPPTYPE_INT32:
      out << std::to_string(rep ? r->GetRepeatedInt32(msg, f, index) : r->GetInt32(msg, f));
      break;
    case F::CPPTYPE_INT64:
      out << std::to_string(rep ? r->GetRepeatedInt64(msg, f, index) : r->GetInt64(msg, f));
      break;
    case F::CPPTYPE_UINT32:
      out << std::to_string(rep ? r->GetRepeatedUInt32(msg, f, index) : r->GetUInt32(msg, f));
      break;
    case F::CPPTYPE_UINT64:
      out << std::to_string(rep ? r->GetRepeatedUInt64(msg, f, index) : r->GetUInt64(msg, f));
      break;
    case F::CPPTYPE_FLOAT:
      out << yaml_float(rep ? r->GetRepeatedFloat(msg, f, index) : r->GetFloat(msg, f));
      break;
    case F::CPPTYPE_DOUBLE:
      out << yaml_double(rep ? r->GetRepeatedDouble(msg, f, index) : r->GetDouble(msg, f));
      break;
    case F::CPPTYPE_BOOL:
      out << ((rep ? r->GetRepeatedBool(msg, f, index) : r->GetBool(msg, f)) ? "true" : "false");
      break;
    case F::CPPTYPE_STRING:  // always quoted, so "123" or "true" stay strings
      out << YAML::DoubleQuoted << (rep ? r->GetRepeatedString(msg, f, index) : r->GetString(msg, f));
      break;
    case F::CPPTYPE_ENUM:
      out << (rep ? r->GetRepeatedEnum(msg, f, index) : r->GetEnum(msg, f))->name();
      break;
    case F::CPPTYPE_MESSAGE:
      break;  // handled by emit_message
  }
}

void emit_message(YAML::Emitter& out, const pb::Message& msg, bool include_defaults) {
  const pb::Reflection* r = msg.GetReflection();
  const pb::Descriptor* type = msg.GetDescriptor();
  out << YAML::BeginMap;
  for (int i = 0; i < type->field_count(); ++i) {
    const pb::FieldDescriptor* f = type->field(i);
    const bool is_message = f->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE;
    if (f->is_repeated()) {
      const int n = r->FieldSize(msg, f);
      if (n == 0) continue;
      out << YAML::Key << f->name() << YAML::Value;
      if (!is_message) out << YAML::Flow;
      out << YAML::BeginSeq;
      for (int j = 0; j < n; ++j) {
        if (is_message)
          emit_message(out, r->GetRepeatedMessage(msg, f, j), include_defaults);
        else
          emit_scalar(out, msg, f, j);
      }
      out << YAML::EndSeq;
      continue;
    }
    const bool present = r->HasField(msg, f);
    // Unset fields without a declared default mean "derive it" (head_dim: d_model / n_head): never written;
    // nor is an absent section whose presence turns a feature on (prune).
    const bool write_default =
        include_defaults && (is_message ? !has_required_fields(f->message_type()) && !config_field_enables_feature(f)
                                        : f->has_default_value());
    if (!present && !write_default) continue;
    out << YAML::Key << f->name() << YAML::Value;
    if (is_message)
      emit_message(out, r->GetMessage(msg, f), include_defaults);
    else
      emit_scalar(out, msg, f, -1);
  }
  out << YAML::EndMap;
}

}  // namespace

std::string yaml_scalar(const pb::Message& message, const pb::FieldDescriptor* field, int index) {
  YAML::Emitter out;
  emit_scalar(out, message, field, index);
  LOOM_CHECK(out.good(), "yaml_scalar: ", out.GetLastError());
  return out.c_str();
}

std::string run_config_to_yaml(const config::RunConfig& config, bool include_defaults) {
  YAML::Emitter out;
  emit_message(out, config, include_defaults);
  LOOM_CHECK(out.good(), "run_config_to_yaml: ", out.GetLastError());
  return std::string(out.c_str()) + "\n";
}

}  // namespace loom
