#include "train/gpt_dataset.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <numeric>
#include <sstream>

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/random.h"

namespace ampipe {
namespace {

// Fisher-Yates with the project's generator: the same permutation on every machine.
void shuffle(std::vector<int64_t>& v, uint64_t seed) {
  Rng rng(seed);
  for (int64_t i = static_cast<int64_t>(v.size()) - 1; i > 0; --i) {
    const int64_t j = static_cast<int64_t>(rng.below(static_cast<uint64_t>(i + 1)));
    std::swap(v[static_cast<size_t>(i)], v[static_cast<size_t>(j)]);
  }
}

bool parse_double(const std::string& text, double& value) {
  try {
    size_t used = 0;
    value = std::stod(text, &used);
    return used == text.size();
  } catch (const std::exception&) {
    return false;
  }
}

}  // namespace

std::vector<WeightedPrefix> parse_data_path(const std::vector<std::string>& items) {
  AMPIPE_CHECK(!items.empty()) << "--data-path needs a text file, a dataset prefix, or pairs 'WEIGHT PREFIX ...'";
  if (items.size() == 1) return {{1.0, items[0]}};
  AMPIPE_CHECK(items.size() % 2 == 0) << "--data-path with several items takes pairs 'WEIGHT PREFIX', got "
                                      << items.size() << " items";
  std::vector<WeightedPrefix> blend;
  for (size_t i = 0; i < items.size(); i += 2) {
    double w = 0;
    AMPIPE_CHECK(parse_double(items[i], w) && std::isfinite(w) && w > 0)
        << "--data-path weight '" << items[i] << "' (before '" << items[i + 1] << "') is not a positive number";
    blend.push_back({w, items[i + 1]});
  }
  return blend;
}

std::array<double, 3> parse_split(const std::string& text) {
  std::array<double, 3> parts{0, 0, 0};
  std::stringstream in(text);
  std::string item;
  size_t n = 0;
  while (std::getline(in, item, ',')) {
    AMPIPE_CHECK(n < 3) << "--split '" << text << "' has more than three parts (train,validation,test)";
    AMPIPE_CHECK(parse_double(item, parts[n]) && std::isfinite(parts[n]) && parts[n] >= 0)
        << "--split '" << text << "': part '" << item << "' is not a number >= 0";
    ++n;
  }
  double sum = parts[0] + parts[1] + parts[2];
  AMPIPE_CHECK(n >= 1 && sum > 0) << "--split '" << text << "' must have a positive part, e.g. 969,30,1";
  if (!std::isfinite(sum)) {
    // Finite parts whose sum overflows ("1e308,1e308"): divided by an infinite sum they would all
    // become 0. Scaled by the largest part first, the sum is at most 3; other splits are divided
    // as they are, so their fractions stay bit for bit Megatron's.
    const double largest = std::max({parts[0], parts[1], parts[2]});
    for (double& p : parts) p /= largest;
    sum = parts[0] + parts[1] + parts[2];
  }
  for (double& p : parts) p /= sum;
  return parts;
}

std::array<int64_t, 4> split_boundaries(int64_t documents, const std::array<double, 3>& fractions) {
  // Megatron: boundaries at round(cumulative fraction * n), the difference going to the last split.
  std::array<int64_t, 4> b{0, 0, 0, documents};
  double cumulative = 0;
  for (int i = 0; i < 2; ++i) {
    cumulative += fractions[static_cast<size_t>(i)];
    b[static_cast<size_t>(i) + 1] = std::min<int64_t>(documents, std::llround(cumulative * static_cast<double>(documents)));
  }
  return b;
}

SplitSamples::SplitSamples(std::shared_ptr<const IndexedDataset> data, int64_t begin, int64_t end, int64_t seq_len,
                           uint64_t seed)
    : data_(std::move(data)), begin_(begin), end_(end), seq_len_(seq_len), seed_(seed) {
  AMPIPE_CHECK(0 <= begin && begin <= end && end <= data_->num_sequences())
      << data_->prefix() << ": documents [" << begin << ", " << end << ") are not inside [0, "
      << data_->num_sequences() << ")";
  for (int64_t d = begin; d < end; ++d) tokens_ += data_->sequence_length(d);
  samples_per_epoch_ = tokens_ > 0 ? (tokens_ - 1) / seq_len : 0;
}

const SplitSamples::Epoch& SplitSamples::epoch(int64_t e) const {
  auto it = epochs_.find(e);
  if (it != epochs_.end()) return it->second;
  if (epochs_.size() >= 2) epochs_.erase(epochs_.begin()->first < e ? epochs_.begin() : std::prev(epochs_.end()));
  Epoch ep;
  ep.documents.resize(static_cast<size_t>(end_ - begin_));
  std::iota(ep.documents.begin(), ep.documents.end(), begin_);
  shuffle(ep.documents, mix_seed(mix_seed(seed_, 0x646f6373ull), static_cast<uint64_t>(e)));
  ep.starts.resize(ep.documents.size() + 1);
  ep.starts[0] = 0;
  for (size_t i = 0; i < ep.documents.size(); ++i) ep.starts[i + 1] = ep.starts[i] + data_->sequence_length(ep.documents[i]);
  ep.samples.resize(static_cast<size_t>(samples_per_epoch_));
  std::iota(ep.samples.begin(), ep.samples.end(), int64_t{0});
  shuffle(ep.samples, mix_seed(mix_seed(seed_, 0x73616d70ull), static_cast<uint64_t>(e)));
  return epochs_.emplace(e, std::move(ep)).first->second;
}

void SplitSamples::window(int64_t index, int64_t seq_len, int32_t* out) const {
  AMPIPE_CHECK(seq_len == seq_len_) << "samples of " << data_->prefix() << " were cut for --seq-length " << seq_len_
                                    << ", asked for " << seq_len;
  AMPIPE_CHECK(samples_per_epoch_ > 0) << data_->prefix() << ": documents [" << begin_ << ", " << end_ << ") hold "
                                       << tokens_ << " tokens, fewer than one sample of " << seq_len + 1;
  AMPIPE_CHECK(index >= 0) << "sample index " << index << " is negative";
  const Epoch& ep = epoch(index / samples_per_epoch_);
  const int64_t first = ep.samples[static_cast<size_t>(index % samples_per_epoch_)] * seq_len;
  // The document holding the sample's first token, then as many documents as the sample spans.
  size_t doc = static_cast<size_t>(std::upper_bound(ep.starts.begin(), ep.starts.end(), first) - ep.starts.begin() - 1);
  int64_t pos = first, remaining = seq_len + 1;
  while (remaining > 0) {
    const int64_t offset = pos - ep.starts[doc];
    const int64_t take = std::min(remaining, ep.starts[doc + 1] - pos);
    if (take > 0) {
      data_->read(ep.documents[doc], offset, take, out);
      out += take;
      remaining -= take;
      pos += take;
    }
    ++doc;
  }
}

BlendedSamples::BlendedSamples(std::vector<std::unique_ptr<SplitSamples>> parts, std::vector<double> weights,
                               int64_t total)
    : parts_(std::move(parts)) {
  AMPIPE_CHECK(!parts_.empty() && parts_.size() == weights.size() && parts_.size() < 32768)
      << "a blend needs one weight per dataset (at most 32767 datasets)";
  const double sum = std::accumulate(weights.begin(), weights.end(), 0.0);
  for (double& w : weights) w /= sum;
  dataset_of_.resize(static_cast<size_t>(total));
  sample_of_.resize(static_cast<size_t>(total));
  std::vector<int64_t> count(parts_.size(), 0);
  for (int64_t g = 0; g < total; ++g) {
    // Megatron's rule: the dataset whose count lags its weight the most (ties to the lower index).
    size_t best = 0;
    double best_error = -1e300;
    for (size_t i = 0; i < parts_.size(); ++i) {
      const double error = weights[i] * static_cast<double>(g + 1) - static_cast<double>(count[i]);
      if (error > best_error) {
        best_error = error;
        best = i;
      }
    }
    dataset_of_[static_cast<size_t>(g)] = static_cast<int16_t>(best);
    sample_of_[static_cast<size_t>(g)] = count[best]++;
  }
}

void BlendedSamples::window(int64_t index, int64_t seq_len, int32_t* out) const {
  AMPIPE_CHECK(index >= 0 && index < static_cast<int64_t>(dataset_of_.size()))
      << "sample " << index << " is past the " << dataset_of_.size() << " samples the blend was built for";
  parts_[static_cast<size_t>(dataset_of_[static_cast<size_t>(index)])]->window(
      sample_of_[static_cast<size_t>(index)], seq_len, out);
}

std::vector<int64_t> BlendedSamples::drawn(int64_t count) const {
  AMPIPE_CHECK(count >= 0 && count <= static_cast<int64_t>(dataset_of_.size()))
      << "asked for the first " << count << " of " << dataset_of_.size() << " samples";
  std::vector<int64_t> n(parts_.size(), 0);
  for (int64_t g = 0; g < count; ++g) ++n[static_cast<size_t>(dataset_of_[static_cast<size_t>(g)])];
  return n;
}

IndexedCorpus open_indexed_corpus(const std::vector<WeightedPrefix>& blend,
                                  const std::array<double, 3>& split, int64_t seq_len, uint64_t seed,
                                  int64_t train_samples, int64_t validation_samples, int64_t vocab_size,
                                  const std::string& tokenizer_identity) {
  IndexedCorpus corpus;
  std::vector<std::unique_ptr<SplitSamples>> train, validation;
  std::vector<double> weights;
  for (size_t i = 0; i < blend.size(); ++i) {
    auto data = std::make_shared<const IndexedDataset>(blend[i].prefix);
    check_tokenizer_record(blend[i].prefix, tokenizer_identity);
    data->check_vocab(vocab_size);
    const std::array<int64_t, 4> b = split_boundaries(data->num_sequences(), split);
    const uint64_t dataset_seed = mix_seed(seed, i);
    train.push_back(std::make_unique<SplitSamples>(data, b[0], b[1], seq_len, mix_seed(dataset_seed, 1)));
    validation.push_back(std::make_unique<SplitSamples>(data, b[1], b[2], seq_len, mix_seed(dataset_seed, 2)));
    AMPIPE_CHECK(train.back()->samples_per_epoch() > 0)
        << blend[i].prefix << ": its training split (documents [" << b[0] << ", " << b[1] << ") of --split) holds "
        << train.back()->tokens() << " tokens, fewer than one sample of --seq-length + 1 = " << seq_len + 1;
    AMPIPE_CHECK(validation.back()->samples_per_epoch() > 0)
        << blend[i].prefix << ": its validation split (documents [" << b[1] << ", " << b[2] << ")) holds "
        << validation.back()->tokens() << " tokens, fewer than one sample of " << seq_len + 1
        << "; give validation a larger part of --split";
    corpus.train_tokens += train.back()->tokens();
    corpus.validation_tokens += validation.back()->tokens();
    std::ostringstream line;
    line << "data: " << blend[i].prefix << " (weight " << blend[i].weight << "): " << data->num_sequences()
         << " documents, " << data->total_tokens() << " tokens (" << indexed_dtype_name(data->dtype())
         << "); split " << b[1] - b[0] << " / " << b[2] - b[1] << " / " << b[3] - b[2] << " documents";
    corpus.summary.push_back(line.str());
    weights.push_back(blend[i].weight);
  }
  corpus.train = std::make_unique<BlendedSamples>(std::move(train), weights, train_samples);
  corpus.validation = std::make_unique<BlendedSamples>(std::move(validation), weights, validation_samples);
  return corpus;
}

std::vector<EvaluationPart> evaluation_parts(const std::vector<WeightedPrefix>& blend,
                                             const std::array<double, 3>& split, int part, int64_t vocab_size,
                                             const std::string& tokenizer_identity) {
  AMPIPE_CHECK(part == 1 || part == 2) << "evaluation part " << part << " is not 1 (validation) or 2 (test)";
  std::vector<EvaluationPart> parts;
  for (const WeightedPrefix& item : blend) {
    const IndexedDataset data(item.prefix);
    check_tokenizer_record(item.prefix, tokenizer_identity);
    data.check_vocab(vocab_size);
    const std::array<int64_t, 4> b = split_boundaries(data.num_sequences(), split);
    EvaluationPart p{item.prefix, item.weight, b[part + 1] - b[part], {}};
    for (int64_t s = b[part]; s < b[part + 1]; ++s) {
      const size_t at = p.tokens.size();
      p.tokens.resize(at + static_cast<size_t>(data.sequence_length(s)));
      data.read(s, 0, data.sequence_length(s), p.tokens.data() + at);
    }
    AMPIPE_CHECK(!p.tokens.empty()) << item.prefix << ": its " << (part == 1 ? "validation" : "test")
                                    << " part of --split holds no document (documents [" << b[part] << ", "
                                    << b[part + 1] << ") of " << data.num_sequences()
                                    << "); give that part a larger share of --split";
    parts.push_back(std::move(p));
  }
  return parts;
}

std::string tokenizer_record_path(const std::string& prefix) { return prefix + ".tokenizer.json"; }

void write_tokenizer_record(const std::string& prefix, const std::string& identity, int64_t vocab_size) {
  const nlohmann::json record = {{"tokenizer", identity}, {"vocab_size", vocab_size}};
  write_file_atomically(tokenizer_record_path(prefix), record.dump() + "\n");
}

void check_tokenizer_record(const std::string& prefix, const std::string& identity) {
  const std::string path = tokenizer_record_path(prefix);
  if (identity.empty() || !std::filesystem::exists(path)) return;
  std::string recorded;
  try {
    const nlohmann::json record = nlohmann::json::parse(read_file(path));
    recorded = record.at("tokenizer").get<std::string>();
  } catch (const nlohmann::json::exception& e) {
    AMPIPE_CHECK(false) << path << " is not a tokenizer record ({\"tokenizer\": ...}): " << e.what();
  }
  AMPIPE_CHECK(recorded == identity)
      << "dataset '" << prefix << "' was tokenized with " << recorded << " (" << path
      << "), but this run's tokenizer is " << identity
      << "; its ids would mean other text. Use the tokenizer it was made with, or "
         "preprocess the data again with this one";
}

}  // namespace ampipe
