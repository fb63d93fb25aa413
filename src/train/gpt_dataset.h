// Training samples from Megatron-format indexed datasets (train/indexed_dataset.h), drawn the way
// Megatron-LM's GPTDataset and BlendedDataset draw them.
//
// A dataset's documents (its sequences, one per document as `ampipe preprocess` writes them) are
// cut by --split into train / validation / test ranges of consecutive documents, so the splits never
// share a document. Within a split, each epoch shuffles the document order (seeded by the seed, the
// split and the epoch), concatenates the documents, and cuts samples of seq_len + 1 tokens every
// seq_len tokens (sample j covers tokens [j N, j N + N + 1) of the epoch's stream, across document
// boundaries); the epoch's sample order is shuffled too, and the next epoch follows. So sample g
// of a split is known from (seed, g) alone: no sample repeats within an epoch, the order does not
// depend on the number of ranks, and a resumed run continues the same sequence.
//
// A blend of datasets with weights draws sample g from the dataset whose share so far lags its
// weight most (Megatron's greedy rule), and that dataset's next sample; the realised proportions
// stay within one sample of the weights at every prefix.
//
// Not thread-safe (the loader runs on the training thread); memory is O(documents) per dataset,
// the tokens stay memory-mapped.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "train/data.h"
#include "train/indexed_dataset.h"

namespace ampipe {

struct WeightedPrefix {
  double weight = 1.0;
  std::string prefix;
};
// --data-path items: one path ("PREFIX" or a text file), or pairs "W1 PREFIX1 W2 PREFIX2 ...".
// Weights must be positive numbers; refuses anything else naming the item.
std::vector<WeightedPrefix> parse_data_path(const std::vector<std::string>& items);
// --split "969,30,1" (or "98,2" / "100"): the train / validation / test fractions; refuses
// negative or all-zero parts, naming the value.
std::array<double, 3> parse_split(const std::string& text);
// Megatron's rule for a split of n documents: boundaries [0, a, b, n] from the normalised fractions.
std::array<int64_t, 4> split_boundaries(int64_t documents, const std::array<double, 3>& fractions);

// The samples of documents [begin, end) of one dataset (one split of it).
class SplitSamples final : public WindowSource {
 public:
  SplitSamples(std::shared_ptr<const IndexedDataset> data, int64_t begin, int64_t end, int64_t seq_len,
               uint64_t seed);
  int64_t samples_per_epoch() const { return samples_per_epoch_; }
  int64_t tokens() const { return tokens_; }
  // Sample `index` (any epoch): seq_len + 1 tokens.
  void window(int64_t index, int64_t seq_len, int32_t* out) const override;

 private:
  struct Epoch {
    std::vector<int64_t> documents;  // shuffled document order
    std::vector<int64_t> starts;     // token offset of each document in the epoch's stream
    std::vector<int64_t> samples;    // shuffled sample order
  };
  const Epoch& epoch(int64_t e) const;

  std::shared_ptr<const IndexedDataset> data_;
  int64_t begin_, end_, seq_len_, tokens_ = 0, samples_per_epoch_ = 0;
  uint64_t seed_;
  mutable std::map<int64_t, Epoch> epochs_;  // the last two used
};

// Sample g of a blend: from part dataset_of[g], its sample number sample_of[g].
class BlendedSamples final : public WindowSource {
 public:
  // Builds the index for samples [0, total).
  BlendedSamples(std::vector<std::unique_ptr<SplitSamples>> parts, std::vector<double> weights, int64_t total);
  void window(int64_t index, int64_t seq_len, int32_t* out) const override;
  // Samples drawn from each part among the first `count` (count <= total).
  std::vector<int64_t> drawn(int64_t count) const;

 private:
  std::vector<std::unique_ptr<SplitSamples>> parts_;
  std::vector<int16_t> dataset_of_;
  std::vector<int64_t> sample_of_;
};

// The train and validation samples of a blend of indexed datasets (every prefix opened, its
// tokens checked against the vocabulary). `train_samples` / `validation_samples`: how many each
// will be asked for (the blend's index is built for that many).
struct IndexedCorpus {
  std::unique_ptr<BlendedSamples> train, validation;
  int64_t train_tokens = 0, validation_tokens = 0;  // tokens in the splits (one epoch)
  std::vector<std::string> summary;                 // one line per dataset, for the log
};
// `tokenizer_identity` (Tokenizer::identity, "" = unchecked): each dataset's tokenizer record
// (below), when it has one, must name this tokenizer.
IndexedCorpus open_indexed_corpus(const std::vector<WeightedPrefix>& blend,
                                  const std::array<double, 3>& split, int64_t seq_len, uint64_t seed,
                                  int64_t train_samples, int64_t validation_samples, int64_t vocab_size,
                                  const std::string& tokenizer_identity = "");

// One dataset's part of --split, for evaluation: the tokens of its documents in file order.
struct EvaluationPart {
  std::string prefix;
  double weight = 1.0;
  int64_t documents = 0;
  std::vector<int32_t> tokens;
};
// Part `part` (1 = validation, 2 = test) of every dataset of `blend`, cut by `split` with the rule
// training uses (split_boundaries), so a model is evaluated on exactly the documents its training
// held out. Every token is checked against `vocab_size`. Refuses an empty part naming the dataset.
std::vector<EvaluationPart> evaluation_parts(const std::vector<WeightedPrefix>& blend,
                                             const std::array<double, 3>& split, int part, int64_t vocab_size,
                                             const std::string& tokenizer_identity = "");

// The tokenizer a dataset was made with, recorded beside it by `ampipe preprocess` as
// PREFIX.tokenizer.json ({"tokenizer": identity, "vocab_size": n}; Megatron-Core ignores the file).
// Two tokenizers of one vocabulary size would otherwise be mixed up without a word.
std::string tokenizer_record_path(const std::string& prefix);
// Writes the record atomically (before the dataset's .idx, so a complete dataset has it).
void write_tokenizer_record(const std::string& prefix, const std::string& identity, int64_t vocab_size);
// Refuses, naming both tokenizers and the record, a dataset whose record names another tokenizer
// than `identity`; a dataset without a record (made by Megatron's tools) is accepted. Throws
// ampipe::Error on a malformed record, naming it.
void check_tokenizer_record(const std::string& prefix, const std::string& identity);

}  // namespace ampipe
