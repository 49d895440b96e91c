// Config values as YAML text, shared by the loader's error messages (core/config.cc) and the writers
// (core/config_writer.cc: run_config_to_yaml; core/config_reference.cc: `loom config`).
// Thread-safety: pure functions.
#pragma once
#include <google/protobuf/message.h>

#include <string>

namespace loom {

// Shortest text that reads back to the same value; NaN and infinities as YAML's .nan, .inf, -.inf.
std::string yaml_double(double v);
std::string yaml_float(float v);

// The YAML scalar of a field's value (element `index` of a repeated field, or -1 for a singular one): numbers
// as above, bools as true/false, enums by name, strings always double-quoted (so "123" stays a string).
// Not for message fields.
std::string yaml_scalar(const google::protobuf::Message& message, const google::protobuf::FieldDescriptor* field,
                        int index);

// True for a field marked (loom.config.required).
bool config_field_required(const google::protobuf::FieldDescriptor* field);
// True for a message field marked (loom.config.enables_feature): its presence turns a feature on (prune), so
// writers never fill it in with defaults when it is absent.
bool config_field_enables_feature(const google::protobuf::FieldDescriptor* field);

}  // namespace loom
