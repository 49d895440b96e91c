// CudaBackend::slow_paths names exactly the fallbacks its dispatch takes, and the shared op contract
// (kernels/op_contract.h) holds on the GPU with the CUDA backend's dtypes. The CPU side:
// tests/unit/op_contract_test.cc.
#include <gtest/gtest.h>

#include "tests/gpu/cuda_backend_test_util.h"

namespace loom::testing_cuda {
namespace {

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

std::string message_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no loom::Error thrown)";
}

BlockKernelShape block(int64_t d_model, int64_t qk, int64_t v, int64_t mlp) {
  BlockKernelShape s;
  s.batch = 2;
  s.seq = 64;
  s.d_model = d_model;
  s.heads = 4;
  s.qk_dim = qk;
  s.v_dim = v;
  s.mlp_dim = mlp;
  return s;
}

std::vector<std::string> ops_of(const std::vector<SlowPath>& paths) {
  std::vector<std::string> ops;
  for (const SlowPath& p : paths) ops.push_back(p.op);
  return ops;
}

using Ops = std::vector<std::string>;

TEST_F(CudaBackendTest, SlowPathsNameEachFallbackAndItsRule) {
  // GPT-2 and the pruner's widths (multiples of 8, head dims ≤ 128, unequal q/k and v) are all fast in bf16.
  for (const auto& s : {block(768, 64, 64, 3072), block(48, 8, 24, 64), block(1024, 128, 40, 136)})
    EXPECT_TRUE(gpu_->slow_paths(s, DType::BF16).empty()) << s.d_model << " " << s.qk_dim << " " << s.v_dim;
  const auto odd_head = gpu_->slow_paths(block(768, 12, 64, 3072), DType::BF16);
  ASSERT_EQ(ops_of(odd_head), Ops{"attention"});
  EXPECT_TRUE(contains(odd_head[0].rule, "materialised")) << odd_head[0].rule;
  EXPECT_TRUE(contains(odd_head[0].rule, "q/k head dim 12")) << odd_head[0].rule;
  EXPECT_EQ(ops_of(gpu_->slow_paths(block(768, 64, 136, 3072), DType::BF16)), Ops{"attention"});
  EXPECT_EQ(ops_of(gpu_->slow_paths(block(1001, 64, 64, 3072), DType::BF16)), Ops{"layernorm"});
  EXPECT_EQ(ops_of(gpu_->slow_paths(block(12288, 64, 64, 3072), DType::BF16)), Ops{"layernorm"});
  EXPECT_TRUE(gpu_->slow_paths(block(2056, 64, 64, 3072), DType::BF16).empty());  // wide, a multiple of 8 only
  EXPECT_EQ(ops_of(gpu_->slow_paths(block(768, 64, 64, 3076), DType::BF16)), Ops{"mlp"});
  // f32 activations: no flash attention and no GELU epilogue.
  EXPECT_EQ(ops_of(gpu_->slow_paths(block(768, 64, 64, 3072), DType::F32)), (Ops{"attention", "mlp"}));
  // ViT's erf GELU never has the epilogue; that is not reported as a width's fault.
  BlockKernelShape vit = block(768, 64, 64, 3076);
  vit.gelu = GeluKind::Erf;
  vit.causal = false;
  EXPECT_TRUE(gpu_->slow_paths(vit, DType::BF16).empty());
}

TEST_F(CudaBackendTest, SharedContractWithTheGpuDtypes) {
  // bf16 activations are compute tensors here (not on the CPU); f64 is not.
  Tensor a = on_gpu(random_host({2, 8}, DType::BF16)), b = on_gpu(random_host({2, 8}, DType::BF16));
  Tensor out = poisoned({2, 8}, DType::BF16);
  EXPECT_NO_THROW(gpu_->add(out, a, b));
  Tensor wide = on_gpu(Tensor::zeros({2, 8}, DType::F64));
  const std::string f64 = message_of([&] { gpu_->add(out, a, wide); });
  EXPECT_TRUE(contains(f64, "add (cuda:0): b f64[2, 8] cuda:0 must be f32, bf16 or f16")) << f64;
  // LayerNorm statistics are f32 whatever the activations are.
  Tensor x = on_gpu(random_host({3, 16}, DType::BF16)), w = on_gpu(random_host({16}, DType::BF16));
  Tensor y = poisoned({3, 16}, DType::BF16), none;
  Tensor mean = poisoned({3}, DType::F32), rstd = poisoned({3}, DType::F32), mean_bf16 = poisoned({3}, DType::BF16);
  EXPECT_NO_THROW(gpu_->layernorm_forward(y, mean, rstd, x, w, none, 1e-5));
  const std::string stat = message_of([&] { gpu_->layernorm_forward(y, mean_bf16, rstd, x, w, none, 1e-5); });
  EXPECT_TRUE(contains(stat, "layernorm_forward (cuda:0): mean bf16[3] cuda:0 must be f32")) << stat;
  // A tensor on the other device is named as such.
  Tensor host = random_host({2, 8}, DType::BF16);
  EXPECT_TRUE(contains(message_of([&] { gpu_->add(out, a, host); }), "is not on cuda:0"));
  gpu_->synchronize();
}

}  // namespace
}  // namespace loom::testing_cuda
