// How far bf16 training on the GPU drifts from exact arithmetic: a small GPT-2-layout model and a small DeiT
// trained for kSteps AdamW steps on one fixed batch, on the CUDA backend in bf16 (f32 master weights) and on
// the CPU backend in float64 (master, compute and moments in f64), from the same initial weights (same seed).
// Per step the mean loss and the global gradient norm (before clipping) are compared; the test prints the
// largest relative errors over the steps, with the residual stream in the compute dtype (bf16) and in f32
// (train.residual_dtype), as
//   [numerics] gpt residual=compute: max |dloss|/loss 1.234e-03 (step 7), max |dnorm|/norm 5.678e-03 (step 12)
// and records them as the test properties max_loss_rel_error / max_grad_norm_rel_error.
//
// Bounds, from bf16's unit roundoff u = 2^-9 ≈ 1.95e-3 (8 significant bits, round to nearest):
// - Loss. One step's loss is a mean of N token losses whose logits carry a few roundings each (the final norm,
//   the tied projection's inputs, the logits themselves), mostly independent between tokens, so the mean's
//   error stays near u; over the steps the bf16 weights (each AdamW update is rounded into the compute copy)
//   make the runs drift apart a little. 5u ≈ 1e-2 leaves that drift room. With an f32 residual stream the
//   stream itself is exact to f32 and only the branches round, so its bound is half that: 5e-3.
// - Gradient norm. Every gradient element is the product of a chain of bf16 GEMMs through the blocks, a few u
//   each, and part of it is systematic (it does not average out over the elements), so the norm's error is
//   several u: the bound is 25u ≈ 5e-2 for both residual dtypes.
// The reference learns (its loss falls by more than 10 % over the steps), so this is agreement on a run that
// trains, not on two runs that sit still.
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "tests/gpu/cuda_backend_test_util.h"
#include "trainer/models/gpt.h"
#include "trainer/models/vit.h"
#include "trainer/optimizer.h"

namespace loom::testing_cuda {
namespace {

constexpr int kSteps = 12;

// GPT-2 layout at a small size: 4 blocks of width 128 with 4 heads of 32, MLP 4·128, T 64, vocabulary 512.
ModelShape numerics_gpt() {
  ModelShape s;
  s.kind = "gpt";
  s.vocab = 512;
  s.padded_vocab = pad_vocab(s.vocab);
  s.max_seq = 64;
  s.d_model = 128;
  s.blocks.assign(4, BlockWidths{4, 32, 32, 512});
  s.ln_eps = 1e-5;
  s.init_std = 0.02;
  return s;
}

// DeiT-style ViT at a small size: 32×32 RGB images in 8×8 patches (16 patches + class token), width 128,
// 4 blocks of 4 heads, 10 classes.
ModelShape numerics_vit() {
  ModelShape s;
  s.kind = "vit";
  s.image_size = 32;
  s.patch_size = 8;
  s.in_channels = 3;
  s.num_classes = 10;
  s.d_model = 128;
  s.blocks.assign(4, BlockWidths{4, 32, 32, 512});
  s.ln_eps = 1e-6;
  s.init_std = 0.02;
  return s;
}

struct Case {
  std::string kind;      // "gpt" or "vit"
  bool f32_residual;     // train.residual_dtype: f32 (true) or the compute dtype
  double loss_bound;     // max over steps of |loss - loss_f64| / loss_f64
  double grad_norm_bound;  // max over steps of |norm - norm_f64| / norm_f64
  bool recompute_gelu = false;  // train.recompute: gelu
  std::string label() const {
    return kind + (f32_residual ? " residual=f32" : " residual=compute") + (recompute_gelu ? " recompute=gelu" : "");
  }
};
void PrintTo(const Case& c, std::ostream* os) { *os << c.label(); }

struct Trace {
  std::vector<double> loss, grad_norm;  // per step, before that step's update
};

// kSteps AdamW steps of `model` on `batch` (lr 1e-3 constant, β 0.9/0.95, eps 1e-8, weight decay 0.1, clip 1.0).
Trace train(Model& model, const Batch& batch) {
  config::OptimConfig cfg;
  cfg.set_lr(1e-3);
  cfg.set_weight_decay(0.1);
  cfg.set_grad_clip(1.0);
  Backend& be = model.backend();
  AdamW opt(model.params(), cfg, be);
  Trace t;
  for (int step = 1; step <= kSteps; ++step) {
    be.zero(model.params().grads());
    t.loss.push_back(model.forward_backward(batch, 1.0));
    t.grad_norm.push_back(std::sqrt(be.sum_squares({model.params().grads()})));
    opt.step(cfg.lr(), step, t.grad_norm.back());
  }
  be.synchronize();
  return t;
}

std::unique_ptr<Model> make(const ModelShape& s, Backend& be, DType master, DType compute) {
  constexpr uint64_t kSeed = 29;
  if (s.is_gpt()) return std::make_unique<GptModel>(s, be, master, compute, s.max_seq, kSeed);
  return std::make_unique<VitModel>(s, be, master, compute, kSeed, /*label_smoothing=*/0.0);
}

class CudaBf16Numerics : public CudaBackendTest, public ::testing::WithParamInterface<Case> {
 protected:
  // The float64 CPU run of `kind`, trained once per test program (the batch is the same every time: the fixture's
  // random stream starts from the same seed in every test).
  static const Trace& reference(const std::string& kind, const ModelShape& shape, const Batch& host) {
    static const std::unique_ptr<Backend> cpu = make_cpu_backend();
    static std::map<std::string, Trace> runs;
    auto it = runs.find(kind);
    if (it == runs.end()) {
      auto model = make(shape, *cpu, DType::F64, DType::F64);
      it = runs.emplace(kind, train(*model, host)).first;  // ViT: the model converts the f32 images to f64
    }
    return it->second;
  }

