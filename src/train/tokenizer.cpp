#include "train/tokenizer.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <fstream>
#include <functional>
#include <limits>
#include <sstream>
#include <system_error>
#include <type_traits>
#include <unordered_map>
#include <utility>

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/parallel.h"
#include "core/random.h"

namespace ampipe {

namespace {

static_assert(std::is_same_v<int, int32_t>, "SentencePiece's ids are int; ours are int32_t");

constexpr const char* kByte = "byte";
constexpr const char* kSentencePiece = "SentencePieceTokenizer";

std::string fnv1a64_hex(std::string_view bytes) {
  uint64_t hash = 0xcbf29ce484222325ull;
  for (unsigned char c : bytes) {
    hash ^= c;
    hash *= 0x100000001b3ull;
  }
  char text[17];
  std::snprintf(text, sizeof(text), "%016llx", static_cast<unsigned long long>(hash));
  return text;
}

class ByteTokenizer final : public Tokenizer {
 public:
  std::vector<int32_t> encode(std::string_view text) const override {
    std::vector<int32_t> ids(text.size());
    for (size_t i = 0; i < text.size(); ++i) ids[i] = static_cast<unsigned char>(text[i]);
    return ids;
  }
  std::string decode(const std::vector<int32_t>& ids) const override {
    std::string text(ids.size(), '\0');
    for (size_t i = 0; i < ids.size(); ++i) {
      AMPIPE_CHECK(ids[i] >= 0 && ids[i] < 256) << "byte tokenizer: cannot decode id " << ids[i]
                                                << " (position " << i << "); ids must be in [0, 256)";
      text[i] = static_cast<char>(static_cast<unsigned char>(ids[i]));
    }
    return text;
  }
  int64_t vocab_size() const override { return 256; }
  int32_t eod_id() const override { return -1; }
  std::string type() const override { return kByte; }
  std::string identity() const override { return kByte; }
  std::string serialized_model() const override { return {}; }
};

class SentencePieceTokenizer final : public Tokenizer {
 public:
  // `bytes`: the .model file's contents; `source` names it in messages.
  SentencePieceTokenizer(std::string bytes, const std::string& source) : bytes_(std::move(bytes)) {
    AMPIPE_CHECK(!bytes_.empty()) << "SentencePiece model '" << source << "' is empty";
    sentencepiece::util::Status status = processor_.LoadFromSerializedProto(bytes_);
    AMPIPE_CHECK(status.ok()) << "SentencePiece model '" << source
                              << "' is not a valid model: " << status.ToString();
    vocab_size_ = processor_.GetPieceSize();
    AMPIPE_CHECK(vocab_size_ > 0) << "SentencePiece model '" << source << "' has no pieces";
    eod_id_ = processor_.eos_id();
    identity_ = std::string(kSentencePiece) + ":" + fnv1a64_hex(bytes_);
  }

  std::vector<int32_t> encode(std::string_view text) const override {
    std::vector<int> ids;
    sentencepiece::util::Status status = processor_.Encode(text, &ids);
    AMPIPE_CHECK(status.ok()) << "SentencePiece encode failed: " << status.ToString();
    return ids;
  }
  std::string decode(const std::vector<int32_t>& ids) const override {
    for (size_t i = 0; i < ids.size(); ++i) {
      AMPIPE_CHECK(ids[i] >= 0 && ids[i] < vocab_size_)
          << "SentencePiece tokenizer: cannot decode id " << ids[i] << " (position " << i
          << "); ids must be in [0, " << vocab_size_ << ")";
    }
    std::string text;
    sentencepiece::util::Status status = processor_.Decode(ids, &text);
    AMPIPE_CHECK(status.ok()) << "SentencePiece decode failed: " << status.ToString();
    return text;
  }
  int64_t vocab_size() const override { return vocab_size_; }
  int32_t eod_id() const override { return eod_id_; }
  std::string type() const override { return kSentencePiece; }
  std::string identity() const override { return identity_; }
  std::string serialized_model() const override { return bytes_; }

 private:
  std::string bytes_;
  sentencepiece::SentencePieceProcessor processor_;
  int64_t vocab_size_ = 0;
  int32_t eod_id_ = -1;
  std::string identity_;
};

std::string join(const std::vector<std::string>& items) {
  std::string text;
  for (const std::string& item : items) text += (text.empty() ? "" : ", ") + item;
  return text;
}

std::string os_error(int err) { return std::error_code(err, std::generic_category()).message(); }

// Calls fn(line) for every non-empty line of the files in order (without the '\n'). Throws
// ampipe::Error naming a file that cannot be opened or read.
void for_each_line(const std::vector<std::string>& files, const std::function<void(const std::string&)>& fn) {
  std::string line;
  for (const std::string& path : files) {
    errno = 0;
    std::ifstream stream(path, std::ios::binary);
    AMPIPE_CHECK(stream.is_open()) << "cannot open training input '" << path << "': " << os_error(errno);
    while (std::getline(stream, line)) {
      if (!line.empty()) fn(line);
    }
    AMPIPE_CHECK(!stream.bad()) << "error reading training input '" << path << "'";
  }
}

// The training sentences handed to SentencePiece: the non-empty lines of the input files in order,
// or only those whose index (counting non-empty lines across the files) is in `selected` (sorted).
// Read here so that no file name reaches the model (SentencePiece records its `input` flag in the
// .model) and so that the sample is ours (SentencePiece samples with a fixed seed).
class LineIterator final : public sentencepiece::SentenceIterator {
 public:
  LineIterator(const std::vector<std::string>& files, const std::vector<uint64_t>* selected)
      : files_(files), selected_(selected) {
    Next();
  }

