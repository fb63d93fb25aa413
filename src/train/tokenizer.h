// Tokenizers: text <-> token ids, named after Megatron-LM's --tokenizer-type values.
//
// "byte": the 256 byte values are the ids (vocab 256, no end-of-document id); any byte string
// round-trips.
// "SentencePieceTokenizer": a SentencePiece .model file (BPE or unigram). Models trained by
// train_sentencepiece (byte fallback, identity normalization, no whitespace folding) round-trip
// every valid UTF-8 text exactly: decode(encode(text)) == text. (SentencePiece replaces invalid
// UTF-8 with U+FFFD, so arbitrary bytes only round-trip through "byte".)
//
// identity() names the tokenizer and, for SentencePiece, hashes the exact .model bytes that were
// loaded, so a checkpoint can refuse to be paired with a different tokenizer.
//
// Thread-safety: encode/decode/... are const and may be called from several threads at once.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace ampipe {

// A tokenizer: text <-> token ids. Megatron-LM's --tokenizer-type names.
class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual std::vector<int32_t> encode(std::string_view text) const = 0;
  // Refuses (ampipe::Error naming it) an id outside [0, vocab_size()).
  virtual std::string decode(const std::vector<int32_t>& ids) const = 0;
  virtual int64_t vocab_size() const = 0;  // ids are in [0, vocab_size), before padding
  virtual int32_t eod_id() const = 0;      // end-of-document id, or -1 when the tokenizer has none
  virtual std::string type() const = 0;    // "byte" | "SentencePieceTokenizer"
  // What a checkpoint records to refuse a mismatched pairing: "byte", or
  // "SentencePieceTokenizer:<16 hex digits of a 64-bit FNV-1a hash of the .model file's bytes>".
  virtual std::string identity() const = 0;
  // The serialized model (the .model file's bytes) for SentencePiece; empty for byte.
  virtual std::string serialized_model() const = 0;
};

// type "byte" (model_path must be empty) or "SentencePieceTokenizer" (model_path: a .model file);
// anything else refused naming the value and the allowed ones. Missing/corrupt files refused naming
// the file.
std::unique_ptr<Tokenizer> make_tokenizer(const std::string& type, const std::string& model_path);

// Megatron's padding: the smallest multiple of divisible_by that is >= vocab_size (divisible_by >= 1).
int64_t padded_vocab_size(int64_t vocab_size, int64_t divisible_by);

struct SentencePieceTrainOptions {
  std::vector<std::string> inputs;  // text files, one sentence/document per line
  std::string model_prefix;         // writes PREFIX.model and PREFIX.vocab (atomically: temp names + rename)
  int64_t vocab_size = 32000;
  std::string model_type = "bpe";         // bpe | unigram (refuse others naming the value)
  int64_t input_sentence_size = 2000000;  // sentences sampled from the input (0 = all)
  uint64_t seed = 1;                      // the sampling seed (deterministic output for a seed)
  int threads = 0;                        // 0 = all cores
};

// Trains a SentencePiece model with byte fallback, full character coverage, split digits, identity
// normalization and whitespace kept as is (see the top of this file), ids 0/1/2 = <unk>/<s>/</s>.
// Empty lines are skipped; when the input has more than input_sentence_size non-empty lines, that
// many are sampled uniformly with `seed`. (ampipe samples: SentencePiece's own sampler has a fixed
// seed, and its --random_seed does not reach training.) The model records the training options but
// no file names, so the same input lines, options, seed and thread count give the same .model bytes
// on any path. The thread count is recorded, and unigram's scores depend on it: pin `threads` for a
// reproducible identity(). Lines longer than SentencePiece's max_sentence_length (4192 bytes) are
// skipped by SentencePiece, with a warning on stderr. Refuses bad options and SentencePiece's
// failures (e.g. a vocabulary too small for the required pieces, or too large for the corpus) with
// an ampipe::Error naming the flag; a failed training touches no output file.
void train_sentencepiece(const SentencePieceTrainOptions& options);

}  // namespace ampipe
