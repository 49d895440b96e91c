// Tensor-parallel shards of parameters: slicing a full tensor for each rank and reassembling it, against
// index arithmetic written out per layout (column-parallel QKV sections along dim 0, row-parallel along dim 1).
#include <gtest/gtest.h>

#include <cmath>

#include "core/rng.h"
#include "trainer/parameters.h"

namespace loom {
namespace {

Tensor random_tensor(const Shape& shape, uint64_t seed) {
  PhiloxStream rng(seed, 0);
  Tensor t = Tensor::empty(shape, DType::F32);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = rng.normal();
  return t;
}

// QKV of 3 heads per rank (q, k: 2 dims per head; v: 3 dims per head) on 2 ranks, 5 input features: the full
// rows are [q: 12 | k: 12 | v: 18]; rank r holds rows r·6..r·6+5 of q, of k, and r·9..r·9+8 of v.
TEST(ParameterSharding, ColumnParallelSectionsRoundTrip) {
  const int R = 2;
  ParamSpec spec{"blocks.0.attn.qkv.weight", {6 + 6 + 9, 5}, true, Init::Normal, 0.02, ParamSharding{0, {6, 6, 9}}};
  EXPECT_EQ(full_shape(spec, R), (Shape{42, 5}));
  const Tensor full = random_tensor({42, 5}, 11);
  Tensor parts = Tensor::empty({2 * 21 * 5}, DType::F32);
  parts.fill_(std::nan(""));
  for (int r = 0; r < R; ++r) {
    const Tensor local = shard_of_full(spec, full, r, R);
    ASSERT_EQ(local.shape(), spec.shape);
    const int64_t starts[3] = {r * 6, 12 + r * 6, 24 + r * 9}, sizes[3] = {6, 6, 9};
    int64_t row = 0;
    for (int s = 0; s < 3; ++s)
      for (int64_t j = 0; j < sizes[s]; ++j, ++row)
        for (int64_t c = 0; c < 5; ++c)
          EXPECT_EQ(local.item(row * 5 + c), full.item((starts[s] + j) * 5 + c)) << "rank " << r << " row " << row;
    parts.slice_flat(r * local.numel(), {local.numel()}).copy_from(local);
  }
  const Tensor back = full_from_shards(spec, parts, R);
  ASSERT_EQ(back.shape(), full.shape());
  for (int64_t i = 0; i < full.numel(); ++i) EXPECT_EQ(back.item(i), full.item(i)) << i;
}

// A row-parallel weight [C=3, M] split along its input columns over 3 ranks (M = 3·4 = 12, ragged C).
TEST(ParameterSharding, RowParallelColumnsRoundTrip) {
  const int R = 3;
  ParamSpec spec{"blocks.0.mlp.fc2.weight", {3, 4}, true, Init::Normal, 0.02, ParamSharding{1, {4}}};
  const Tensor full = random_tensor({3, 12}, 12);
  Tensor parts = Tensor::empty({R * 12}, DType::F32);
  for (int r = 0; r < R; ++r) {
    const Tensor local = shard_of_full(spec, full, r, R);
    for (int64_t o = 0; o < 3; ++o)
      for (int64_t j = 0; j < 4; ++j) EXPECT_EQ(local.item(o * 4 + j), full.item(o * 12 + r * 4 + j));
    parts.slice_flat(r * 12, {12}).copy_from(local);
  }
  const Tensor back = full_from_shards(spec, parts, R);
  for (int64_t i = 0; i < full.numel(); ++i) EXPECT_EQ(back.item(i), full.item(i)) << i;
}

TEST(ParameterSharding, ReplicatedIsTheWholeTensorAndShapesAreChecked) {
  ParamSpec spec{"norm.weight", {7}, false, Init::Ones};
  const Tensor full = random_tensor({7}, 13);
  const Tensor local = shard_of_full(spec, full, 1, 2);
  for (int64_t i = 0; i < 7; ++i) EXPECT_EQ(local.item(i), full.item(i));
  ParamSpec sharded{"wte.weight", {4, 2}, true, Init::Normal, 0.02, ParamSharding{0, {4}}};
  try {
    shard_of_full(sharded, random_tensor({4, 2}, 1), 0, 2);
    FAIL() << "expected a shape error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("wte.weight"), std::string::npos) << e.what();
  }
}

// A tensor-parallel rank's initial weights are its slice of the single-process weights.
TEST(ParameterSharding, InitialisationSlicesTheSingleProcessValues) {
  std::vector<ParamSpec> full_specs = {{"a", {8, 3}, true, Init::Normal, 0.5}, {"b", {3}, false, Init::Ones}};
  std::vector<ParamSpec> local_specs = {{"a", {4, 3}, true, Init::Normal, 0.5, ParamSharding{0, {4}}},
                                        {"b", {3}, false, Init::Ones}};
  ParameterStore full(ParameterLayout(full_specs), DType::F32, DType::F32, Device::cpu());
  full.initialise(99);
  for (int r = 0; r < 2; ++r) {
    ParameterStore local(ParameterLayout(local_specs), DType::F32, DType::F32, Device::cpu());
    local.initialise(99, r, 2);
    const Tensor a = local.master_weight("a"), fa = full.master_weight("a");
    for (int64_t i = 0; i < 12; ++i) EXPECT_EQ(a.item(i), fa.item(r * 12 + i));
    EXPECT_EQ(local.master_weight("b").item(2), 1.0);
  }
}

// Element i of parameter p is draw i of Philox stream p (std · normal, rounded once to the master dtype), the
// compute copy is the master cast to its dtype, and the values do not depend on the thread count: checked
// against one sequential stream per parameter on a parameter large enough for the parallel loop.
TEST(ParameterInitialisation, ElementIIsDrawIOfTheParametersStream) {
  const std::vector<ParamSpec> specs = {{"big", {700, 301}, true, Init::Normal, 0.3},
                                        {"zeros", {5}, false, Init::Zeros},
                                        {"small", {3, 7}, true, Init::Normal, 2.0},
                                        {"ones", {4}, false, Init::Ones}};
  ParameterStore store(ParameterLayout(specs), DType::F32, DType::BF16, Device::cpu());
  store.initialise(1234);
  const Tensor compute = store.compute();
  auto as_bf16 = [](double x) { return Tensor::from_vector({static_cast<float>(x)}, {1}).cast(DType::BF16).item(0); };
  // Streams are numbered in the layout's order (decayed parameters first), not the specs' order.
  for (size_t p = 0; p < store.layout().entries().size(); ++p) {
    const ParamEntry& e = store.layout().entries()[p];
    const ParamSpec& spec = e.spec;
    const Tensor w = store.master_weight(spec.name);
    PhiloxStream rng(1234, p);
    for (int64_t i = 0; i < e.numel; ++i) {
      const double expected = spec.init == Init::Normal ? static_cast<float>(spec.init_std * rng.normal())
                              : spec.init == Init::Ones  ? 1.0
                                                         : 0.0;
      ASSERT_EQ(w.item(i), expected) << spec.name << " element " << i;
      ASSERT_EQ(compute.item(e.offset + i), as_bf16(expected))
          << spec.name << " compute copy, element " << i;
    }
  }
}

}  // namespace
}  // namespace loom
