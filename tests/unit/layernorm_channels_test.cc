// LayerNorm over the active channels of a row whose masked channels are zero (Backend::layernorm_forward's
// `channels`): f64 CPU, against the plain LayerNorm of the row without the masked channels.
#include <gtest/gtest.h>

#include <cmath>

#include "core/rng.h"
#include "kernels/backend.h"

namespace loom {
namespace {

TEST(LayerNormChannels, EqualsTheLayerNormOfTheActiveChannelsAlone) {
  auto be = make_backend(Device::cpu());
  const int64_t N = 5, C = 9;
  const std::vector<int64_t> active = {0, 2, 3, 5, 6, 7};  // channels 1, 4 and 8 are masked
  const int64_t K = static_cast<int64_t>(active.size());
  PhiloxStream rng(3, 0);
  auto random = [&](const Shape& shape, double mean) {
    Tensor t = Tensor::empty(shape, DType::F64);
    for (int64_t i = 0; i < t.numel(); ++i) t.data<double>()[i] = mean + rng.normal();
    return t;
  };
  // Full rows (masked channels zero, w and b zero there) and the compact rows of the active channels.
  Tensor x = random({N, C}, 2.0), w = random({C}, 1.0), b = random({C}, 0.0), dout = random({N, C}, 0.0);
  Tensor xs = Tensor::empty({N, K}, DType::F64), ws = Tensor::empty({K}, DType::F64),
         bs = Tensor::empty({K}, DType::F64), douts = Tensor::empty({N, K}, DType::F64);
  std::vector<bool> on(C, false);
  for (int64_t k : active) on[k] = true;
  for (int64_t c = 0; c < C; ++c)
    if (!on[c]) {
      w.data<double>()[c] = b.data<double>()[c] = 0;
      for (int64_t n = 0; n < N; ++n) x.data<double>()[n * C + c] = 0;
    }
  for (int64_t j = 0; j < K; ++j) {
    ws.data<double>()[j] = w.data<double>()[active[j]];
    bs.data<double>()[j] = b.data<double>()[active[j]];
    for (int64_t n = 0; n < N; ++n) {
      xs.data<double>()[n * K + j] = x.data<double>()[n * C + active[j]];
      douts.data<double>()[n * K + j] = dout.data<double>()[n * C + active[j]];
    }
  }
  Tensor out = Tensor::empty({N, C}, DType::F64), mean = Tensor::empty({N}, DType::F64),
         rstd = Tensor::empty({N}, DType::F64);
  Tensor outs = Tensor::empty({N, K}, DType::F64), means = Tensor::empty({N}, DType::F64),
         rstds = Tensor::empty({N}, DType::F64);
  be->layernorm_forward(out, mean, rstd, x, w, b, 1e-5, K);
  be->layernorm_forward(outs, means, rstds, xs, ws, bs, 1e-5);
  for (int64_t n = 0; n < N; ++n) {
    EXPECT_NEAR(mean.item(n), means.item(n), 1e-13);
    EXPECT_NEAR(rstd.item(n), rstds.item(n), 1e-12);
    for (int64_t c = 0; c < C; ++c)
      if (!on[c]) {
        EXPECT_EQ(out.item(n * C + c), 0.0);
      }
    for (int64_t j = 0; j < K; ++j) EXPECT_NEAR(out.item(n * C + active[j]), outs.item(n * K + j), 1e-12);
  }
  Tensor dx = Tensor::zeros({N, C}, DType::F64), dw = Tensor::zeros({C}, DType::F64),
         db = Tensor::zeros({C}, DType::F64);
  Tensor dxs = Tensor::zeros({N, K}, DType::F64), dws = Tensor::zeros({K}, DType::F64),
         dbs = Tensor::zeros({K}, DType::F64);
  be->layernorm_backward(dx, dw, db, dout, x, w, mean, rstd, K);
  be->layernorm_backward(dxs, dws, dbs, douts, xs, ws, means, rstds);
  for (int64_t j = 0; j < K; ++j) {
    EXPECT_NEAR(dw.item(active[j]), dws.item(j), 1e-12);
    EXPECT_NEAR(db.item(active[j]), dbs.item(j), 1e-12);
    for (int64_t n = 0; n < N; ++n) EXPECT_NEAR(dx.item(n * C + active[j]), dxs.item(n * K + j), 1e-12);
  }
  // Without the count the statistics include the zeros and differ.
  Tensor plain = Tensor::empty({N, C}, DType::F64);
  be->layernorm_forward(plain, mean, rstd, x, w, b, 1e-5);
  EXPECT_GT(std::abs(plain.item(0) - out.item(0)), 1e-3);
  EXPECT_THROW(be->layernorm_forward(out, mean, rstd, x, w, b, 1e-5, C + 1), Error);
}

}  // namespace
}  // namespace loom
