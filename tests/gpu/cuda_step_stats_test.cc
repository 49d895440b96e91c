// A training step without host synchronisation (kernels/step_stats.h): the CUDA AdamW that clips by the norm
// it reads on the device, and skips a step whose loss or norm is not finite, against its CPU twin at ragged
// sizes (packed and scalar kernels); the device-scalar sums the step keeps its loss and norm in; and the count
// of host reads of a real GPT training step with gradient clipping: exactly one.
#include <cmath>
#include <limits>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <utility>
#include <vector>

#include "core/config.h"
#include "kernels/cuda/cuda_backend.h"
#include "tests/common/test_util.h"
#include "tests/gpu/cuda_backend_test_util.h"
#include "trainer/models/gpt.h"
#include "trainer/trainer.h"

namespace loom::testing_cuda {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

// The step statistics on the host: loss, then Σg² in two parts.
Tensor host_stats(double loss, double squares_sharded, double squares_replicated) {
  Tensor s = Tensor::empty({kStepStatsSize}, DType::F64);
  s.data<double>()[kStepLoss] = loss;
  s.data<double>()[kStepSquaresSharded] = squares_sharded;
  s.data<double>()[kStepSquaresReplicated] = squares_replicated;
  return s;
}

// Sizes around the 8-element packs of the 16-bit kernels (and a pack-less 1), misaligned views included.
TEST_F(CudaBackendTest, ClipOnDeviceAdamWMatchesTheCpuTwin) {
  struct Case {
    const char* what;
    double loss, sharded, replicated, max_norm;
    bool updates;
  };
  const Case cases[] = {{"norm below the clip", 2.5, 0.09, 0.16, 1.0, true},  // norm 0.5
                        {"norm above the clip", 2.5, 4.0, 5.0, 1.0, true},    // norm 3
                        {"clipping off", 2.5, 4.0, 5.0, 0.0, true},
                        {"NaN norm", 2.5, kNaN, 0.16, 1.0, false},
                        {"infinite norm", 2.5, 0.09, kInf, 1.0, false},
                        {"NaN loss", kNaN, 0.09, 0.16, 1.0, false},
                        {"infinite loss", kInf, 4.0, 5.0, 1.0, false}};
  const double wd = 0.1;
  for (const Case& c : cases) {
    for (const int64_t n : {1, 7, 8, 1001, 10007}) {
      for (const int64_t offset : {0, 1}) {  // 1: views off the 16-byte alignment take the scalar kernel
        for (const DType grad_dtype : {DType::F32, DType::BF16}) {
          const std::string tag = std::string(c.what) + ", n " + std::to_string(n) + ", offset " +
                                  std::to_string(offset) + ", grad " + dtype_name(grad_dtype);
          const int64_t total = n + offset;
          const Tensor p0 = random_host({total}, DType::F32), m0 = random_host({total}, DType::F32, -0.1f, 0.1f),
                       v0 = random_host({total}, DType::F32, 0.f, 0.01f), g = random_host({total}, grad_dtype);
          Tensor p_all = on_gpu(p0), m_all = on_gpu(m0), v_all = on_gpu(v0), g_all = on_gpu(g);
          Tensor copy_all = poisoned({total}, DType::BF16);
          Tensor p = p_all.slice_flat(offset, {n}), m = m_all.slice_flat(offset, {n}), v = v_all.slice_flat(offset, {n});
          Tensor copy = copy_all.slice_flat(offset, {n});
          AdamWHyper hp;
          hp.lr = 3e-3, hp.beta1 = 0.9, hp.beta2 = 0.95, hp.eps = 1e-8, hp.step = 3;
          AdamWHyper on_device = hp;
          on_device.step_stats = on_gpu(host_stats(c.loss, c.sharded, c.replicated));
          on_device.max_grad_norm = c.max_norm;
          gpu_->adamw_update(p, m, v, g_all.slice_flat(offset, {n}), copy, on_device, wd);

          // The CPU twin, in f64, with the same statistics on the host.
          Tensor pr = as_f64(p0).slice_flat(offset, {n}), mr = as_f64(m0).slice_flat(offset, {n}),
                 vr = as_f64(v0).slice_flat(offset, {n}), none;
          AdamWHyper on_host = on_device;
          on_host.step_stats = host_stats(c.loss, c.sharded, c.replicated);
          cpu_->adamw_update(pr, mr, vr, g.cast(DType::F64).slice_flat(offset, {n}), none, on_host, wd);
          expect_close(p, pr, 1e-5, "adamw param, " + tag);
          expect_close(m, mr, 1e-5, "adamw m, " + tag);
          expect_close(v, vr, 1e-5, "adamw v, " + tag);
          if (!c.updates) {
            expect_bitwise_equal(p_all, on_gpu(p0), "param changed by a skipped step, " + tag);
            expect_bitwise_equal(m_all, on_gpu(m0), "m changed by a skipped step, " + tag);
            expect_bitwise_equal(v_all, on_gpu(v0), "v changed by a skipped step, " + tag);
            const Tensor copy_host = copy_all.to(Device::cpu());
            for (int64_t i = 0; i < total; ++i)
              ASSERT_TRUE(std::isnan(copy_host.item(i))) << "compute copy written by a skipped step, " << tag;
            continue;
          }
          expect_close(copy, p.to(Device::cpu()).cast(DType::BF16), 0, "adamw compute copy, " + tag);
          // Bit for bit the update of the factor the host computed before: min(1, clip / norm).
          const double norm = std::sqrt(c.sharded + c.replicated);
          AdamWHyper host_factor = hp;
          host_factor.grad_scale = c.max_norm > 0 && norm > c.max_norm ? c.max_norm / norm : 1.0;
          Tensor ph = on_gpu(p0).slice_flat(offset, {n}), mh = on_gpu(m0).slice_flat(offset, {n}),
                 vh = on_gpu(v0).slice_flat(offset, {n}), copy_h = poisoned({n}, DType::BF16);
          gpu_->adamw_update(ph, mh, vh, g_all.slice_flat(offset, {n}), copy_h, host_factor, wd);
          expect_bitwise_equal(p, ph, "param against the host factor, " + tag);
          expect_bitwise_equal(m, mh, "m against the host factor, " + tag);
          expect_bitwise_equal(v, vh, "v against the host factor, " + tag);
        }
      }
    }
  }
}

TEST_F(CudaBackendTest, AccumulateSumAndSumSquaresMatchTheCpu) {
  for (const int64_t n : {1, 255, 257, 10007}) {
    const std::string tag = "n " + std::to_string(n);
    const Tensor x = random_host({n}, DType::F32, -3.f, 5.f);
    Tensor total = on_gpu(Tensor::from_vector({1.25f}, {1}, DType::F64)), total_ref = as_f64(total);
    gpu_->accumulate_sum(total, on_gpu(x), 0.5, 3.0);
    cpu_->accumulate_sum(total_ref, x, 0.5, 3.0);
    expect_close(total, total_ref, 1e-12, "accumulate_sum, " + tag);
    Tensor again = on_gpu(Tensor::from_vector({1.25f}, {1}, DType::F64));
    gpu_->accumulate_sum(again, on_gpu(x), 0.5, 3.0);
    expect_bitwise_equal(again, total, "accumulate_sum is not deterministic, " + tag);

    const Tensor a = random_host({n}, DType::BF16), b = random_host({n + 3}, DType::F16);
    gpu_->accumulate_sum_squares(total, {on_gpu(a), on_gpu(b)});
    cpu_->accumulate_sum_squares(total_ref, {a, b});
    expect_close(total, total_ref, 1e-6, "accumulate_sum_squares adds to the total, " + tag);
    const Tensor before = total.to(Device::cpu());
    gpu_->accumulate_sum_squares(total, {});
    expect_bitwise_equal(total, before, "an empty list adds nothing, " + tag);
  }
}

// Records the process's host-read count at every step's end (TrainingObserver::on_step).
class ReadCounter final : public TrainingObserver {
 public:
  void on_step(const nlohmann::json& record) override {
    reads.push_back(cuda_host_reads());
    grad_norms.push_back(record.at("grad_norm").get<double>());
  }
  Control poll() override { return {}; }
  std::vector<int64_t> reads;
  std::vector<double> grad_norms;
};

// A GPT step (two micro-steps, gradient clipping on, bf16 with f32 master weights) reads the device once: the
// loss and norm at its end, together with the invalid-input flag. Before, it read each micro-step's loss and
// the norm before queuing the update (three reads, plus the synchronize).
TEST(CudaTrainingStep, ReadsTheDeviceExactlyOnce) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU visible";
  testing::TempDir dir;
  std::ostringstream y;
  y << "model: {kind: gpt, n_layer: 2, d_model: 64, n_head: 4, vocab_size: 96, max_seq_len: 32}\n"
    << "data: {train: unused, batch_size: 4, seq_len: 32}\n"
    << "optim: {lr: 0.01, warmup_steps: 2, grad_clip: 0.1}\n"
    << "train: {max_steps: 10, grad_accum_steps: 2, log_every: 0, out_dir: \"" << dir.path() << "\",\n"
    << "        progress: false, checkpoint_every: 0, val_every: 0}\n";
  const config::RunConfig cfg = parse_run_config(y.str(), "read_count_config");
  std::unique_ptr<Backend> backend = make_backend(Device::cuda(0));
  GptModel model(model_shape_from_config(cfg.model()), *backend, DType::F32, DType::BF16, cfg.data().seq_len(),
                 cfg.train().seed());
  testing::SyntheticTokens data(4, 32, 96, 7);
  std::ostringstream log;
  Trainer trainer(cfg, model, data, log);
  ReadCounter counter;
  trainer.add_observer(&counter);
  trainer.run(4);
  ASSERT_EQ(counter.reads.size(), 4u);
  // Steps 3 and 4, each from the previous step's record to its own (step 1 may set up what later steps reuse).
  EXPECT_EQ(counter.reads[2] - counter.reads[1], 1) << "host reads in step 3";
  EXPECT_EQ(counter.reads[3] - counter.reads[2], 1) << "host reads in step 4";
  for (const double norm : counter.grad_norms) EXPECT_TRUE(std::isfinite(norm) && norm > 0) << norm;
  EXPECT_GT(counter.grad_norms.front(), 0.1) << "the first step's norm should exceed the clip (clipping runs)";
}

}  // namespace
}  // namespace loom::testing_cuda
