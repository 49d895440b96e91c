// The block structure map on f64 CPU models: for every axis of a GPT and a ViT/DeiT with unequal per-block
// widths (q/k dims != v dims, a distillation token), zeroing one index through the map (mask_model) gives the
// same loss and the same gradient of every remaining parameter as the shrunk model without that index.
// Also: tensor-parallel sharding derived from the map equals the blocks' declared sharding, and the
// selection contracts.
#include "trainer/models/structure_map.h"

#include <gtest/gtest.h>

#include <cmath>
#include <set>

#include "core/rng.h"
#include "kernels/backend.h"
#include "tests/common/model_testing.h"
#include "tests/common/test_util.h"
#include "trainer/models/gpt.h"
#include "trainer/models/vit.h"

namespace loom {
namespace {

ModelShape uneven_gpt() {
  return testing::tiny_gpt_shape({BlockWidths{3, 4, 2, 10}, BlockWidths{2, 3, 5, 7}, BlockWidths{1, 2, 3, 6}}, 0.4);
}

ModelShape uneven_deit() {
  ModelShape s = testing::tiny_vit_shape({BlockWidths{2, 3, 5, 7}, BlockWidths{3, 2, 4, 9}}, /*distilled=*/true, 0.4);
  s.ln_eps = 1e-6;
  return s;
}

std::unique_ptr<Model> make_model(const ModelShape& s, Backend& be) {
  if (s.is_gpt()) return std::make_unique<GptModel>(s, be, DType::F64, DType::F64, /*seq=*/5, /*seed=*/1);
  return std::make_unique<VitModel>(s, be, DType::F64, DType::F64, /*seed=*/1, /*label_smoothing=*/0.1);
}

Batch make_batch(const ModelShape& s) {
  PhiloxStream rng(99, 0);
  Batch b;
  if (s.is_gpt()) {
    std::vector<int32_t> ids(10), targets(10);
    for (auto& t : ids) t = static_cast<int32_t>(rng.below(s.vocab));
    for (auto& t : targets) t = static_cast<int32_t>(rng.below(s.vocab));
    b.inputs = Tensor::from_ints(ids, {2, 5});
    b.targets = Tensor::from_ints(targets, {2, 5});
  } else {
    std::vector<float> patches(static_cast<size_t>(3 * s.patches() * s.patch_dim()));
    for (auto& v : patches) v = static_cast<float>(rng.normal());
    b.inputs = Tensor::from_vector(patches, {3, s.patches(), s.patch_dim()}).cast(DType::F64);
    b.targets = Tensor::from_ints({1, 4, 0}, {3});
  }
  return b;
}

// Random values for every parameter (LayerNorm weights around 1, everything else around 0, biases included),
// so every slice carries signal.
NamedTensors random_weights(const Model& model) {
  NamedTensors out;
  PhiloxStream rng(5, 0);
  for (const ParamEntry& e : const_cast<Model&>(model).params().layout().entries()) {
    Tensor t = Tensor::empty(e.spec.shape, DType::F64);
    const bool norm_weight = e.spec.init == Init::Ones;
    for (int64_t i = 0; i < t.numel(); ++i) t.data<double>()[i] = (norm_weight ? 1.0 : 0.0) + 0.4 * rng.normal();
    out.emplace_back(e.spec.name, t);
  }
  return out;
}

struct Run {
  double loss = 0;
  NamedTensors grads;
};

Run loss_and_grads(Model& model, const Batch& batch) {
  model.backend().zero(model.params().grads());
  Run r;
  r.loss = model.forward_backward(batch, 1.0);
  for (const ParamEntry& e : model.params().layout().entries()) {
    Tensor g = Tensor::empty(e.spec.shape, DType::F64);
    g.copy_from(model.params().grad(e.spec.name));
    r.grads.emplace_back(e.spec.name, g);
  }
  return r;
}

double max_abs(const Tensor& t) {
  double m = 0;
  for (int64_t i = 0; i < t.numel(); ++i) m = std::max(m, std::abs(t.item(i)));
  return m;
}

// For every axis and a few indices of it: masked model == shrunk model (loss and remaining gradients).
void check_every_axis(const ModelShape& shape) {
  auto be = make_backend(Device::cpu());
  const StructureMap map = structure_map(shape);
  const Batch batch = make_batch(shape);
  auto reference = make_model(shape, *be);
  const NamedTensors weights = random_weights(*reference);
  reference->params().load_named(weights, "random weights");
  const double full_loss = loss_and_grads(*reference, batch).loss;
  ASSERT_EQ(map.axes().size(), 1 + 4 * shape.blocks.size());
  int checked = 0;
  for (const Axis& axis : map.axes()) {
    std::set<int64_t> indices = {0, axis.size / 2, axis.size - 1};
    for (int64_t index : indices) {
      if (axis.size == 1) continue;  // an axis must keep one index
      SCOPED_TRACE(axis.name + " index " + std::to_string(index));
      const AxisSelection sel = delete_one(map, axis.name, index);

      auto masked = make_model(shape, *be);
      masked->params().load_named(weights, "random weights");
      mask_model(*masked, map, sel);
      const Run m = loss_and_grads(*masked, batch);

      const ModelShape small = shrink_shape(shape, map, sel);
      auto shrunk = make_model(small, *be);
      shrunk->params().load_named(shrink_tensors(weights, map, sel), "shrunk weights");
      const Run s = loss_and_grads(*shrunk, batch);

      EXPECT_NE(m.loss, full_loss) << "deleting the index changes nothing: the check would be vacuous";
      EXPECT_NEAR(m.loss, s.loss, 1e-12 * std::abs(s.loss));
      const NamedTensors remaining = shrink_tensors(m.grads, map, sel);
      ASSERT_EQ(remaining.size(), s.grads.size());
      for (size_t i = 0; i < remaining.size(); ++i) {
        ASSERT_EQ(remaining[i].first, s.grads[i].first);
        ASSERT_EQ(remaining[i].second.shape(), s.grads[i].second.shape()) << remaining[i].first;
        const double scale = std::max(1.0, max_abs(s.grads[i].second));
        for (int64_t k = 0; k < s.grads[i].second.numel(); ++k)
          ASSERT_NEAR(remaining[i].second.item(k), s.grads[i].second.item(k), 1e-11 * scale)
              << s.grads[i].first << " element " << k;
      }
      ++checked;
    }
  }
  EXPECT_GE(checked, static_cast<int>(map.axes().size()));
}

TEST(StructureMap, GptMaskedEqualsShrunkOnEveryAxis) { check_every_axis(uneven_gpt()); }

TEST(StructureMap, DeitMaskedEqualsShrunkOnEveryAxis) { check_every_axis(uneven_deit()); }

TEST(StructureMap, ShrinkKeepsTheAttentionScaleAndCountsWidths) {
  const ModelShape shape = uneven_gpt();
  const StructureMap map = structure_map(shape);
  AxisSelection sel = {{"blocks.0.qk_dims", {0, 3}},
                       {"blocks.1.heads", {1}},
                       {"embedding", {0, 2, 3, 4, 7}},
                       {"blocks.2.mlp", {0, 5}},
                       {"blocks.1.v_dims", {0, 2, 4}}};
  const ModelShape small = shrink_shape(shape, map, sel);
  EXPECT_EQ(small.d_model, 5);
  EXPECT_EQ(small.blocks[0], (BlockWidths{3, 2, 2, 10, 0.5}));  // 1/sqrt(4) kept although q/k is 2 wide now
  EXPECT_EQ(small.blocks[1], (BlockWidths{1, 3, 3, 7, 1.0 / std::sqrt(3.0)}));
  EXPECT_EQ(small.blocks[2], (BlockWidths{1, 2, 3, 2, 1.0 / std::sqrt(2.0)}));
  auto be = make_backend(Device::cpu());
  auto model = make_model(shape, *be);
  const NamedTensors cut = shrink_tensors(model->params().named_master_weights(), map, sel);
  auto small_model = make_model(small, *be);
  EXPECT_NO_THROW(small_model->params().load_named(cut, "shrunk"));
  // Head 1 of block 1 is what survives: its q rows 3..5 of the original.
  const Tensor qkv = model->params().master_weight("blocks.1.attn.qkv.weight").to(Device::cpu());
  for (const auto& [name, t] : cut)
    if (name == "blocks.1.attn.qkv.weight") {
      ASSERT_EQ(t.shape(), (Shape{3 + 3 + 3, 5}));
      EXPECT_EQ(t.item(0), qkv.item(3 * 8 + 0));  // row 3 (head 1, dim 0), channel 0
      EXPECT_EQ(t.item(1), qkv.item(3 * 8 + 2));  // channel 1 deleted: the next column is channel 2
    }
}

TEST(StructureMap, TensorShardingIsAContiguousRangeOfAnAxis) {
  const BlockWidths w{4, 3, 5, 12};
  const std::vector<Axis> axes = block_axes(0, w);
  const ParamSharding qkv = sharding_from_axis(axes[0], "blocks.0.attn.qkv.weight", {4 * (3 + 3 + 5), 8}, 2);
  EXPECT_EQ(qkv.dim, 0);
  EXPECT_EQ(qkv.local_sections, (std::vector<int64_t>{6, 6, 10}));
  const ParamSharding proj = sharding_from_axis(axes[0], "blocks.0.attn.proj.weight", {8, 20}, 2);
  EXPECT_EQ(proj.dim, 1);
  EXPECT_EQ(proj.local_sections, (std::vector<int64_t>{10}));
  const ParamSharding fc2 = sharding_from_axis(axes[3], "blocks.0.mlp.fc2.weight", {8, 12}, 4);
  EXPECT_EQ(fc2.local_sections, (std::vector<int64_t>{3}));
  EXPECT_EQ(testing::error_message([&] {
              sharding_from_axis(axes[0], "blocks.0.attn.qkv.weight", {44, 8}, 3);
            }),
            "tensor parallelism: axis 'blocks.0.heads' has 4 indices, which do not divide by parallel.tensor (3)");
  // q/k dims interleave across heads: not a contiguous shard.
  EXPECT_THROW(sharding_from_axis(axes[1], "blocks.0.attn.qkv.weight", {44, 8}, 1), Error);
}

TEST(StructureMap, SelectionsAreChecked) {
  const StructureMap map = structure_map(uneven_gpt());
  EXPECT_EQ(testing::error_message([&] {
              check_selection(map, {{"blocks.9.heads", {0}}});
            }),
            "structure map: no axis named 'blocks.9.heads'");
  EXPECT_EQ(testing::error_message([&] {
              check_selection(map, {{"blocks.0.heads", {}}});
            }),
            "selection of axis 'blocks.0.heads': keeps no index (at least one must stay)");
  EXPECT_EQ(testing::error_message([&] {
              check_selection(map, {{"blocks.0.heads", {2, 1}}});
            }),
            "selection of axis 'blocks.0.heads': kept indices must be ascending and unique, got 2 then 1");
  EXPECT_EQ(testing::error_message([&] {
              check_selection(map, {{"embedding", {8}}});
            }),
            "selection of axis 'embedding': index 8 is outside [0, 8)");
}

TEST(StructureMap, MaskZeroesExactlyTheOwnedPositions) {
  const ModelShape shape = uneven_gpt();
  const StructureMap map = structure_map(shape);
  auto be = make_backend(Device::cpu());
  auto model = make_model(shape, *be);
  const ArenaMask sparse = arena_mask(model->params().layout(), map, delete_one(map, "blocks.0.v_dims", 1));
  const Tensor mask = testing::dense_keep(sparse);
  // v dim 1 of 3 heads: 3 rows of qkv (weight: 8 columns each, bias: 1) and 3 columns of proj (8 rows each).
  double zeros = 0;
  for (int64_t i = 0; i < mask.numel(); ++i) zeros += mask.item(i) == 0;
  EXPECT_EQ(zeros, 3 * 8 + 3 + 3 * 8);
  int64_t parameters = 0;  // the arena's alignment padding is not a parameter
  for (const ParamEntry& e : model->params().layout().entries()) parameters += e.numel;
  EXPECT_EQ(sparse.kept_elements, parameters - static_cast<int64_t>(zeros));
  const auto& qkv = model->params().layout().entry("blocks.0.attn.qkv.weight");
  const int64_t v_row1_head2 = 2 * 3 * 4 + 2 * 2 + 1;  // after q and k (3 heads of 4), head 2, dim 1
  EXPECT_EQ(mask.item(qkv.offset + v_row1_head2 * 8 + 5), 0);
  EXPECT_EQ(mask.item(qkv.offset + (v_row1_head2 - 1) * 8 + 5), 1);
}

}  // namespace
}  // namespace loom
