// The pruning engine on an f64 CPU GPT with unequal per-block widths:
// - its saliency terms (built from the structure map) give, for single units of every axis kind and for the
//   embedding channel that touches every block, exactly the hand-computed (Σ g·w)² over the positions the
//   structure map says the unit owns, from the model's own gradients;
// - a pruning decision it takes (one-shot to a latency target on a multilinear cost table) masks the model so
//   that it computes what the shrunk model computes: loss and the gradient of every remaining parameter, and
//   the parameter count it reports is the shrunk model's; the AdamW moments of masked positions are zero.
#include "trainer/pruning/engine.h"

#include <gtest/gtest.h>

#include <cmath>

#include "core/config.h"
#include "core/rng.h"
#include "kernels/backend.h"
#include "tests/common/model_testing.h"
#include "tests/common/test_util.h"
#include "trainer/models/gpt.h"

namespace loom {
namespace {

ModelShape uneven_gpt() {
  return testing::tiny_gpt_shape({BlockWidths{3, 4, 2, 10}, BlockWidths{2, 3, 5, 7}}, 0.4);
}

Batch make_batch(const ModelShape& s, uint64_t seed) {
  PhiloxStream rng(seed, 0);
  std::vector<int32_t> ids(10), targets(10);
  for (auto& t : ids) t = static_cast<int32_t>(rng.below(s.vocab));
  for (auto& t : targets) t = static_cast<int32_t>(rng.below(s.vocab));
  return {Tensor::from_ints(ids, {2, 5}), Tensor::from_ints(targets, {2, 5})};
}

// LayerNorm weights around 1, everything else around 0, so every slice carries signal.
void randomise(GptModel& model) {
  PhiloxStream rng(5, 0);
  NamedTensors out;
  for (const ParamEntry& e : model.params().layout().entries()) {
    Tensor t = Tensor::empty(e.spec.shape, DType::F64);
    const bool norm_weight = e.spec.init == Init::Ones;
    for (int64_t i = 0; i < t.numel(); ++i) t.data<double>()[i] = (norm_weight ? 1.0 : 0.0) + 0.4 * rng.normal();
    out.emplace_back(e.spec.name, t);
  }
  model.params().load_named(out, "random weights");
}

// Σ g·w over every element of every parameter whose coordinate along a slice's dimension is one the map says
// `index` of `axis` owns (each element counted once).
double hand_gate_sum(const ParameterStore& p, const Axis& axis, int64_t index) {
  std::map<std::string, std::vector<char>> owned;
  for (const ParamSlice& slice : axis.slices) {
    const ParamEntry& e = p.layout().entry(slice.param);
    const Shape& shape = e.spec.shape;
    int64_t inner = 1;
    for (size_t d = slice.dim + 1; d < shape.size(); ++d) inner *= shape[d];
    std::vector<char>& mark = owned[slice.param];
    mark.resize(static_cast<size_t>(e.numel), 0);
    for (int64_t pos : owned_positions(slice, index))
      for (int64_t k = 0; k < e.numel; ++k)
        if ((k / inner) % shape[slice.dim] == pos) mark[static_cast<size_t>(k)] = 1;
  }
  double sum = 0;
  for (const auto& [name, mark] : owned) {
    const ParamEntry& e = p.layout().entry(name);
    for (int64_t k = 0; k < e.numel; ++k)
      if (mark[static_cast<size_t>(k)]) sum += p.master().item(e.offset + k) * p.grads().item(e.offset + k);
  }
  return sum;
}

TEST(PruningEngine, SaliencyOfAUnitIsTheSquaredHandSumOfItsGradientsTimesWeights) {
  auto be = make_backend(Device::cpu());
  const ModelShape shape = uneven_gpt();
  GptModel model(shape, *be, DType::F64, DType::F64, 5, 1);
  randomise(model);
  const StructureMap map = structure_map(shape);
  SaliencyAccumulator acc(saliency_structures(map, model.params().layout()), SaliencyKind::Taylor2,
                          model.params().layout());
  ASSERT_EQ(acc.structures().size(), map.axes().size());
  std::vector<std::vector<double>> sums(map.axes().size());
  for (uint64_t seed : {3, 4}) {
    be->zero(model.params().grads());
    model.forward_backward(make_batch(shape, seed), 1.0);
    acc.add_batch(*be, model.params());
    for (size_t a = 0; a < map.axes().size(); ++a) {
      const Axis& axis = map.axes()[a];
      sums[a].push_back(hand_gate_sum(model.params(), axis, axis.size - 1));
    }
  }
  const auto sal = acc.saliencies();
  for (size_t a = 0; a < map.axes().size(); ++a) {
    SCOPED_TRACE(map.axes()[a].name);
    const double expected = (sums[a][0] * sums[a][0] + sums[a][1] * sums[a][1]) / 2;
    ASSERT_GT(expected, 0);
    EXPECT_NEAR(sal[a][static_cast<size_t>(map.axes()[a].size - 1)], expected, 1e-12 * expected);
  }
}

LatencyTable multilinear_table(const LatencyTableKey& key) {
  return testing::multilinear_latency_table(key, {{2, 8}, {1, 3}, {1, 4}, {1, 5}, {2, 10}});
}

TEST(PruningEngine, ADecisionMasksTheModelToWhatTheShrunkModelComputes) {
  auto be = make_backend(Device::cpu());
  const ModelShape shape = uneven_gpt();
  const config::RunConfig cfg = parse_run_config(R"(
model: {kind: gpt, n_layer: 2, d_model: 8, n_head: 2, vocab_size: 11}
data: {train: unused, batch_size: 2, seq_len: 5}
train: {max_steps: 4, device: cpu, progress: false}
prune: {schedule: one_shot, begin_step: 2, saliency_batches: 2, target_ratio: 0.6, embedding_group: 2,
        heads_group: 1, qk_group: 1, v_group: 1, mlp_group: 2, eta: 0}
)",
                                                 "engine.yaml");
  GptModel model(shape, *be, DType::F64, DType::F64, 5, 1);
  randomise(model);
  const ParameterLayout& layout = model.params().layout();
  Tensor m = Tensor::empty({layout.total()}, DType::F64), v = Tensor::empty({layout.total()}, DType::F64);
  m.fill_(0.5);
  v.fill_(0.25);
  PruningEngine engine(cfg, model, multilinear_table(latency_key_for(cfg, *be)), "table");
  int64_t full_params = 0;
  for (const ParamEntry& e : layout.entries()) full_params += e.numel;
  EXPECT_EQ(engine.parameters(), full_params);
  for (int64_t step = 1; step <= 2; ++step) {
    be->zero(model.params().grads());
    model.forward_backward(make_batch(shape, 10 + step), 1.0);
    engine.gradients_ready(step);
    EXPECT_EQ(engine.after_update(step, m, v), step == 2) << "step " << step;
  }
  EXPECT_LE(engine.predicted_ms(), 0.6 * engine.original_ms());
  EXPECT_GT(engine.groups_pruned(), 0);
  const AxisSelection sel = engine.selection();
  ASSERT_FALSE(sel.empty());

