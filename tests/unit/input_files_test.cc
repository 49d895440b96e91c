// Data files that are not regular files (a FIFO, a folder) are refused at once, naming the file, by every
// parser of outside input: opening a FIFO for reading used to wait for a writer forever (a run hung at
// start). Token shards have their own tests in token_shards_test.cc.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <string>

#include "core/error.h"
#include "core/idx.h"
#include "core/safetensors.h"
#include "core/tokenizer.h"
#include "tests/common/test_util.h"

namespace loom {
namespace {
using testing::error_message;
using testing::TempDir;

std::string make_fifo(const TempDir& dir, const std::string& name) {
  const std::string path = dir / name;
  EXPECT_EQ(::mkfifo(path.c_str(), 0600), 0) << path;
  return path;
}

void expect_not_regular(const std::string& message, const std::string& path) {
  EXPECT_NE(message.find(path), std::string::npos) << message;
  EXPECT_NE(message.find("not a regular file"), std::string::npos) << message;
}

TEST(InputFiles, SafetensorsRefusesAFifoAndAFolder) {
  TempDir dir("st_fifo");
  const std::string fifo = make_fifo(dir, "model.safetensors");
  expect_not_regular(error_message([&] { safetensors::read(fifo); }), fifo);
  std::filesystem::create_directory(dir / "folder.safetensors");
  expect_not_regular(error_message([&] { safetensors::read(dir / "folder.safetensors"); }),
                     dir / "folder.safetensors");
}

TEST(InputFiles, IdxRefusesAFifo) {
  TempDir dir("idx_fifo");
  const std::string images = make_fifo(dir, "train-images-idx3-ubyte.gz");
  expect_not_regular(error_message([&] { read_idx_images(images); }), images);
  const std::string labels = make_fifo(dir, "train-labels-idx1-ubyte");
  expect_not_regular(error_message([&] { read_idx_labels(labels, 10); }), labels);
}

TEST(InputFiles, TokenizerRefusesAFifo) {
  TempDir dir("tok_fifo");
  const std::string encoder = make_fifo(dir, "encoder.json");
  const std::string merges = dir.file("vocab.bpe", "#version: 0.2\n");
  expect_not_regular(error_message([&] { Tokenizer tokenizer(encoder, merges); }), encoder);
}

}  // namespace
}  // namespace loom
