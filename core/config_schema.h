// The run configuration schema's own documentation: the comments written in core/config.proto, for
// `loom config` (core/config.h, run_config_reference).
//
// How: protoc's generated C++ code keeps no comments, so the build runs protoc once more with
// --include_source_info to write the schema's descriptor set with its comments (SourceCodeInfo), and embeds
// those bytes in the library (cmake/embed_bytes.cmake). That keeps the comments in config.proto the single
// source of the help text: no second table to keep in step with the schema.
//
// Thread-safety: the descriptor set is parsed once, on first use (a function-local static); the functions
// may be called from any thread. Errors: a schema missing from the embedded set is a build error and throws
// loom::Error.
#pragma once
#include <google/protobuf/descriptor.h>

#include <string>

namespace loom {

// The comment attached to `field` in core/config.proto (the lines above it, then the one after it on its
// line), joined into one line with single spaces; "" when it has none.
std::string config_field_comment(const google::protobuf::FieldDescriptor* field);

// The comment above the definition of `message` in core/config.proto, joined into one line;
// "" when it has none.
std::string config_message_comment(const google::protobuf::Descriptor* message);

}  // namespace loom
