#include "tests/common/model_testing.h"

#include <gtest/gtest.h>

#include <cmath>

namespace loom::testing {

ModelShape tiny_gpt_shape(std::vector<BlockWidths> blocks, double init_std) {
  ModelShape s;
  s.kind = "gpt";
  s.vocab = 11;
  s.padded_vocab = pad_vocab(s.vocab);
  s.max_seq = 6;
  s.d_model = 8;
  s.blocks = std::move(blocks);
  s.init_std = init_std;
  return s;
}

ModelShape tiny_vit_shape(std::vector<BlockWidths> blocks, bool distilled, double init_std) {
  ModelShape s;
  s.kind = "vit";
  s.image_size = 6;
  s.patch_size = 3;
  s.in_channels = 2;
  s.num_classes = 5;
  s.d_model = 8;
  s.distilled = distilled;
  s.blocks = std::move(blocks);
  s.init_std = init_std;
  return s;
}

int64_t expect_gradient_matches_finite_differences(ParameterStore& params, const std::function<double()>& loss_at,
                                                   const std::function<int64_t(const ParamEntry&)>& elements) {
  const Tensor g = params.grads().to(Device::cpu());
  double* w = params.master().data<double>();
  const double h = 1e-6;
  double err2 = 0, ref2 = 0;
  int64_t checked = 0;
  for (const ParamEntry& e : params.layout().entries()) {
    const int64_t n = elements ? elements(e) : e.numel;
    for (int64_t i = 0; i < n; i += (n > 64 ? 3 : 1)) {
      const int64_t k = e.offset + i;
      const double saved = w[k];
      w[k] = saved + h;
      const double up = loss_at();
      w[k] = saved - h;
      const double down = loss_at();
      w[k] = saved;
      const double numeric = (up - down) / (2 * h), analytic = g.item(k);
      err2 += (numeric - analytic) * (numeric - analytic);
      ref2 += numeric * numeric;
      EXPECT_NEAR(analytic, numeric, 1e-6 + 1e-5 * std::fabs(numeric)) << e.spec.name << "[" << i << "]";
      ++checked;
    }
  }
  EXPECT_LT(std::sqrt(err2 / ref2), 1e-7);
  return checked;
}

LatencyTable multilinear_latency_table(const LatencyTableKey& key, const LatencyGrid& grid) {
  std::vector<double> block, fixed;
  for (int64_t E : grid.embedding) {
    fixed.push_back(0.01 * static_cast<double>(E));
    for (int64_t H : grid.heads)
      for (int64_t Q : grid.qk_dim)
        for (int64_t V : grid.v_dim)
          for (int64_t M : grid.mlp) block.push_back(1e-2 * (E * H * (2.0 * Q + V) + 2.0 * E * M) + 0.05);
  }
  return LatencyTable(key, grid, block, fixed);
}

Tensor dense_keep(const ArenaMask& mask) {
  auto cpu = make_backend(Device::cpu());
  Tensor ones = Tensor::empty({mask.arena_elements}, DType::F64);
  ones.fill_(1.0);
  apply_mask(*cpu, ones, mask);
  return ones;
}

}  // namespace loom::testing
