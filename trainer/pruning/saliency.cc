#include "trainer/pruning/saliency.h"

#include <cmath>

#include "core/error.h"

namespace loom {

SaliencyKind parse_saliency_kind(const std::string& name, const std::string& field) {
  if (name == "taylor2") return SaliencyKind::Taylor2;
  if (name == "taylor1") return SaliencyKind::Taylor1;
  if (name == "magnitude") return SaliencyKind::Magnitude;
  fail(field, ": expected taylor2, taylor1 or magnitude, got \"", name, "\"");
}

SaliencyAccumulator::SaliencyAccumulator(std::vector<SaliencyStructure> structures, SaliencyKind kind,
                                         const ParameterLayout& layout)
    : structures_(std::move(structures)), kind_(kind) {
  for (const auto& s : structures_) {
    LOOM_CHECK(s.units > 0, "saliency structure ", s.name, ": needs at least one unit, has ", s.units);
    LOOM_CHECK(!s.terms.empty(), "saliency structure ", s.name, ": has no terms");
    for (const auto& t : s.terms) {
      LOOM_CHECK(layout.contains(t.parameter), "saliency structure ", s.name, ": no parameter \"", t.parameter,
                 "\" in the model");
      const Shape& shape = layout.entry(t.parameter).spec.shape;
      LOOM_CHECK(t.axis >= 0 && t.axis < static_cast<int>(shape.size()), "saliency structure ", s.name, ": axis ",
                 t.axis, " of ", t.parameter, " ", shape_str(shape), " does not exist");
      LOOM_CHECK(static_cast<int64_t>(t.unit_of_position.size()) == shape[t.axis], "saliency structure ", s.name,
                 ": ", t.parameter, " has ", shape[t.axis], " positions along axis ", t.axis, " but the term maps ",
                 t.unit_of_position.size());
      for (size_t p = 0; p < t.unit_of_position.size(); ++p) {
        const int32_t u = t.unit_of_position[p];
        LOOM_CHECK(u >= -1 && u < s.units, "saliency structure ", s.name, ": ", t.parameter, " position ", p,
                   " maps to unit ", u, ", outside [-1, ", s.units, ")");
      }
    }
  }
  reset();
}

std::vector<std::vector<double>> SaliencyAccumulator::unit_sums(Backend& be, const ParameterStore& params) const {
  // One device buffer holds every term's per-position dots, so the host reads them with one copy.
  int64_t positions = 0;
  for (const auto& s : structures_)
    for (const auto& t : s.terms) positions += static_cast<int64_t>(t.unit_of_position.size());
  const DType out_dtype = be.device().is_cpu() ? DType::F64 : DType::F32;
  Tensor dots = Tensor::empty({positions}, out_dtype, be.device());
  int64_t at = 0;
  for (const auto& s : structures_) {
    for (const auto& t : s.terms) {
      const int64_t n = static_cast<int64_t>(t.unit_of_position.size());
      Tensor out = dots.slice_flat(at, {n});
      const Tensor w = params.weight(t.parameter);
      be.dot_along_axis(out, w, kind_ == SaliencyKind::Magnitude ? w : params.grad(t.parameter), t.axis);
      at += n;
    }
  }
  const Tensor host = (be.device().is_cpu() ? dots : dots.to(Device::cpu())).cast(DType::F64);
  const double* d = host.data<double>();
  std::vector<std::vector<double>> sums;
  at = 0;
  for (const auto& s : structures_) {
    std::vector<double> u(static_cast<size_t>(s.units), 0.0);
    for (const auto& t : s.terms)
      for (int32_t unit : t.unit_of_position) {
        if (unit >= 0) u[unit] += d[at];
        ++at;
      }
    sums.push_back(std::move(u));
  }
  return sums;
}

void SaliencyAccumulator::add_unit_sums(const std::vector<std::vector<double>>& sums) {
  LOOM_CHECK(sums.size() == structures_.size(), "saliency: ", sums.size(), " structures of sums for ",
             structures_.size(), " structures");
  for (size_t i = 0; i < sums.size(); ++i) {
    LOOM_CHECK(static_cast<int64_t>(sums[i].size()) == structures_[i].units, "saliency structure ",
               structures_[i].name, ": ", sums[i].size(), " sums for ", structures_[i].units, " units");
    for (size_t u = 0; u < sums[i].size(); ++u) {
      const double s = sums[i][u];
      totals_[i][u] += kind_ == SaliencyKind::Taylor2 ? s * s : kind_ == SaliencyKind::Taylor1 ? std::fabs(s) : s;
    }
  }
  ++batches_;
}

void SaliencyAccumulator::add_batch(Backend& be, const ParameterStore& params) { add_unit_sums(unit_sums(be, params)); }

std::vector<std::vector<double>> SaliencyAccumulator::saliencies() const {
  LOOM_CHECK(batches_ > 0, "saliency: no batch has been added yet");
  std::vector<std::vector<double>> out = totals_;
  for (auto& v : out)
    for (double& x : v) {
      x /= static_cast<double>(batches_);
      if (kind_ == SaliencyKind::Magnitude) x = std::sqrt(x);
    }
  return out;
}

void SaliencyAccumulator::reset() {
  totals_.clear();
  for (const auto& s : structures_) totals_.emplace_back(static_cast<size_t>(s.units), 0.0);
  batches_ = 0;
}

}  // namespace loom
