// Turning a folder of text files into llm.c token shards, and the unigram entropy of shards.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/tokenizer.h"

namespace loom {

// The text files named by `inputs`, in order: a file is taken as it is; a folder contributes every regular
// file under it (recursively) whose name matches one of `patterns` (shell globs on the file name, fnmatch:
// "*.md", "*.rst"), sorted bytewise by path. Throws loom::Error naming an input that does not exist or is
// neither a file nor a folder. The result may be empty.
std::vector<std::string> list_text_files(const std::vector<std::string>& inputs,
                                         const std::vector<std::string>& patterns = {"*.txt"});

struct TextCorpusOptions {
  // Share of documents that go to the validation split, in [0, 1). Document i (0-based, in the order of
  // list_text_files) is a validation document when ceil((i + 1) * f) > ceil(i * f): that spreads
  // ceil(n * f) documents evenly over the corpus, the first one being document 0.
  double val_fraction = 0.05;
  // Most tokens in one shard file (llm.c uses 1e8); documents may straddle shards.
  int64_t shard_tokens = 100'000'000;
  // Use only the first max_files files; 0 uses all.
  int64_t max_files = 0;
  // Which files of a folder are read (list_text_files).
  std::vector<std::string> patterns = {"*.txt"};
};

struct TextCorpusSummary {
  int64_t documents = 0;
  int64_t train_documents = 0;
  int64_t val_documents = 0;
  int64_t train_tokens = 0;  // including one EOT per document
  int64_t val_tokens = 0;
  std::vector<std::string> train_shards;  // paths written, in order
  std::vector<std::string> val_shards;
  // True when there were too few documents to split by document (see prepare_text_corpus): the split was
  // made in the token stream, and train_documents / val_documents count the documents each side touches.
  bool split_by_tokens = false;
};

// Tokenizes every file of list_text_files(inputs, options.patterns) as one document, prefixed with the EOT
// token as llm.c does (so the model learns document starts), with tokenizer.encode() ("<|endoftext|>" inside a
// file stays ordinary text). Documents are split between train and val as TextCorpusOptions::val_fraction
// says, unless there are fewer than 1 / val_fraction of them (a single file, say), which cannot give the
// validation split its share by whole documents: then the last ceil(val_fraction × tokens) tokens of the
// stream are the validation split (split_by_tokens). Writes out_dir/train_000000.bin, train_000001.bin, ...
// and out_dir/val_000000.bin, ... (see core/token_shards.h), after deleting any existing train_NNNNNN.bin /
// val_NNNNNN.bin there so that a glob never mixes old and new shards. Creates out_dir if needed.
// Deterministic: the same inputs give byte-identical shards.
// Throws loom::Error when no text file is found (naming the inputs and patterns), an option is out of range, a
// file cannot be read (naming it), or the train split would be empty.
TextCorpusSummary prepare_text_corpus(const std::vector<std::string>& inputs, const std::string& out_dir,
                                      const Tokenizer& tokenizer, const TextCorpusOptions& options = {});

// Entropy in nats, -sum_t p(t) ln p(t), of the unigram distribution p of all tokens in `shard_files`
// together: the loss of the best model that ignores context, so a trained model's val loss should be lower.
// Throws loom::Error if the list is empty, a shard is invalid (naming it), or the shards hold no tokens.
double unigram_entropy_nats(const std::vector<std::string>& shard_files);

}  // namespace loom
