// Pruning on the GPU: the saliency accumulator's per-unit sums from a CUDA GPT (f32 and bf16 compute) against the
// float64 CPU model with the same weights, bit-identical on a repeat (every data rank decides alike), and a latency
// table built with CUDA events (key, grid, positive values; no timing is asserted).
#include <numeric>

#include "core/config.h"
#include "tests/gpu/cuda_backend_test_util.h"
#include "trainer/models/gpt.h"
#include "trainer/pruning/latency_table.h"
#include "trainer/pruning/saliency.h"

namespace loom::testing_cuda {
namespace {

std::vector<int32_t> identity(int64_t n) {
  std::vector<int32_t> v(static_cast<size_t>(n));
  std::iota(v.begin(), v.end(), 0);
  return v;
}

class CudaPruningSaliencyTest : public CudaBackendTest, public ::testing::WithParamInterface<DType> {};

TEST_P(CudaPruningSaliencyTest, UnitSumsMatchTheCpuModel) {
  const DType compute = GetParam();
  ModelShape shape;
  shape.kind = "gpt";
  shape.vocab = 77;
  shape.padded_vocab = pad_vocab(shape.vocab);
  shape.max_seq = 16;
  shape.d_model = 32;
  shape.blocks = {BlockWidths{4, 8, 8, 64}, BlockWidths{2, 16, 12, 40}};
  shape.init_std = 0.1;
  const int64_t B = 3, T = 13;
  Batch host;
  host.inputs = Tensor::from_ints(ints(B * T, 0, 76), {B, T});
  host.targets = Tensor::from_ints(ints(B * T, 0, 76), {B, T});
  Batch dev{on_gpu(host.inputs), on_gpu(host.targets)};
  GptModel ref(shape, *cpu_, DType::F64, DType::F64, T, 11);
  GptModel model(shape, *gpu_, DType::F32, compute, T, 11);
  cpu_->zero(ref.params().grads());
  gpu_->zero(model.params().grads());
  ref.forward_backward(host, 1.0);
  model.forward_backward(dev, 1.0);

  // Block 0's MLP neurons (fc2.weight's columns: the column path) and block 1's v dims shared by its 2 heads.
  std::vector<int32_t> v_rows(2 * 2 * 16, -1), proj_cols;
  for (int h = 0; h < 2; ++h)
    for (int d = 0; d < 12; ++d) {
      v_rows.push_back(d);
      proj_cols.push_back(d);
    }
  const std::vector<SaliencyStructure> structures{
      {"blocks.0.mlp", 64,
       {{"blocks.0.mlp.fc1.weight", 0, identity(64)}, {"blocks.0.mlp.fc1.bias", 0, identity(64)},
        {"blocks.0.mlp.fc2.weight", 1, identity(64)}}},
      {"blocks.1.v_dim", 12,
       {{"blocks.1.attn.qkv.weight", 0, v_rows}, {"blocks.1.attn.qkv.bias", 0, v_rows},
        {"blocks.1.attn.proj.weight", 1, proj_cols}}}};
  SaliencyAccumulator acc(structures, SaliencyKind::Taylor2, model.params().layout());
  const auto expected = acc.unit_sums(*cpu_, ref.params());
  const auto got = acc.unit_sums(*gpu_, model.params());
  const double tol = compute == DType::F32 ? 1e-3 : 5e-2;
  for (size_t s = 0; s < structures.size(); ++s) {
    double scale = 0;
    for (double x : expected[s]) scale = std::max(scale, std::fabs(x));
    ASSERT_GT(scale, 0);
    for (size_t u = 0; u < expected[s].size(); ++u)
      EXPECT_NEAR(got[s][u], expected[s][u], tol * scale) << structures[s].name << " unit " << u;
  }
  EXPECT_EQ(acc.unit_sums(*gpu_, model.params()), got) << "saliency sums differ between two identical calls";
}

INSTANTIATE_TEST_SUITE_P(Dtypes, CudaPruningSaliencyTest, ::testing::Values(DType::F32, DType::BF16),
                         dtype_param_name);

TEST_F(CudaBackendTest, LatencyTableOnTheGpu) {
  const config::RunConfig cfg = parse_run_config(R"(
model: {kind: vit, n_layer: 2, d_model: 128, n_head: 2, head_dim: 64, mlp_dim: 256, image_size: 28, patch_size: 7,
        in_channels: 1, num_classes: 10}
data: {train: unused, batch_size: 16}
train: {max_steps: 1, device: cuda, dtype: bf16}
prune: {embedding_group: 64, qk_group: 32, v_group: 32, mlp_group: 128,
        latency_grid: {points_per_axis: 2, warmup: 1, repeats: 3}}
)",
                                                 "gpu_table.yaml");
  const LatencyTable t = build_latency_table(cfg, *gpu_);
  EXPECT_EQ(t.key(), latency_key_for(cfg, *gpu_));
  EXPECT_EQ(t.key().dtype, "bf16");
  EXPECT_EQ(t.key().device.find("cuda:"), std::string::npos) << t.key().device;  // the model name, no index
  EXPECT_EQ(t.grid().points(), 32);
  for (double v : t.block_values()) EXPECT_GT(v, 0);
  EXPECT_GT(t.model_ms(128, {{2, 64, 64, 256}, {1, 32, 32, 128}}), 0);
}

}  // namespace
}  // namespace loom::testing_cuda
