#include "core/error.h"

namespace loom::detail {

void throw_check_failure(const char* file, int line, const char* cond, const std::string& msg) {
  std::ostringstream os;
  os << msg;
  if (!msg.empty()) os << " ";
  os << "(check failed: " << cond << " at " << file << ":" << line << ")";
  throw Error(os.str());
}

}  // namespace loom::detail