  bool done() const override { return done_; }
  const std::string& value() const override { return line_; }
  sentencepiece::util::Status status() const override { return status_; }
  uint64_t lines_read() const { return index_; }
  void Next() override {
    while (!done_) {
      if (selected_ != nullptr && next_selected_ == selected_->size()) {
        done_ = true;
        return;
      }
      if (!stream_.is_open()) {
        if (next_file_ == files_.size()) {
          done_ = true;
          return;
        }
        const std::string& path = files_[next_file_++];
        errno = 0;
        stream_.open(path, std::ios::binary);
        if (!stream_.is_open()) {
          fail("cannot open training input '" + path + "': " + os_error(errno));
          return;
        }
      }
      if (std::getline(stream_, line_)) {
        if (line_.empty()) continue;
        uint64_t index = index_++;
        if (selected_ == nullptr) return;
        if ((*selected_)[next_selected_] == index) {
          ++next_selected_;
          return;
        }
        continue;
      }
      if (stream_.bad()) {
        fail("error reading training input '" + files_[next_file_ - 1] + "'");
        return;
      }
      stream_.close();
      stream_.clear();
    }
  }

 private:
  void fail(const std::string& message) {
    status_ = sentencepiece::util::Status(sentencepiece::util::StatusCode::kInternal, message);
    done_ = true;
  }

