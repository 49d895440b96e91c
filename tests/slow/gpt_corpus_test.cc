// The default corpus end to end: a shortened run of the tiny GPT on the Linux documentation shards (made by
// scripts/setup.sh) must reach a validation loss below the unigram entropy of the corpus, i.e. the model
// has learned more than token frequencies.
#include <gtest/gtest.h>

#include <filesystem>
#include <sstream>

#include "core/config.h"
#include "core/text_corpus.h"
#include "core/token_shards.h"
#include "tests/common/test_util.h"
#include "trainer/run.h"

namespace loom {
namespace {

TEST(GptCorpus, ValidationLossFallsBelowUnigramEntropy) {
  const std::string corpus = std::string(LOOM_SOURCE_DIR) + "/data/linux-doc";
  const std::vector<std::string> train_shards = glob_files(corpus + "/train_*.bin");
  ASSERT_FALSE(train_shards.empty()) << "no shards in " << corpus << ": run scripts/setup.sh first";
  const double entropy = unigram_entropy_nats(train_shards);

  testing::TempDir out;
  const config::RunConfig cfg = load_run_config(
      std::string(LOOM_SOURCE_DIR) + "/configs/gpt_tiny.yaml",
      {"data.train=" + corpus + "/train_*.bin", "data.val=" + corpus + "/val_*.bin",
       "data.tokenizer=" + std::string(LOOM_SOURCE_DIR) + "/data/gpt2", "model.n_layer=2", "model.d_model=64",
       "model.n_head=2", "data.seq_len=64", "model.max_seq_len=64", "data.batch_size=8", "train.max_steps=600",
       "train.val_every=0", "train.val_batches=8", "train.checkpoint_every=0", "train.sample_every=0",
       "train.log_every=50", "train.device=cpu", "train.progress=false", "optim.lr=3e-3", "train.out_dir=" + out.path()});
  std::ostringstream log;
  const TrainResult r = run_training(cfg, log);
  std::cout << log.str();
  EXPECT_EQ(r.steps_done, 600);
  ASSERT_GT(r.last_val_loss, 0);
  EXPECT_LT(r.last_val_loss, entropy) << "unigram entropy " << entropy << " nats";
  EXPECT_TRUE(std::filesystem::exists(out / "metrics.jsonl"));
  EXPECT_FALSE(r.last_checkpoint.empty());
}

}  // namespace
}  // namespace loom