  // The masked model (the engine masked `model`) against the shrunk one, on a fresh batch.
  const StructureMap map = structure_map(shape);
  const ModelShape small = engine.pruned_shape();
  EXPECT_EQ(small, shrink_shape(shape, map, sel));
  NamedTensors weights;
  for (const ParamEntry& e : layout.entries()) {
    Tensor t = Tensor::empty(e.spec.shape, DType::F64);
    t.copy_from(model.params().weight(e.spec.name));
    weights.emplace_back(e.spec.name, t);
  }
  GptModel shrunk(small, *be, DType::F64, DType::F64, 5, 1);
  shrunk.params().load_named(shrink_tensors(weights, map, sel), "shrunk weights");
  int64_t shrunk_params = 0;
  for (const ParamEntry& e : shrunk.params().layout().entries()) shrunk_params += e.numel;
  EXPECT_EQ(engine.parameters(), shrunk_params);
  EXPECT_DOUBLE_EQ(engine.flops(), gpt_flops_per_token(small, 5).model * 5);
  EXPECT_LT(engine.flops(), gpt_flops_per_token(shape, 5).model * 5);

  const Batch batch = make_batch(shape, 77);
  be->zero(model.params().grads());
  const double masked_loss = model.forward_backward(batch, 1.0);
  engine.gradients_ready(3);  // zeroes the masked positions' gradients
  be->zero(shrunk.params().grads());
  const double shrunk_loss = shrunk.forward_backward(batch, 1.0);
  EXPECT_NEAR(masked_loss, shrunk_loss, 1e-12 * std::abs(shrunk_loss));
  NamedTensors grads;
  for (const ParamEntry& e : layout.entries()) {
    Tensor g = Tensor::empty(e.spec.shape, DType::F64);
    g.copy_from(model.params().grad(e.spec.name));
    grads.emplace_back(e.spec.name, g);
  }
  const Tensor mask = testing::dense_keep(arena_mask(layout, map, sel));
  for (int64_t k = 0; k < layout.total(); ++k)
    if (mask.data<double>()[k] == 0) {
      ASSERT_EQ(model.params().grads().item(k), 0.0) << "gradient of masked position " << k;
      ASSERT_EQ(m.item(k), 0.0) << "first moment of masked position " << k;
      ASSERT_EQ(v.item(k), 0.0) << "second moment of masked position " << k;
    }
  // A resumed run takes up the decisions: a fresh engine restored from state() masks a fresh model alike.
  GptModel resumed(shape, *be, DType::F64, DType::F64, 5, 1);
  randomise(resumed);
  Tensor m2 = Tensor::empty({layout.total()}, DType::F64), v2 = Tensor::empty({layout.total()}, DType::F64);
  m2.fill_(0.5);
  v2.fill_(0.25);
  PruningEngine again(cfg, resumed, multilinear_table(latency_key_for(cfg, *be)), "table");
  again.restore(nlohmann::json::parse(engine.state().dump()), m2, v2, "state.json");
  EXPECT_EQ(again.selection(), sel);
  EXPECT_EQ(again.predicted_ms(), engine.predicted_ms());
  EXPECT_EQ(again.parameters(), engine.parameters());
  EXPECT_TRUE(again.target_reached());
  for (int64_t k = 0; k < layout.total(); ++k)
    if (mask.data<double>()[k] == 0) {
      ASSERT_EQ(resumed.params().master().item(k), 0.0) << "restored weight of masked position " << k;
      ASSERT_EQ(m2.item(k), 0.0) << "restored first moment of masked position " << k;
    }
  try {
    again.restore(nlohmann::json::parse(R"({"kept": {"blocks.0.mlp": [3, 1]}, "groups_pruned": 1})"), m2, v2,
                  "bad/state.json");
    ADD_FAILURE() << "an unsorted selection was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("bad/state.json"), std::string::npos) << e.what();
  }
  const NamedTensors remaining = shrink_tensors(grads, map, sel);
  for (const auto& [name, g] : remaining) {
    const Tensor s = shrunk.params().grad(name);
    ASSERT_EQ(g.shape(), s.shape()) << name;
    for (int64_t k = 0; k < g.numel(); ++k)
      ASSERT_NEAR(g.item(k), s.item(k), 1e-11 * std::max(1.0, std::abs(s.item(k)))) << name << " element " << k;
  }
}

TEST(PruningEngine, BadInputIsAnErrorNamingTheField) {
  auto be = make_backend(Device::cpu());
  const ModelShape shape = uneven_gpt();
  GptModel model(shape, *be, DType::F64, DType::F64, 5, 1);
  auto config = [](const std::string& prune) {
    return parse_run_config(
        "model: {kind: gpt, n_layer: 2, d_model: 8, n_head: 2, vocab_size: 11}\n"
        "data: {train: unused, batch_size: 2, seq_len: 5}\ntrain: {max_steps: 4, device: cpu}\nprune: " + prune + "\n",
        "engine.yaml");
  };
  auto error = [&](const config::RunConfig& cfg, LatencyTableKey key) {
    try {
      PruningEngine engine(cfg, model, multilinear_table(key), "table.json");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  const std::string groups = "embedding_group: 2, mlp_group: 2, qk_group: 1, v_group: 1";
  const config::RunConfig ok = config("{target_ratio: 0.6, " + groups + "}");
  const LatencyTableKey key = latency_key_for(ok, *be);
  EXPECT_EQ(error(ok, key), "no error");
  // A table made for another batch, device, dtype, token count or mode.
  LatencyTableKey other = key;
  other.batch = 64;
  EXPECT_NE(error(ok, other).find("batch"), std::string::npos) << error(ok, other);
  other = key;
  other.device = "NVIDIA H200";
  EXPECT_NE(error(ok, other).find("device"), std::string::npos) << error(ok, other);
  other = key;
  other.dtype = "bf16";
  EXPECT_NE(error(ok, other).find("dtype"), std::string::npos) << error(ok, other);
  other = key;
  other.tokens = 1024;
  EXPECT_NE(error(ok, other).find("tokens"), std::string::npos) << error(ok, other);
  other = key;
  other.mode = LatencyMode::Inference;
  EXPECT_NE(error(ok, other).find("mode"), std::string::npos) << error(ok, other);
  // Only the embedding and MLP, each down to one group (all 8 channels, 7 neurons): 0.1 is out of reach.
  const std::string unreachable =
      error(config("{target_ratio: 0.1, structures: [embedding, mlp], embedding_group: 8, mlp_group: 7}"), key);
  EXPECT_NE(unreachable.find("prune.target_ratio"), std::string::npos) << unreachable;
  // A q/k group of 4 is wider than block 1's 3 q/k dims: pruning them would leave less than one group.
  const std::string too_wide = error(config("{target_ratio: 0.6, embedding_group: 2, mlp_group: 2, qk_group: 4, "
                                            "v_group: 1}"),
                                     key);
  EXPECT_NE(too_wide.find("prune.qk_group"), std::string::npos) << too_wide;
  EXPECT_NE(too_wide.find("blocks[1].qk_dim"), std::string::npos) << too_wide;
  EXPECT_EQ(error(config("{target_ratio: 0.6, structures: [embedding, heads, v_dim, mlp], embedding_group: 2, "
                         "mlp_group: 2, qk_group: 4, v_group: 1}"),
                  key),
            "no error")
      << "a group that does not fit a structure left out of prune.structures";
  // Tensor parallelism and ZeRO-1 are refused, naming the field.
  EXPECT_NE(error(config("{target_ratio: 0.6, " + groups + "}\nparallel: {data: 1, tensor: 2}"), key)
                .find("parallel.tensor"),
            std::string::npos);
  EXPECT_NE(error(config("{target_ratio: 0.6, " + groups + "}\nparallel: {zero1: true}"), key).find("parallel.zero1"),
            std::string::npos);
  // A checkpoint's pruning state keeping less than one group of a layer.
  PruningEngine engine(ok, model, multilinear_table(key), "table.json");
  Tensor m = Tensor::zeros({model.params().layout().total()}, DType::F64), v = m.cast(DType::F64);
  const std::string below = testing::error_message([&] {
    engine.restore(nlohmann::json::parse(R"({"kept": {"blocks.0.mlp": [4]}, "groups_pruned": 4})"), m, v,
                   "ckpt/state.json");
  });
  EXPECT_NE(below.find("ckpt/state.json"), std::string::npos) << below;
  EXPECT_NE(below.find("prune.mlp_group"), std::string::npos) << below;
  // The table's grid stops at 10 MLP neurons and 3 heads: a wider model is not covered.
  ModelShape wide = shape;
  wide.blocks[0].mlp_dim = 12;
  GptModel wide_model(wide, *be, DType::F64, DType::F64, 5, 1);
  try {
    PruningEngine engine(ok, wide_model, multilinear_table(key), "table.json");
    ADD_FAILURE() << "a model outside the grid was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("grid.mlp"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace loom
