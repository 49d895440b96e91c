// The ops' shared argument contract (kernels/op_contract.h) on the CPU backend, and the report of blocks that
// miss a backend's fast kernels (trainer/kernel_paths.h). The CUDA backend's side: tests/gpu/cuda_slow_paths_test.cc.
#include <gtest/gtest.h>

#include <sstream>

#include "kernels/backend.h"
#include "kernels/op_contract.h"
#include "tests/common/test_util.h"
#include "trainer/kernel_paths.h"

namespace loom {
namespace {

using testing::error_message;

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

TEST(OpContract, ErrorsNameTheOpTheDeviceAndTheTensor) {
  auto cpu = make_backend(Device::cpu());
  Tensor a = Tensor::zeros({2, 3}, DType::F32), b = Tensor::zeros({3, 2}, DType::F32), out = Tensor::zeros({2, 3}, DType::F32);
  const std::string shape = error_message([&] { cpu->add(out, a, b); });
  EXPECT_TRUE(contains(shape, "add (cpu): b f32[3, 2] cpu must have the shape of a f32[2, 3] cpu")) << shape;
  Tensor half = Tensor::zeros({2, 3}, DType::BF16);
  const std::string dtype = error_message([&] { cpu->add(out, a, half); });
  EXPECT_TRUE(contains(dtype, "add (cpu): b bf16[2, 3] cpu must be f32 or f64")) << dtype;
  Tensor none;
  EXPECT_TRUE(contains(error_message([&] { cpu->scale(none, 2); }), "scale (cpu): x is undefined"));
}

TEST(OpContract, TheCpuTakesF32AndF64ComputeAndAnyFloatWhereItOnlyReads) {
  auto cpu = make_backend(Device::cpu());
  for (const DType d : {DType::F32, DType::F64}) {
    Tensor x = Tensor::zeros({4}, d), y = Tensor::zeros({4}, d);
    EXPECT_NO_THROW(cpu->accumulate(x, y)) << dtype_name(d);
  }
  // convert and sum_squares read any float tensor (bf16 compute copies), and count them as such.
  Tensor master = Tensor::zeros({4}, DType::F32), half = Tensor::zeros({4}, DType::BF16);
  master.fill_(1.5);
  EXPECT_NO_THROW(cpu->convert(half, master));
  EXPECT_DOUBLE_EQ(cpu->sum_squares({half}), 4 * 2.25);
  Tensor ints = Tensor::from_ints({1, 2, 3, 4}, {4});
  EXPECT_TRUE(contains(error_message([&] { cpu->sum_squares({master, ints}); }),
                       "sum_squares (cpu): tensor 1 i32[4] cpu must be f32, f64, bf16 or f16"));
}

TEST(OpContract, TheCpuResidualStreamHasTheComputeDtype) {
  // An f32 residual stream beside narrower compute tensors is CUDA's (train.residual_dtype); the CPU's f32 and
  // f64 never mix.
  auto cpu = make_backend(Device::cpu());
  Tensor a = Tensor::zeros({2, 4}, DType::F32), b = Tensor::zeros({2, 4}, DType::F64), out = Tensor::zeros({2, 4}, DType::F32);
  EXPECT_TRUE(contains(error_message([&] { cpu->add(out, a, b); }),
                       "add (cpu): a f32[2, 4] cpu must have the dtype of b f64[2, 4] cpu"));
  Tensor y = Tensor::zeros({2, 4}, DType::F64), w = Tensor::zeros({4}, DType::F64);
  Tensor mean = Tensor::zeros({2}, DType::F32), rstd = Tensor::zeros({2}, DType::F32), no_bias;
  EXPECT_TRUE(contains(error_message([&] { cpu->layernorm_forward(y, mean, rstd, a, w, no_bias, 1e-5); }),
                       "layernorm_forward (cpu): x f32[2, 4] cpu must have the dtype of out f64[2, 4] cpu"));
  Tensor dx = Tensor::zeros({2, 4}, DType::F32), dw = Tensor::zeros({4}, DType::F64);
  EXPECT_TRUE(contains(error_message([&] { cpu->layernorm_backward(dx, dw, no_bias, y, a, w, mean, rstd); }),
                       "layernorm_backward (cpu): x f32[2, 4] cpu must have the dtype of dout f64[2, 4] cpu"));
}

TEST(OpContract, LayerNormStatisticsFollowTheInputOnTheCpuAndChannelsAreRangeChecked) {
  auto cpu = make_backend(Device::cpu());
  for (const DType d : {DType::F32, DType::F64}) {
    Tensor x = Tensor::zeros({3, 8}, d), out = Tensor::zeros({3, 8}, d), w = Tensor::zeros({8}, d);
    Tensor mean = Tensor::zeros({3}, d), rstd = Tensor::zeros({3}, d), no_bias;
    EXPECT_NO_THROW(cpu->layernorm_forward(out, mean, rstd, x, w, no_bias, 1e-5, 8));
    EXPECT_TRUE(contains(error_message([&] { cpu->layernorm_forward(out, mean, rstd, x, w, no_bias, 1e-5, 9); }),
                         "layernorm_forward (cpu): channels 9 must be in [1, 8] (0: all)"));
    const DType other = d == DType::F32 ? DType::F64 : DType::F32;
    Tensor wrong = Tensor::zeros({3}, other);
    EXPECT_TRUE(contains(error_message([&] { cpu->layernorm_forward(out, wrong, rstd, x, w, no_bias, 1e-5, 0); }),
                         "mean"));
  }
}

TEST(OpContract, LinearLayersRefuseAnEmptyInnerDimensionAndABiasGradientWithoutWeights) {
  auto cpu = make_backend(Device::cpu());
  Tensor x = Tensor::zeros({4, 0}, DType::F32), w = Tensor::zeros({3, 0}, DType::F32), out = Tensor::zeros({4, 3}, DType::F32), none;
  EXPECT_TRUE(contains(error_message([&] { cpu->matmul_forward(out, x, w, none); }), "empty inner dimension"));
  Tensor x2 = Tensor::zeros({4, 5}, DType::F32), w2 = Tensor::zeros({3, 5}, DType::F32), dout = Tensor::zeros({4, 3}, DType::F32);
  Tensor dbias = Tensor::zeros({3}, DType::F32), dx = Tensor::zeros({4, 5}, DType::F32);
  EXPECT_TRUE(contains(error_message([&] { cpu->matmul_backward(dx, none, dbias, dout, x2, w2); }),
                       "dbias f32[3] cpu needs dw"));
}

TEST(OpContract, TheCpuChecksTokenIdsOnTheHost) {
  auto cpu = make_backend(Device::cpu());
  Tensor table = Tensor::zeros({5, 2}, DType::F32), out = Tensor::zeros({3, 2}, DType::F32);
  EXPECT_TRUE(contains(error_message([&] { cpu->embedding_forward(out, Tensor::from_ints({0, 5, 1}, {3}), table); }),
                       "ids i32[3] cpu element 1 is 5, outside [0, 5)"));
}

TEST(SlowPaths, TheCpuBackendHasOnePathPerOp) {
  auto cpu = make_backend(Device::cpu());
  BlockKernelShape odd;
  odd.batch = 2;
  odd.seq = 7;
  odd.d_model = 1000;
  odd.heads = 3;
  odd.qk_dim = 12;
  odd.v_dim = 5;
  odd.mlp_dim = 33;
  EXPECT_TRUE(cpu->slow_paths(odd, DType::F32).empty());
}

ModelShape uneven_gpt() {
  ModelShape s;
  s.kind = "gpt";
  s.d_model = 48;
  s.vocab = 50;
  s.padded_vocab = 128;
  s.max_seq = 16;
  s.blocks = {{4, 12, 8, 96}, {2, 8, 8, 64}, {4, 12, 8, 96}, {2, 8, 8, 64}, {3, 16, 16, 128}};
  return s;
}

TEST(SlowPaths, EachDistinctBlockShapeIsReportedOnceWithEveryBlockOfIt) {
  std::vector<BlockKernelShape> asked;
  // A backend whose attention needs q/k head dims that are multiples of 8 and whose MLP needs mlp % 64 == 0.
  const SlowPathQuery query = [&](const BlockKernelShape& s, DType) {
    asked.push_back(s);
    std::vector<SlowPath> slow;
    if (s.qk_dim % 8 != 0) slow.push_back({"attention", "materialised: qk " + std::to_string(s.qk_dim)});
    if (s.mlp_dim % 64 != 0) slow.push_back({"mlp", "unfused: mlp " + std::to_string(s.mlp_dim)});
    return slow;
  };
  const auto slow = model_slow_paths(uneven_gpt(), 4, 16, 1, DType::BF16, query);
  EXPECT_EQ(asked.size(), 3u);  // three distinct shapes
  ASSERT_EQ(slow.size(), 1u);   // only blocks 0 and 2 (qk 12, mlp 96) miss a fast kernel
  EXPECT_EQ(slow[0].blocks, (std::vector<int64_t>{0, 2}));
  EXPECT_EQ(slow[0].shape.batch, 4);
  EXPECT_EQ(slow[0].shape.seq, 16);
  EXPECT_TRUE(slow[0].shape.causal);
  EXPECT_EQ(slow[0].paths.size(), 2u);
  std::ostringstream log;
  log_slow_paths(slow, log);
  EXPECT_EQ(log.str(),
            "slow path: blocks 0, 2 (heads 4, q/k dim 12, v dim 8, mlp 96, width 48): attention runs materialised: "
            "qk 12\n"
            "slow path: blocks 0, 2 (heads 4, q/k dim 12, v dim 8, mlp 96, width 48): mlp runs unfused: mlp 96\n");
}

TEST(SlowPaths, TensorParallelRanksAskForTheirShareAndViTsForTheirTokens) {
  std::vector<BlockKernelShape> asked;
  const SlowPathQuery record = [&](const BlockKernelShape& s, DType) {
    asked.push_back(s);
    return std::vector<SlowPath>{};
  };
  EXPECT_TRUE(model_slow_paths(uneven_gpt(), 2, 16, 2, DType::BF16, record).empty());
  ASSERT_EQ(asked.size(), 3u);
  EXPECT_EQ(asked[0].heads, 2);
  EXPECT_EQ(asked[0].mlp_dim, 48);
  ModelShape vit;
  vit.kind = "vit";
  vit.d_model = 32;
  vit.image_size = 28;
  vit.patch_size = 7;
  vit.in_channels = 1;
  vit.num_classes = 10;
  vit.blocks = {{2, 16, 16, 64}};
  asked.clear();
  model_slow_paths(vit, 3, 999, 1, DType::F32, record);
  ASSERT_EQ(asked.size(), 1u);
  EXPECT_EQ(asked[0].seq, 17);  // 16 patches + the class token
  EXPECT_FALSE(asked[0].causal);
  EXPECT_EQ(asked[0].gelu, GeluKind::Erf);
}

}  // namespace
}  // namespace loom