  const std::vector<std::string>& files_;
  const std::vector<uint64_t>* selected_;
  size_t next_file_ = 0;
  size_t next_selected_ = 0;
  uint64_t index_ = 0;
  std::ifstream stream_;
  std::string line_;
  bool done_ = false;
  sentencepiece::util::Status status_;
};

}  // namespace

std::unique_ptr<Tokenizer> make_tokenizer(const std::string& type, const std::string& model_path) {
  if (type == kByte) {
    AMPIPE_CHECK(model_path.empty()) << "--tokenizer-type byte takes no model file, got --tokenizer-model '"
                                     << model_path << "'";
    return std::make_unique<ByteTokenizer>();
  }
  if (type == kSentencePiece) {
    AMPIPE_CHECK(!model_path.empty())
        << "--tokenizer-type " << kSentencePiece << " needs a .model file (--tokenizer-model)";
    return std::make_unique<SentencePieceTokenizer>(read_file(model_path), model_path);
  }
  throw Error("unknown --tokenizer-type '" + type + "'; allowed: " + kByte + ", " + kSentencePiece);
}

int64_t padded_vocab_size(int64_t vocab_size, int64_t divisible_by) {
  AMPIPE_CHECK(divisible_by >= 1) << "--make-vocab-size-divisible-by must be >= 1, got " << divisible_by;
  AMPIPE_CHECK(vocab_size >= 0) << "vocabulary size must be >= 0, got " << vocab_size;
  AMPIPE_CHECK(vocab_size <= std::numeric_limits<int64_t>::max() - (divisible_by - 1))
      << "vocabulary size " << vocab_size << " padded to a multiple of " << divisible_by << " overflows";
  return (vocab_size + divisible_by - 1) / divisible_by * divisible_by;
}

// SentencePiece refuses a vocabulary larger than its input allows with "Vocabulary size too high
// (1000). Please set it to a value <= 345."; the largest it allows ("345"), or "" for another error.
static std::string largest_vocabulary(const std::string& message) {
  if (message.find("Vocabulary size too high") == std::string::npos) return "";
  const size_t at = message.find("<= ");
  if (at == std::string::npos) return "";
  const size_t begin = at + 3, end = message.find_first_not_of("0123456789", begin);
  return message.substr(begin, end == std::string::npos ? std::string::npos : end - begin);
}

// SentencePiece refuses a vocabulary smaller than its required pieces with "Vocabulary size is
// smaller than required_chars. 40 vs 290. ..."; that least size ("290"), or "" for another error.
static std::string smallest_vocabulary(const std::string& message) {
  const std::string marker = "smaller than required_chars. ";
  const size_t at = message.find(marker);
  if (at == std::string::npos) return "";
  const size_t vs = message.find(" vs ", at);
  if (vs == std::string::npos) return "";
  const size_t begin = vs + 4, end = message.find_first_not_of("0123456789", begin);
  return message.substr(begin, end == std::string::npos ? std::string::npos : end - begin);
}

void train_sentencepiece(const SentencePieceTrainOptions& options) {
  AMPIPE_CHECK(!options.inputs.empty()) << "SentencePiece training needs at least one input file";
  AMPIPE_CHECK(!options.model_prefix.empty()) << "SentencePiece training needs a model prefix";
  AMPIPE_CHECK(options.vocab_size >= 1 && options.vocab_size <= std::numeric_limits<int32_t>::max())
      << "--vocab-size " << options.vocab_size << " is out of range [1, "
      << std::numeric_limits<int32_t>::max() << "]";
  AMPIPE_CHECK(options.model_type == "bpe" || options.model_type == "unigram")
      << "unknown SentencePiece --model-type '" << options.model_type << "'; allowed: bpe, unigram";
  AMPIPE_CHECK(options.input_sentence_size >= 0)
      << "--input-sentence-size must be >= 0 (0 = all), got " << options.input_sentence_size;
  AMPIPE_CHECK(options.threads >= 0) << "--threads must be >= 0 (0 = all cores), got " << options.threads;
  for (const std::string& path : options.inputs) {
    errno = 0;
    std::ifstream probe(path, std::ios::binary);
    AMPIPE_CHECK(probe.is_open()) << "cannot open training input '" << path << "': " << os_error(errno);
  }

  // The sample: a reservoir of input_sentence_size line indices drawn with our seed (reproducible
  // on every platform), then the lines themselves in a second pass.
  std::vector<uint64_t> selected;
  bool sampled = false;
  if (options.input_sentence_size > 0) {
    const auto k = static_cast<uint64_t>(options.input_sentence_size);
    Rng rng(mix_seed(options.seed, 0x73656e74656e6365ull));
    uint64_t count = 0;
    for_each_line(options.inputs, [&](const std::string&) {
      if (count < k) {
        selected.push_back(count);
      } else {
        uint64_t j = rng.below(count + 1);
        if (j < k) selected[j] = count;
      }
      ++count;
    });
    sampled = count > k;
    std::sort(selected.begin(), selected.end());
  }

  const int threads = options.threads > 0 ? options.threads : available_cores();
  const std::unordered_map<std::string, std::string> flags = {
      {"model_type", options.model_type},
      {"vocab_size", std::to_string(options.vocab_size)},
      {"input_sentence_size", "0"},  // sampled here
      {"num_threads", std::to_string(threads)},
      {"byte_fallback", "true"},
      {"character_coverage", "1.0"},
      {"split_digits", "true"},
      {"allow_whitespace_only_pieces", "true"},
      {"remove_extra_whitespaces", "false"},
      {"normalization_rule_name", "identity"},
      {"minloglevel", "1"},  // warnings and errors only
  };

  LineIterator lines(options.inputs, sampled ? &selected : nullptr);
  std::string model;
  sentencepiece::util::Status status = sentencepiece::SentencePieceTrainer::Train(flags, &lines, &model);
  AMPIPE_CHECK(status.ok() || lines.lines_read() > 0)
      << "SentencePiece training: the training inputs have no non-empty lines (" << join(options.inputs)
      << ")";
  AMPIPE_CHECK(status.ok() || largest_vocabulary(status.ToString()).empty())
      << "--vocab-size " << options.vocab_size << " is more than the training input supports: at most "
      << largest_vocabulary(status.ToString()) << " pieces with --model-type " << options.model_type << " ("
      << join(options.inputs) << "); give --vocab-size " << largest_vocabulary(status.ToString())
      << " or less, or more text";
  AMPIPE_CHECK(status.ok() || smallest_vocabulary(status.ToString()).empty())
      << "--vocab-size " << options.vocab_size << " is below the " << smallest_vocabulary(status.ToString())
      << " pieces every model of this input needs (the 256 byte pieces of byte fallback, the input's "
         "characters "
         "and the special tokens); give --vocab-size "
      << smallest_vocabulary(status.ToString()) << " or more";
  AMPIPE_CHECK(status.ok()) << "SentencePiece training failed (--vocab-size " << options.vocab_size
                            << ", --model-type " << options.model_type << "): " << status.ToString();

  // Load it back: a check of what is written, and the source of the .vocab listing.
  sentencepiece::SentencePieceProcessor processor;
  status = processor.LoadFromSerializedProto(model);
  AMPIPE_CHECK(status.ok()) << "SentencePiece produced a model that does not load: " << status.ToString();
  std::ostringstream vocab;
  for (int id = 0; id < processor.GetPieceSize(); ++id) {
    vocab << processor.IdToPiece(id) << '\t' << processor.GetScore(id) << '\n';
  }
  // The listing first: PREFIX.model, the file that matters, is only replaced once both are ready.
  write_file_atomically(options.model_prefix + ".vocab", vocab.str());
  write_file_atomically(options.model_prefix + ".model", model);
}

}  // namespace ampipe
