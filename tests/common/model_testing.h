// Helpers shared by the model and pruning tests: tiny model shapes, a float64 finite-difference check of a
// model's gradient, and a latency table whose cost multilinear interpolation reproduces exactly.
#pragma once
#include <cstdint>
#include <functional>

#include <vector>

#include "trainer/models/model_shape.h"
#include "trainer/models/structure_map.h"
#include "trainer/parameters.h"
#include "trainer/pruning/latency_table.h"

namespace loom::testing {

// A GPT of 11 tokens (padded as the model pads them), 6 positions and embedding width 8 with `blocks`, its
// weights drawn with standard deviation `init_std` (tests of gradients want it large, so every path carries
// signal). Other fields keep ModelShape's defaults.
ModelShape tiny_gpt_shape(std::vector<BlockWidths> blocks, double init_std);
// A ViT of 6×6 images with 2 channels in 3×3 patches, 5 classes and embedding width 8 with `blocks`; DeiT's
// distillation token when `distilled`.
ModelShape tiny_vit_shape(std::vector<BlockWidths> blocks, bool distilled, double init_std);

// Central differences (h = 1e-6) of `loss_at` (the loss as a function of `params`' f64 master weights, which
// the CPU compute weights alias) against the gradient the caller left in params.grads(). Checks the first
// `elements(entry)` elements of each parameter (all by default), every third beyond 64; EXPECTs each within
// 1e-6 + 1e-5·|numeric| and all within 1e-7 in relative L2. Returns the number of elements checked.
int64_t expect_gradient_matches_finite_differences(ParameterStore& params, const std::function<double()>& loss_at,
                                                   const std::function<int64_t(const ParamEntry&)>& elements = {});

// A table of `key` over `grid` whose block cost 1e-2·(E·H·(2·Dqk + Dv) + 2·E·M) + 0.05 ms is a product of
// per-axis linear terms (exact under multilinear interpolation), with fixed parts 0.01·E ms.
LatencyTable multilinear_latency_table(const LatencyTableKey& key, const LatencyGrid& grid);

// The mask in dense form: F64 CPU [mask.arena_elements], 0 where the mask deletes an element, 1 elsewhere
// (the CPU backend's zero_deleted applied to ones).
Tensor dense_keep(const ArenaMask& mask);

}  // namespace loom::testing
