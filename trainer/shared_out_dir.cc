#include "trainer/shared_out_dir.h"

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "core/error.h"
#include "core/tensor.h"

namespace loom {
namespace {

constexpr size_t kFieldBytes = 256;

std::string host_name() {
  char name[256] = {0};
  if (gethostname(name, sizeof name - 1) != 0) return "?";
  return name;
}

std::string random_nonce() {
  std::random_device device;
  std::ostringstream s;
  for (int i = 0; i < 4; ++i) s << std::hex << device();
  s << "-" << host_name() << "-" << getpid();
  return s.str();
}

}  // namespace

void check_out_dir_shared(const std::string& out_dir, MpiCommunicator& world) {
  const std::string path = out_dir + "/.loom_shared_check";
  // Rank 0's nonce and host, or its error (an empty nonce then), broadcast as fixed-size fields.
  char nonce[kFieldBytes] = {0}, rank0_host[kFieldBytes] = {0}, rank0_error[kFieldBytes] = {0};
  if (world.rank() == 0) {
    std::snprintf(rank0_host, sizeof rank0_host, "%s", host_name().c_str());
    const std::string mine = random_nonce();
    std::error_code ec;
    std::filesystem::create_directories(out_dir, ec);
    std::ofstream out(path, std::ios::trunc);
    out << mine;
    out.close();
    if (ec || !out)
      std::snprintf(rank0_error, sizeof rank0_error, "%s", ec ? ec.message().c_str() : "cannot write it");
    else
      std::snprintf(nonce, sizeof nonce, "%s", mine.c_str());
  }
  world.broadcast_bytes(nonce, sizeof nonce, 0);
  world.broadcast_bytes(rank0_host, sizeof rank0_host, 0);
  world.broadcast_bytes(rank0_error, sizeof rank0_error, 0);
  if (rank0_error[0] != 0) fail("train.out_dir ", out_dir, ": rank 0 cannot create ", path, ": ", rank0_error);

  // A network filesystem may show a new file on other hosts a little later: retry for up to 5 s.
  std::string seen;
  bool ok = false, found = false;
  for (int attempt = 0; attempt < 50 && !ok; ++attempt) {
    if (attempt > 0) usleep(100 * 1000);
    std::ifstream in(path);
    found = static_cast<bool>(in);
    seen.clear();
    if (in) std::getline(in, seen, '\0');
    ok = seen == nonce;
  }
  // One slot per rank, 1 where the rank could not read the nonce: every rank learns which ranks failed.
  Tensor failed = Tensor::zeros({world.size()}, DType::F32);
  failed.data<float>()[world.rank()] = ok ? 0.0f : 1.0f;
  world.all_reduce(failed);
  if (world.rank() == 0) std::filesystem::remove(path);
  std::string failed_ranks;
  for (int r = 0; r < world.size(); ++r)
    if (failed.data<float>()[r] != 0.0f) failed_ranks += (failed_ranks.empty() ? "" : ", ") + std::to_string(r);
  if (failed_ranks.empty()) return;
  std::string here;
  if (!ok)
    here = "; this rank, on host " + host_name() + ", " +
           (found ? "found another run's file there" : "finds no such file");
  fail("train.out_dir ", out_dir, " is not shared by every host: rank(s) ", failed_ranks, " cannot read ", path,
       " that rank 0 on host ", rank0_host, " wrote", here,
       ". Rank 0 writes the checkpoints and every rank reads them on resume: put train.out_dir on a filesystem "
       "every host mounts at the same path (use an absolute path)");
}

}  // namespace loom
