// Distributed training on the CPU (MPI) reproduces single-process training: data, tensor and sequence
// parallelism, ZeRO-1, gradient accumulation and resuming a checkpoint under a different layout, for GPT and ViT
// on tiny synthetic data, within 1e-5 (losses) and 1e-4 (weights) of the reference (tests/mpi/
// parallel_training_harness.h). tests/gpu_mpi runs the same layouts on GPUs over NCCL.
#include <gtest/gtest.h>

#include <filesystem>

#include "parallel/mesh.h"
#include "tests/mpi/mpi_test_util.h"
#include "tests/mpi/parallel_training_harness.h"
#include "trainer/run.h"

namespace loom::testing {
namespace {

// After training with tensor (and sequence) parallelism, every replicated parameter is bit-identical on all
// ranks of the tensor group, and the model's sharded parameters hold 1/R of the full tensor.
void check_replicas_identical(const std::string& kind, int tensor, bool sequence) {
  MpiCommunicator& world = test_world();
  if (world.size() % tensor != 0) GTEST_SKIP() << "needs a multiple of the ranks";
    Layout layout{1, tensor, sequence};
  config::RunConfig cfg = make_parallel_config(kind, layout, parallel_test_dir() + "/" + kind + "_replicas_" + layout.name(), {});
  cfg.mutable_train()->set_max_steps(5);
  const bool member = world.rank() < tensor;
  std::unique_ptr<Communicator> group = world.split(member ? 0 : 1, world.rank());
  if (member) {
    ProcessMesh mesh(*group, 1, tensor);
    TensorParallelContext tp{&mesh.tensor_group(), sequence};
    auto backend = make_backend(Device::cpu());
    auto model = build_model(cfg, *backend, DType::F32, &tp);
    auto data = build_data_source(cfg, 0, 1);
    std::ostringstream log;
    if (group->rank() == 0) std::filesystem::create_directories(cfg.train().out_dir());
    group->barrier();
    Trainer trainer(cfg, *model, *data, log, TrainerParallelism{&mesh, &tp});
    trainer.run();
    for (const auto& e : model->params().layout().entries()) {
      const Tensor mine = model->params().master_weight(e.spec.name).view({e.numel});
      if (e.spec.sharding.sharded()) {
        EXPECT_EQ(shape_numel(full_shape(e.spec, tensor)), e.numel * tensor) << e.spec.name;
        continue;
      }
      Tensor all = Tensor::empty({e.numel * tensor}, DType::F32);
      group->all_gather(all, mine);
      for (int r = 1; r < tensor; ++r)
        for (int64_t i = 0; i < e.numel; ++i)
          ASSERT_EQ(all.data<float>()[r * e.numel + i], all.data<float>()[i])
              << e.spec.name << " element " << i << " differs on tensor rank " << r;
    }
  }
  world.barrier();
}

class ParallelTraining : public ::testing::TestWithParam<std::string> {};

TEST_P(ParallelTraining, ReplicatedParametersStayIdenticalTensor2Sequence) {
  check_replicas_identical(GetParam(), 2, true);
}
TEST_P(ParallelTraining, ReplicatedParametersStayIdenticalTensor4Sequence) {
  check_replicas_identical(GetParam(), 4, true);
}
TEST_P(ParallelTraining, TensorParallel4Sequence) { check_layout(GetParam(), {1, 4, true}, {}); }

TEST_P(ParallelTraining, DataParallel2) { check_layout(GetParam(), {2, 1}, {}); }
TEST_P(ParallelTraining, DataParallel4) { check_layout(GetParam(), {4, 1}, {}); }
TEST_P(ParallelTraining, TensorParallel2) { check_layout(GetParam(), {1, 2}, {}); }
// Row tiles that do not divide the token rows (GPT 32 = 11 + 11 + 10, ViT 20 = 7 + 7 + 6), and no tiling.
TEST_P(ParallelTraining, TensorParallel2RaggedTiles) {
  Layout layout{1, 2};
  layout.comm_tiles = 3;
  check_layout(GetParam(), layout, {});
}
TEST_P(ParallelTraining, TensorParallel2Untiled) {
  Layout layout{1, 2};
  layout.comm_tiles = 1;
  check_layout(GetParam(), layout, {});
}
TEST_P(ParallelTraining, TensorParallel2Sequence) { check_layout(GetParam(), {1, 2, true}, {}); }
TEST_P(ParallelTraining, Data2Tensor2) { check_layout(GetParam(), {2, 2}, {}); }
TEST_P(ParallelTraining, Data2Tensor2Sequence) { check_layout(GetParam(), {2, 2, true}, {}); }
TEST_P(ParallelTraining, DataParallel2Accumulate2) {
  Layout layout{2, 1};
  layout.accum = 2;
  check_layout(GetParam(), layout, {});
}
TEST_P(ParallelTraining, Data2Tensor2SequenceZero1Accumulate2) {
  Layout layout{2, 2, true, true};
  layout.accum = 2;
  check_layout(GetParam(), layout, {});
}
TEST_P(ParallelTraining, Zero1Data2) { check_layout(GetParam(), {2, 1, false, true}, {}); }
TEST_P(ParallelTraining, Zero1Data2Tensor2) { check_layout(GetParam(), {2, 2, false, true}, {}); }
TEST_P(ParallelTraining, ResumeTensor2AsData2) { check_resume(GetParam(), {1, 2}, {2, 1}, {}); }
TEST_P(ParallelTraining, ResumeData4AsData2) { check_resume(GetParam(), {4, 1}, {2, 1, false, true}, {}); }
TEST_P(ParallelTraining, ResumeData2AsTensor2Sequence) { check_resume(GetParam(), {2, 1, false, true}, {1, 2, true}, {}); }

INSTANTIATE_TEST_SUITE_P(Models, ParallelTraining, ::testing::Values("gpt", "vit"));

}  // namespace
}  // namespace loom::testing
