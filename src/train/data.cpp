#include "train/data.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "core/random.h"

namespace ampipe {

std::vector<int32_t> byte_encode(const std::string& text) {
  std::vector<int32_t> tokens(text.size());
  for (size_t i = 0; i < text.size(); ++i) tokens[i] = static_cast<unsigned char>(text[i]);
  return tokens;
}

std::string byte_decode(const std::vector<int32_t>& tokens) {
  std::string text(tokens.size(), '\0');
  for (size_t i = 0; i < tokens.size(); ++i) text[i] = static_cast<char>(tokens[i] & 0xFF);
  return text;
}

std::vector<int32_t> load_tokens(const std::string& path) {
  AMPIPE_CHECK(!std::filesystem::is_directory(path))
      << "data file '" << path
      << "' is a directory; give a text file, or an indexed dataset's prefix (the path "
         "of PREFIX.bin / PREFIX.idx without the extension)";
  std::ifstream in(path, std::ios::binary);
  AMPIPE_CHECK(in.good()) << "cannot open data file '" << path
                          << "' (does it exist? the default corpus is written by scripts/setup.sh)";
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  AMPIPE_CHECK(!in.bad()) << "error reading data file '" << path << "'";
  AMPIPE_CHECK(!text.empty()) << "data file '" << path << "' is empty";
  return byte_encode(text);
}

TextSplit split_train_validation(std::vector<int32_t> tokens, int64_t seq_len, const std::string& path) {
  const int64_t n = static_cast<int64_t>(tokens.size());
  const int64_t n_val = n / 10;
  const int64_t window = seq_len + 1;
  AMPIPE_CHECK(n - n_val >= window && n_val >= window)
      << "data file '" << path << "' has " << n << " tokens: too short for --seq-length " << seq_len
      << "; the training part (90%) and the validation part (10%) must each hold one window of " << window
      << " tokens, so the file needs at least " << 10 * window << " bytes";
  TextSplit split;
  split.validation.assign(tokens.end() - n_val, tokens.end());
  tokens.resize(n - n_val);
  split.train = std::move(tokens);
  return split;
}

void TokenWindows::window(int64_t offset, int64_t seq_len, int32_t* out) const {
  AMPIPE_CHECK(offset >= 0 && offset + seq_len + 1 <= static_cast<int64_t>(tokens_.size()))
      << "window at " << offset << " runs past the data (" << tokens_.size() << " tokens)";
  std::copy(tokens_.begin() + offset, tokens_.begin() + offset + seq_len + 1, out);
}

Batch make_batch(const WindowSource& source, const std::vector<int64_t>& ids, int64_t seq_len) {
  const int64_t B = static_cast<int64_t>(ids.size());
  Batch batch;
  batch.batch = B;
  batch.tokens = Tensor::empty({B * seq_len}, DType::I32);
  batch.targets = Tensor::empty({B * seq_len}, DType::I32);
  int32_t* tok = batch.tokens.data<int32_t>();
  int32_t* tgt = batch.targets.data<int32_t>();
  std::vector<int32_t> window(static_cast<size_t>(seq_len + 1));
  for (int64_t b = 0; b < B; ++b) {
    source.window(ids[b], seq_len, window.data());
    std::copy(window.begin(), window.end() - 1, tok + b * seq_len);
    std::copy(window.begin() + 1, window.end(), tgt + b * seq_len);
  }
  return batch;
}

Batch make_batch(const std::vector<int32_t>& data, const std::vector<int64_t>& offsets, int64_t seq_len) {
  return make_batch(TokenWindows(data), offsets, seq_len);
}

std::vector<int64_t> training_offsets(uint64_t seed, int64_t iteration, int64_t global_batch, int64_t data_len,
                                      int64_t seq_len) {
  const int64_t starts = data_len - seq_len;  // valid offsets: [0, data_len - seq_len - 1]
  AMPIPE_CHECK(starts >= 1) << "training data of " << data_len << " tokens is shorter than one window";
  Rng rng(mix_seed(seed, static_cast<uint64_t>(iteration)));
  std::vector<int64_t> offsets(global_batch);
  for (int64_t& o : offsets) o = static_cast<int64_t>(rng.below(static_cast<uint64_t>(starts)));
  return offsets;
}

std::vector<int64_t> evaluation_offsets(int64_t count, int64_t data_len, int64_t seq_len) {
  const int64_t last = data_len - seq_len - 1;
  std::vector<int64_t> offsets(count);
  for (int64_t i = 0; i < count; ++i) offsets[i] = count == 1 ? 0 : last * i / (count - 1);
  return offsets;
}

}  // namespace ampipe