  // One batch: GPT 8 sequences of T tokens (a learnable stream: the next token is (7t + 3) mod V with
  // probability 0.75, else uniform); ViT 32 images of noise with random labels.
  Batch host_batch(const ModelShape& s) {
    if (s.is_gpt()) {
      const int64_t B = 8, T = s.max_seq;
      std::vector<int32_t> stream(static_cast<size_t>(B * T + 1));
      std::uniform_real_distribution<double> coin(0, 1);
      int32_t tok = 0;
      for (auto& x : stream) {
        tok = coin(rng_) < 0.75 ? (7 * tok + 3) % static_cast<int32_t>(s.vocab)
                                : ints(1, 0, static_cast<int32_t>(s.vocab - 1))[0];
        x = tok;
      }
      const std::vector<int32_t> in(stream.begin(), stream.end() - 1), out(stream.begin() + 1, stream.end());
      return Batch(Tensor::from_ints(in, {B, T}), Tensor::from_ints(out, {B, T}));
    }
    const int64_t B = 32;
    return Batch(Tensor::from_vector(uniform(B * s.patches() * s.patch_dim()), {B, s.patches(), s.patch_dim()},
                                     DType::F32),
                 Tensor::from_ints(ints(B, 0, static_cast<int32_t>(s.num_classes - 1)), {B}));
  }
};

// The largest relative error over the steps and the (1-based) step where it occurs.
std::pair<double, int> max_relative_error(const std::vector<double>& got, const std::vector<double>& ref) {
  double worst = -1;
  int at = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double e = std::fabs(got[i] - ref[i]) / std::fabs(ref[i]);
    if (!(e <= worst)) {  // a NaN takes the place and stays
      worst = e;
      at = static_cast<int>(i) + 1;
      if (std::isnan(e)) break;
    }
  }
  return {worst, at};
}

TEST_P(CudaBf16Numerics, LossAndGradNormTrackFloat64) {
  const Case& c = GetParam();
  const ModelShape shape = c.kind == "gpt" ? numerics_gpt() : numerics_vit();
  const Batch host = host_batch(shape);
  const Batch dev(on_gpu(host.inputs), on_gpu(host.targets));

  const Trace& ref = reference(c.kind, shape, host);
  auto model = make(shape, *gpu_, DType::F32, DType::BF16);
  if (c.f32_residual) model->set_residual_dtype(DType::F32);
  if (c.recompute_gelu) model->set_recompute_gelu(true);
  const Trace got = train(*model, dev);

  ASSERT_EQ(got.loss.size(), ref.loss.size());
  EXPECT_LT(ref.loss.back(), 0.9 * ref.loss.front()) << "the float64 reference did not learn";
  const auto [loss_err, loss_step] = max_relative_error(got.loss, ref.loss);
  const auto [norm_err, norm_step] = max_relative_error(got.grad_norm, ref.grad_norm);
  const std::string label = c.label();
  std::printf("[numerics] %s: max |dloss|/loss %.3e (step %d), max |dnorm|/norm %.3e (step %d)\n", label.c_str(),
              loss_err, loss_step, norm_err, norm_step);
  RecordProperty("max_loss_rel_error", std::to_string(loss_err));
  RecordProperty("max_grad_norm_rel_error", std::to_string(norm_err));
  for (int i = 0; i < kSteps; ++i)
    std::printf("[numerics] %s step %2d: loss %.6f (f64 %.6f), grad norm %.6f (f64 %.6f)\n", label.c_str(), i + 1,
                got.loss[i], ref.loss[i], got.grad_norm[i], ref.grad_norm[i]);
  EXPECT_LE(loss_err, c.loss_bound) << label << ": step " << loss_step;
  EXPECT_LE(norm_err, c.grad_norm_bound) << label << ": step " << norm_step;
  // bf16 really ran: exact agreement with float64 would mean the GPU computed something else in f64.
  EXPECT_GT(loss_err, 0) << label;
}

std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  return info.param.kind + (info.param.f32_residual ? "_residual_f32" : "_residual_compute") +
         (info.param.recompute_gelu ? "_recompute_gelu" : "");
}

INSTANTIATE_TEST_SUITE_P(Models, CudaBf16Numerics,
                         ::testing::Values(Case{"gpt", false, 1e-2, 5e-2}, Case{"gpt", true, 5e-3, 5e-2},
                                           Case{"vit", false, 1e-2, 5e-2}, Case{"vit", true, 5e-3, 5e-2},
                                           Case{"gpt", false, 1e-2, 5e-2, true}, Case{"vit", false, 1e-2, 5e-2, true}),
                         case_name);

}  // namespace
}  // namespace loom::testing_cuda
