#include "train/corpus.h"

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string_view>
#include <thread>

#include "core/parallel.h"

#include "core/error.h"

namespace ampipe {
namespace {

std::string read_text(const std::string& path) {
  AMPIPE_CHECK(!std::filesystem::is_directory(path))
      << "data file '" << path
      << "' is a directory; give a text file, or an indexed dataset's prefix (the path "
         "of PREFIX.bin / PREFIX.idx without the extension)";
  std::ifstream in(path, std::ios::binary);
  AMPIPE_CHECK(in.good()) << "cannot open data file '" << path
                          << "' (does it exist? the default corpus is written by scripts/setup.sh; an indexed "
                             "dataset is named by its prefix, without .bin / .idx)";
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  AMPIPE_CHECK(!in.bad()) << "error reading data file '" << path << "'";
  AMPIPE_CHECK(!text.empty()) << "data file '" << path << "' is empty";
  return text;
}

}  // namespace

std::vector<int32_t> encode_text(const Tokenizer& tokenizer, const std::string& text) {
  std::vector<std::string_view> lines;
  for (size_t begin = 0; begin < text.size();) {
    const size_t nl = text.find('\n', begin);
    const size_t end = nl == std::string::npos ? text.size() : nl + 1;
    lines.emplace_back(text.data() + begin, end - begin);
    begin = end;
  }
  const size_t parts = std::max<size_t>(1, std::min<size_t>(lines.size(), static_cast<size_t>(available_cores())));
  std::vector<std::vector<int32_t>> encoded(parts);
  std::vector<std::thread> threads;
  for (size_t p = 0; p < parts; ++p)
    threads.emplace_back([&, p] {
      for (size_t i = p * lines.size() / parts; i < (p + 1) * lines.size() / parts; ++i) {
        const std::vector<int32_t> ids = tokenizer.encode(lines[i]);
        encoded[p].insert(encoded[p].end(), ids.begin(), ids.end());
      }
    });
  for (std::thread& t : threads) t.join();
  std::vector<int32_t> tokens;
  for (const auto& e : encoded) tokens.insert(tokens.end(), e.begin(), e.end());
  return tokens;
}

bool TrainingCorpus::is_indexed_prefix(const std::string& path) {
  return std::filesystem::exists(indexed_bin_path(path)) && std::filesystem::exists(indexed_idx_path(path));
}

TrainingCorpus::TrainingCorpus(const CorpusOptions& options, const Tokenizer& tokenizer, int64_t vocab_size)
    : options_(options) {
  const std::vector<WeightedPrefix> blend = parse_data_path(options.data_path);
  indexed_ = blend.size() > 1 || is_indexed_prefix(blend[0].prefix);
  if (indexed_) {
    corpus_ = open_indexed_corpus(blend, parse_split(options.split), options.seq_len, options.seed,
                                  options.train_samples, options.validation_samples, vocab_size,
                                  tokenizer.identity());
    train_ = corpus_.train.get();
    validation_ = corpus_.validation.get();
    summary_ = corpus_.summary;
    summary_.push_back("data: " + std::to_string(corpus_.train_tokens) + " train / " +
                       std::to_string(corpus_.validation_tokens) + " validation tokens (one epoch)");
    return;
  }
  const std::string& path = blend[0].prefix;
  const std::string text = read_text(path);
  std::vector<int32_t> tokens = encode_text(tokenizer, text);
  for (int32_t t : tokens)
    AMPIPE_CHECK(t >= 0 && t < vocab_size) << "tokenizer produced id " << t << " outside the vocabulary " << vocab_size;
  const int64_t all_tokens = static_cast<int64_t>(tokens.size());
  text_ = split_train_validation(std::move(tokens), options.seq_len, path);
  // The file's mean bytes per token (1 for the byte tokenizer), to state losses per byte.
  bytes_per_token_ = static_cast<double>(text.size()) / static_cast<double>(all_tokens);
  text_train_ = std::make_unique<TokenWindows>(text_.train);
  text_validation_ = std::make_unique<TokenWindows>(text_.validation);
  train_ = text_train_.get();
  validation_ = text_validation_.get();
  summary_.push_back("data: " + path + ": " + std::to_string(text.size()) + " bytes, " + std::to_string(all_tokens) +
                     " tokens (" + tokenizer.type() + "): " + std::to_string(text_.train.size()) + " train / " +
                     std::to_string(text_.validation.size()) + " validation tokens");
}

std::vector<int64_t> TrainingCorpus::training_ids(int64_t iteration, int64_t global_batch) const {
  if (!indexed_)
    return training_offsets(options_.seed, iteration, global_batch, static_cast<int64_t>(text_.train.size()),
                            options_.seq_len);
  std::vector<int64_t> ids(static_cast<size_t>(global_batch));
  for (int64_t i = 0; i < global_batch; ++i) ids[static_cast<size_t>(i)] = iteration * global_batch + i;
  return ids;
}

std::vector<int64_t> TrainingCorpus::validation_ids(int64_t count) const {
  if (!indexed_) return evaluation_offsets(count, static_cast<int64_t>(text_.validation.size()), options_.seq_len);
  std::vector<int64_t> ids(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) ids[static_cast<size_t>(i)] = i;
  return ids;
}

}  // namespace ampipe
