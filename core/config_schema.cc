#include "core/config_schema.h"

#include <google/protobuf/descriptor.pb.h>

#include <map>
#include <sstream>

#include "core/error.h"

namespace loom {

extern const unsigned char kConfigSchemaDescriptorSet[];  // generated: cmake/embed_bytes.cmake
extern const size_t kConfigSchemaDescriptorSet_size;

namespace {

namespace pb = google::protobuf;

// Comment lines trimmed and joined with single spaces.
std::string one_line(const std::string& comment) {
  std::istringstream lines(comment);
  std::string out, word;
  while (lines >> word) out += (out.empty() ? "" : " ") + word;
  return out;
}

// Full name ("loom.config.TrainConfig.max_steps") -> its comment, for every message and field of the schema.
std::map<std::string, std::string> read_comments() {
  pb::FileDescriptorSet set;
  if (!set.ParseFromArray(kConfigSchemaDescriptorSet, static_cast<int>(kConfigSchemaDescriptorSet_size)))
    fail("config schema: the embedded descriptor set does not parse (a build problem)");
  const pb::FileDescriptorProto* file = nullptr;
  for (const auto& f : set.file())
    if (f.name() == "core/config.proto") file = &f;
  if (!file) fail("config schema: core/config.proto is not in the embedded descriptor set (a build problem)");
  std::map<std::string, std::string> comments;
  for (const pb::SourceCodeInfo::Location& at : file->source_code_info().location()) {
    std::string text = one_line(at.leading_comments());
    const std::string trailing = one_line(at.trailing_comments());
    if (!trailing.empty()) text += (text.empty() ? "" : " ") + trailing;
    if (text.empty()) continue;
    // A path: 4 (message_type), index, then 3 (nested_type), index ... and finally 2 (field), index.
    const auto& path = at.path();
    if (path.size() < 2 || path[0] != pb::FileDescriptorProto::kMessageTypeFieldNumber) continue;
    const pb::DescriptorProto* message = &file->message_type(path[1]);
    std::string name = file->package() + "." + message->name();
    int i = 2;
    for (; i + 1 < path.size() && path[i] == pb::DescriptorProto::kNestedTypeFieldNumber; i += 2) {
      message = &message->nested_type(path[i + 1]);
      name += "." + message->name();
    }
    if (i == path.size()) {
      comments[name] = text;
    } else if (i + 2 == path.size() && path[i] == pb::DescriptorProto::kFieldFieldNumber) {
      comments[name + "." + message->field(path[i + 1]).name()] = text;
    }
  }
  return comments;
}

const std::string& comment_of(const std::string& full_name) {
  static const std::map<std::string, std::string> comments = read_comments();
  static const std::string none;
  const auto it = comments.find(full_name);
  return it == comments.end() ? none : it->second;
}

}  // namespace

std::string config_field_comment(const pb::FieldDescriptor* field) { return comment_of(field->full_name()); }

std::string config_message_comment(const pb::Descriptor* message) { return comment_of(message->full_name()); }

}  // namespace loom
