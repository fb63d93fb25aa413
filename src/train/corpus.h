// What a training run reads: the tokenizer, the training and validation windows, and which windows
// make the global batch of each iteration.
//
// --data-path is a text file (tokenized whole by the tokenizer; the last 10% of its tokens is
// validation, as always; each iteration draws its windows at random offsets seeded by (seed,
// iteration)), or one or more Megatron indexed datasets, with weights for a blend (samples as
// train/gpt_dataset.h draws them: iteration i's global batch is samples [i GB, (i + 1) GB) of the
// training split, validation the first samples of the validation split). Either way the global
// batch of an iteration depends only on (seed, iteration), never on the number of ranks, so a
// resumed run sees the same data.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "train/data.h"
#include "train/gpt_dataset.h"
#include "train/tokenizer.h"

namespace ampipe {

// A text's tokens, line by line (each line with its newline), the lines encoded on every core: a
// subword tokenizer is slow and memory-hungry on one multi-megabyte string. For the byte tokenizer
// this is exactly the whole text's encoding.
std::vector<int32_t> encode_text(const Tokenizer& tokenizer, const std::string& text);

struct CorpusOptions {
  std::vector<std::string> data_path;  // one text file or prefix, or pairs "WEIGHT PREFIX"
  std::string split = "969,30,1";      // indexed datasets: train,validation,test by documents
  int64_t seq_len = 0;
  uint64_t seed = 0;
  int64_t train_samples = 0;       // global batch x iterations (indexed: the blend's index size)
  int64_t validation_samples = 0;  // windows per evaluation
};

class TrainingCorpus {
 public:
  // `tokenizer` (borrowed) encodes a text file; an indexed dataset's ids are checked against
  // `vocab_size` (the model's, padded).
  TrainingCorpus(const CorpusOptions& options, const Tokenizer& tokenizer, int64_t vocab_size);

  const WindowSource& train() const { return *train_; }
  const WindowSource& validation() const { return *validation_; }
  // Window ids of iteration `iteration`'s global batch (global_batch of them).
  std::vector<int64_t> training_ids(int64_t iteration, int64_t global_batch) const;
  // `count` validation window ids (evenly spread over a text file's validation part; the first
  // samples of an indexed validation split).
  std::vector<int64_t> validation_ids(int64_t count) const;
  // Bytes of text per token (a text file's mean; 0 for indexed datasets), to report the validation
  // loss in nats per byte whatever the tokenizer.
  double bytes_per_token() const { return bytes_per_token_; }
  // One line per source, for the log ("data: 3868416 train / 429823 validation tokens ...").
  const std::vector<std::string>& summary() const { return summary_; }

  // Whether `path` names an indexed dataset (PATH.bin and PATH.idx exist).
  static bool is_indexed_prefix(const std::string& path);

 private:
  CorpusOptions options_;
  bool indexed_ = false;
  TextSplit text_;
  IndexedCorpus corpus_;
  std::unique_ptr<WindowSource> text_train_, text_validation_;
  const WindowSource* train_ = nullptr;
  const WindowSource* validation_ = nullptr;
  double bytes_per_token_ = 0;
  std::vector<std::string> summary_;
};

}  // namespace ampipe
