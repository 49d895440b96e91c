// Saliency from a real model's gradients (tiny GPT, float64 CPU): terms built by hand for the MLP neurons of
// one block, the heads of another and the embedding channels (every tensor of width C). The accumulator's Σ g·w
// equals the hand-computed sum and the finite-difference derivative of the loss along the unit's weights (the
// gate derivative); Taylor², |Taylor| and magnitude average over batches as documented.
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>

#include "kernels/backend.h"
#include "tests/common/model_testing.h"
#include "tests/common/test_util.h"
#include "trainer/models/gpt.h"
#include "trainer/pruning/saliency.h"

namespace loom {
namespace {

ModelShape tiny_gpt() {
  return testing::tiny_gpt_shape({BlockWidths{2, 3, 5, 7}, BlockWidths{1, 4, 2, 9}}, 0.3);
}

std::vector<int32_t> identity(int64_t n) {
  std::vector<int32_t> v(static_cast<size_t>(n));
  std::iota(v.begin(), v.end(), 0);
  return v;
}

// Block 1's 9 MLP neurons: row j of fc1.weight, fc1.bias[j], column j of fc2.weight.
SaliencyStructure mlp_neurons() {
  return {"blocks.1.mlp", 9,
          {{"blocks.1.mlp.fc1.weight", 0, identity(9)},
           {"blocks.1.mlp.fc1.bias", 0, identity(9)},
           {"blocks.1.mlp.fc2.weight", 1, identity(9)}}};
}

// Block 0's 2 heads (q/k dim 3, v dim 5): q rows 3h..3h+2, k rows 6+3h.., v rows 12+5h.. of the fused qkv
// weight and bias, and columns 5h..5h+4 of proj.weight.
SaliencyStructure heads() {
  std::vector<int32_t> qkv_rows;
  for (int section = 0; section < 2; ++section)
    for (int h = 0; h < 2; ++h)
      for (int d = 0; d < 3; ++d) qkv_rows.push_back(h);
  for (int h = 0; h < 2; ++h)
    for (int d = 0; d < 5; ++d) qkv_rows.push_back(h);
  std::vector<int32_t> proj_cols;
  for (int h = 0; h < 2; ++h)
    for (int d = 0; d < 5; ++d) proj_cols.push_back(h);
  return {"blocks.0.heads", 2,
          {{"blocks.0.attn.qkv.weight", 0, qkv_rows},
           {"blocks.0.attn.qkv.bias", 0, qkv_rows},
           {"blocks.0.attn.proj.weight", 1, proj_cols}}};
}

// The 8 embedding channels: every tensor of width C, in every block, plus the embeddings and the final norm.
SaliencyStructure embedding_channels() {
  SaliencyStructure s{"embedding", 8, {{"wte.weight", 1, identity(8)}, {"wpe.weight", 1, identity(8)}}};
  for (int b = 0; b < 2; ++b) {
    const std::string p = "blocks." + std::to_string(b) + ".";
    for (const char* name : {"norm1.weight", "norm1.bias", "attn.proj.weight", "attn.proj.bias", "norm2.weight",
                             "norm2.bias", "mlp.fc2.weight", "mlp.fc2.bias"})
      s.terms.push_back({p + name, 0, identity(8)});
    for (const char* name : {"attn.qkv.weight", "mlp.fc1.weight"}) s.terms.push_back({p + name, 1, identity(8)});
  }
  s.terms.push_back({"norm.weight", 0, identity(8)});
  s.terms.push_back({"norm.bias", 0, identity(8)});
  return s;
}

// Arena offsets of unit `unit`'s positions in the structure's terms (row-major, by hand).
std::vector<int64_t> unit_offsets(const ParameterStore& p, const SaliencyStructure& s, int unit) {
  std::vector<int64_t> out;
  for (const auto& t : s.terms) {
    const ParamEntry& e = p.layout().entry(t.parameter);
    const Shape& shape = e.spec.shape;
    const int64_t rows = shape[0], cols = shape.size() > 1 ? shape[1] : 1;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c)
        if (t.unit_of_position[t.axis == 0 ? r : c] == unit) out.push_back(e.offset + r * cols + c);
  }
  return out;
}

double hand_sum(const ParameterStore& p, const std::vector<int64_t>& offsets) {
  double s = 0;
  for (int64_t k : offsets) s += p.master().item(k) * p.grads().item(k);
  return s;
}

double loss_of(GptModel& m, const Batch& b) {
  const EvalStats s = m.evaluate(b);
  return s.loss_sum / s.count;
}

class PruningSaliency : public ::testing::Test {
 protected:
  PruningSaliency() : be_(make_backend(Device::cpu())), model_(tiny_gpt(), *be_, DType::F64, DType::F64, 5, 7) {}
  Batch batch(uint64_t seed) { return testing::SyntheticTokens(2, 5, 11, seed).next_train(Device::cpu()); }
  void gradients(const Batch& b) {
    be_->zero(model_.params().grads());
    model_.forward_backward(b, 1.0);
  }
  std::unique_ptr<Backend> be_;
  GptModel model_;
};

TEST_F(PruningSaliency, Taylor2OfOneUnitIsTheSquaredHandSumOverBatches) {
  const std::vector<SaliencyStructure> structures{mlp_neurons(), heads()};
  SaliencyAccumulator acc(structures, SaliencyKind::Taylor2, model_.params().layout());
  const ParameterStore& p = model_.params();
  std::vector<double> neuron_sums, head_sums;
  for (uint64_t seed : {3, 4}) {
    gradients(batch(seed));
    neuron_sums.push_back(hand_sum(p, unit_offsets(p, structures[0], 4)));
    head_sums.push_back(hand_sum(p, unit_offsets(p, structures[1], 1)));
    const auto sums = acc.unit_sums(*be_, p);
    EXPECT_NEAR(sums[0][4], neuron_sums.back(), 1e-14);
    EXPECT_NEAR(sums[1][1], head_sums.back(), 1e-14);
    acc.add_unit_sums(sums);
  }
  ASSERT_NE(neuron_sums[0], 0.0);
  ASSERT_NE(head_sums[0], 0.0);
  const auto sal = acc.saliencies();
  EXPECT_EQ(acc.batches(), 2);
  // The mean of the per-batch squares, not the square of the mean.
  EXPECT_NEAR(sal[0][4], (neuron_sums[0] * neuron_sums[0] + neuron_sums[1] * neuron_sums[1]) / 2, 1e-15);
  EXPECT_NEAR(sal[1][1], (head_sums[0] * head_sums[0] + head_sums[1] * head_sums[1]) / 2, 1e-15);
  acc.reset();
  EXPECT_EQ(acc.batches(), 0);
  EXPECT_THROW(acc.saliencies(), Error);
}

TEST_F(PruningSaliency, UnitSumIsTheLossDerivativeAlongTheUnitsWeights) {
  // s_u = d/dε L((1+ε)·w_u): scale the unit's positions in the master weights (the compute weights on the CPU).
  const std::vector<SaliencyStructure> structures{mlp_neurons(), heads(), embedding_channels()};
  SaliencyAccumulator acc(structures, SaliencyKind::Taylor2, model_.params().layout());
  const Batch b = batch(3);
  gradients(b);
  const auto sums = acc.unit_sums(*be_, model_.params());
  const std::vector<std::pair<int, int>> units{{0, 2}, {0, 8}, {1, 0}, {1, 1}, {2, 0}, {2, 5}};
  for (const auto& [structure, unit] : units) {
    const auto offsets = unit_offsets(model_.params(), structures[structure], unit);
    double* w = model_.params().master().data<double>();
    std::vector<double> saved;
    for (int64_t k : offsets) saved.push_back(w[k]);
    auto loss_scaled = [&](double eps) {
      for (size_t i = 0; i < offsets.size(); ++i) w[offsets[i]] = saved[i] * (1 + eps);
      const double l = loss_of(model_, b);
      for (size_t i = 0; i < offsets.size(); ++i) w[offsets[i]] = saved[i];
      return l;
    };
    const double h = 1e-5, numeric = (loss_scaled(h) - loss_scaled(-h)) / (2 * h);
    EXPECT_NEAR(sums[structure][unit], numeric, 1e-8 + 1e-6 * std::fabs(numeric))
        << structures[structure].name << " unit " << unit;
  }
}

TEST_F(PruningSaliency, Taylor1AndMagnitudeBaselines) {
  const std::vector<SaliencyStructure> structures{mlp_neurons()};
  SaliencyAccumulator taylor1(structures, SaliencyKind::Taylor1, model_.params().layout());
  SaliencyAccumulator magnitude(structures, SaliencyKind::Magnitude, model_.params().layout());
  const ParameterStore& p = model_.params();
  double abs_total = 0;
  for (uint64_t seed : {3, 5, 6}) {
    gradients(batch(seed));
    abs_total += std::fabs(hand_sum(p, unit_offsets(p, structures[0], 6)));
    taylor1.add_batch(*be_, p);
    magnitude.add_batch(*be_, p);
  }
  EXPECT_NEAR(taylor1.saliencies()[0][6], abs_total / 3, 1e-15);
  double w2 = 0;
  for (int64_t k : unit_offsets(p, structures[0], 6)) w2 += p.master().item(k) * p.master().item(k);
  EXPECT_NEAR(magnitude.saliencies()[0][6], std::sqrt(w2), 1e-14);
}

TEST_F(PruningSaliency, RejectsTermsThatDoNotFitTheModel) {
  const ParameterLayout& layout = model_.params().layout();
  auto message = [&](SaliencyStructure s) {
    return testing::error_message([&] { SaliencyAccumulator({s}, SaliencyKind::Taylor2, layout); });
  };
  SaliencyStructure s = mlp_neurons();
  s.terms[0].parameter = "blocks.1.mlp.fc3.weight";
  EXPECT_NE(message(s).find("no parameter \"blocks.1.mlp.fc3.weight\""), std::string::npos) << message(s);
  s = mlp_neurons();
  s.terms[2].axis = 0;  // fc2.weight [8, 9]: axis 0 has 8 positions, the map 9
  EXPECT_NE(message(s).find("has 8 positions along axis 0"), std::string::npos) << message(s);
  s = mlp_neurons();
  s.terms[1].unit_of_position[2] = 9;
  EXPECT_NE(message(s).find("position 2 maps to unit 9"), std::string::npos) << message(s);
  EXPECT_EQ(parse_saliency_kind("taylor1", "prune.saliency"), SaliencyKind::Taylor1);
  EXPECT_NE(testing::error_message([] { parse_saliency_kind("fisher", "prune.saliency"); }).find("prune.saliency"),
            std::string::npos);
}

}  // namespace
}  // namespace loom
