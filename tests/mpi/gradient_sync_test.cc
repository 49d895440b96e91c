// GradientSync on its own: buckets that start reducing during the backward, no reduction on accumulation
// micro-steps but the last, and ZeRO-1 shards; plus the tensor-parallel width checks.
//
// Each rank of the data group computes gradients of a tiny GPT on its own micro-batch; the reference (computed
// locally by every rank) is one model's gradient on all ranks' micro-batches together, in float64 master
// weights so that only the distributed run's float32 rounding is measured.
#include <gtest/gtest.h>

#include <cmath>

#include "core/config.h"
#include "core/rng.h"
#include "tests/mpi/mpi_test_util.h"
#include "trainer/models/gpt.h"
#include "trainer/gradient_sync.h"

namespace loom::testing {
namespace {

ModelShape tiny_gpt() {
  config::ModelConfig m;
  m.set_kind("gpt");
  m.set_n_layer(3);
  m.set_d_model(8);
  m.set_n_head(2);
  m.set_mlp_dim(16);
  m.set_vocab_size(50);
  m.set_max_seq_len(6);
  return model_shape_from_config(m);
}

// Micro-batch `index` of `rows` sequences: a pure function of (seed, index).
Batch micro_batch(uint64_t seed, int64_t index, int64_t rows, int64_t seq) {
  PhiloxStream rng(seed, static_cast<uint64_t>(index));
  std::vector<int32_t> in, tgt;
  for (int64_t i = 0; i < rows * seq; ++i) {
    in.push_back(static_cast<int32_t>(rng.below(50)));
    tgt.push_back(static_cast<int32_t>(rng.below(50)));
  }
  return {Tensor::from_ints(in, {rows, seq}), Tensor::from_ints(tgt, {rows, seq})};
}

// Concatenation of micro-batches (rows of several ranks) into one.
Batch concat(const std::vector<Batch>& parts) {
  std::vector<int32_t> in, tgt;
  int64_t rows = 0, seq = parts[0].inputs.dim(1);
  for (const Batch& b : parts) {
    for (int64_t i = 0; i < b.inputs.numel(); ++i) {
      in.push_back(b.inputs.data<int32_t>()[i]);
      tgt.push_back(b.targets.data<int32_t>()[i]);
    }
    rows += b.inputs.dim(0);
  }
  return {Tensor::from_ints(in, {rows, seq}), Tensor::from_ints(tgt, {rows, seq})};
}

// Two accumulation micro-steps on every data rank with 256-byte buckets; gradients must equal the mean over the
// global batch of both micro-steps, and buckets must start before the backward ends.
void check_sync(bool zero1) {
  MpiCommunicator& world = test_world();
  const uint64_t seed = shared_seed(world);
  const int D = world.size(), d = world.rank();
  const int64_t rows = 2, seq = 6, accum = 2;
  auto backend = make_backend(Device::cpu());
  GptModel model(tiny_gpt(), *backend, DType::F32, DType::F32, seq, 5);
  GradientSync sync(model.params(), *backend, &world, nullptr, /*bucket_bytes=*/256, zero1);
  ASSERT_GT(sync.bucket_count(), 3u);
  size_t started_before_end = 0;
  model.set_grad_ready_hook([&](const std::string& prefix) {
    sync.on_grads_ready(prefix);
    if (prefix == "blocks.0.") started_before_end = sync.started_buckets();
  });
  backend->zero(model.params().grads());
  for (int64_t micro = 0; micro < accum; ++micro) {
    sync.arm(micro == accum - 1);
    model.forward_backward(micro_batch(seed, micro * D + d, rows, seq), 1.0 / accum);
    if (micro < accum - 1) {
      EXPECT_EQ(sync.started_buckets(), 0u) << "a bucket reduced on an accumulation step";
    }
  }
  EXPECT_GT(started_before_end, 0u) << "no bucket started during the backward";
  EXPECT_LT(started_before_end, sync.bucket_count()) << "the embedding bucket cannot be ready before the end";
  sync.finish();
  EXPECT_EQ(sync.started_buckets(), sync.bucket_count());

  GptModel reference(tiny_gpt(), *backend, DType::F64, DType::F64, seq, 5);
  backend->zero(reference.params().grads());
  for (int64_t micro = 0; micro < accum; ++micro) {
    std::vector<Batch> parts;
    for (int r = 0; r < D; ++r) parts.push_back(micro_batch(seed, micro * D + r, rows, seq));
    reference.forward_backward(concat(parts), 1.0 / accum);
  }
  const Tensor want = reference.params().grads();
  const Tensor got = zero1 ? sync.shard_grads() : model.params().grads();
  double max_ref = 0;
  for (int64_t i = 0; i < want.numel(); ++i) max_ref = std::max(max_ref, std::abs(want.item(i)));
  // Every arena element is owned by exactly one data rank under ZeRO-1 (by this one without).
  int64_t owned = 0;
  for (const ArenaRange& r : sync.owned_ranges()) {
    owned += r.length;
    for (int64_t i = 0; i < r.length; ++i)
      ASSERT_NEAR(got.item(r.offset + i), want.item(r.begin + i), 2e-5 * max_ref) << "arena element " << r.begin + i;
  }
  Tensor owned_total = Tensor::from_vector({static_cast<float>(owned)}, {1}, DType::F64);
  world.all_reduce(owned_total);
  EXPECT_EQ(owned_total.item(0), static_cast<double>(want.numel() * (zero1 ? 1 : world.size())));
  // The global norm counts every element once, whichever rank holds it.
  double norm = 0;
  for (int64_t i = 0; i < want.numel(); ++i) norm += want.item(i) * want.item(i);
  EXPECT_NEAR(sync.grad_norm(), std::sqrt(norm), 1e-4 * std::sqrt(norm));
}

TEST(GradientSync, BucketsReduceDuringTheBackwardOnTheLastMicroStep) { check_sync(false); }
TEST(GradientSync, Zero1ReduceScattersShards) { check_sync(true); }

TEST(TensorParallelWidths, IndivisibleHeadsAndMlpNameTheBlock) {
  MpiCommunicator& world = test_world();
  std::unique_ptr<Communicator> pair = world.split(world.rank() / 2, world.rank());
  TensorParallelContext tp{pair.get(), false};
  auto backend = make_backend(Device::cpu());
  ModelShape shape = tiny_gpt();
  shape.blocks[1].heads = 3;
  try {
    GptModel model(shape, *backend, DType::F32, DType::F32, 6, 1, &tp);
    FAIL() << "expected an error for 3 heads over 2 tensor ranks";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.blocks[1].heads"), std::string::npos) << e.what();
  }
  shape = tiny_gpt();
  shape.blocks[2].mlp_dim = 15;
  try {
    GptModel model(shape, *backend, DType::F32, DType::F32, 6, 1, &tp);
    FAIL() << "expected an error for mlp_dim 15 over 2 tensor ranks";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.blocks[2].mlp_dim"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace loom::testing
