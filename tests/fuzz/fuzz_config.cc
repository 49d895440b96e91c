// Fuzz target: the YAML run-config loader (core/config.h).
//
// Input: YAML text, optionally followed by a line "#overrides" and then one "key=value" override per line.
// Property: parse_run_config either returns a config or throws loom::Error; and a config it returns
// serialises (run_config_to_yaml, with and without defaults) to YAML that parses back to the same message,
// as config.h promises.
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/error.h"
#include "fuzz_support.h"

namespace {

void require(bool ok, const char* what, const std::string& detail) {
  if (ok) return;
  std::fprintf(stderr, "fuzz_config: %s\n%s\n", what, detail.c_str());
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input(loom::fuzz::as_text(data, size));
  constexpr std::string_view kMarker = "\n#overrides\n";
  std::string yaml = input;
  std::vector<std::string> overrides;
  if (const size_t at = input.find(kMarker); at != std::string::npos) {
    yaml = input.substr(0, at);
    std::istringstream lines(input.substr(at + kMarker.size()));
    for (std::string line; std::getline(lines, line);) overrides.push_back(line);
  }
  loom::config::RunConfig config;
  try {
    config = loom::parse_run_config(yaml, "fuzz.yaml", overrides);
  } catch (const loom::Error&) {
    return 0;  // a refused config: the expected outcome for most inputs
  }
  const std::string written = loom::run_config_to_yaml(config);
  loom::config::RunConfig reread;
  try {
    reread = loom::parse_run_config(written, "written.yaml");
  } catch (const loom::Error& e) {
    require(false, "run_config_to_yaml wrote YAML that does not parse back", written + "\n" + e.what());
  }
  require(reread.SerializeAsString() == config.SerializeAsString(), "the written config parses to another message",
          written);
  const std::string resolved = loom::run_config_to_yaml(config, /*include_defaults=*/true);
  try {
    loom::parse_run_config(resolved, "resolved.yaml");
  } catch (const loom::Error& e) {
    require(false, "the resolved config (with defaults) does not parse back", resolved + "\n" + e.what());
  }
  return 0;
}
