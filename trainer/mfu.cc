#include "trainer/mfu.h"

#include <fstream>
#include <sstream>
#include <thread>
#include <utility>
#include <vector>

namespace loom {

double cuda_peak_flops(const std::string& name) {
  // Dense bf16/fp16 tensor-core peaks from the vendors' datasheets (no sparsity).
  static const std::vector<std::pair<std::string, double>> table = {
      {"H200", 989e12}, {"H100 SXM", 989e12}, {"H100 80GB HBM3", 989e12}, {"H100 NVL", 835e12},
      {"H100 PCIe", 756e12}, {"H100", 989e12}, {"GH200", 989e12}, {"A100", 312e12}, {"L40S", 362e12},
      {"RTX 4090", 165e12}, {"A10G", 70e12},
  };
  for (const auto& [key, peak] : table)
    if (name.find(key) != std::string::npos) return peak;
  return 0;
}

double cpu_peak_flops() {
  double mhz = 0;
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("cpu MHz", 0) == 0) {
      std::istringstream(line.substr(line.find(':') + 1)) >> mhz;
      break;
    }
  }
  if (mhz <= 0) mhz = 2000;
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  return cores * mhz * 1e6 * 32.0;
}

}  // namespace loom
