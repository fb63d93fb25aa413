// Samples from indexed datasets (train/gpt_dataset.h) and the training corpus over them
// (train/corpus.h): splits by whole documents, every sample of an epoch exactly once, samples that
// are the epoch's document stream cut every N tokens, blends that keep their weights, and refusals.
#include <gtest/gtest.h>

#include <filesystem>
#include <map>
#include <fstream>
#include <set>

#include "core/random.h"
#include "train/corpus.h"
#include "train/gpt_dataset.h"

namespace ampipe {
namespace {

namespace fs = std::filesystem;

std::string temp_prefix(const std::string& name) {
  const fs::path dir = fs::path(::testing::TempDir()) / ("ampipe_gpt_dataset_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  return (dir / name).string();
}

// Documents of varied lengths (some empty, some longer than a sample) whose tokens are all
// distinct (a running count from 1), so every token of a sample names its document and position.
std::vector<std::vector<int32_t>> make_documents(int64_t count, uint64_t seed) {
  Rng rng(seed);
  std::vector<std::vector<int32_t>> docs(static_cast<size_t>(count));
  int32_t next = 1;
  for (int64_t d = 0; d < count; ++d) {
    const int64_t len = d % 9 == 4 ? 0 : static_cast<int64_t>(rng.below(40));
    for (int64_t t = 0; t < len; ++t) docs[static_cast<size_t>(d)].push_back(next++);
  }
  return docs;
}

std::string write_dataset(const std::string& name, const std::vector<std::vector<int32_t>>& docs) {
  const std::string prefix = temp_prefix(name);
  IndexedDatasetWriter w(prefix, IndexedDType::U16);
  for (const auto& d : docs) w.add_document(d);
  w.finalize();
  return prefix;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  ADD_FAILURE() << "no error was thrown";
  return "";
}

TEST(GptDataset, EverySampleOfAnEpochOnceAndEachIsTheShuffledStreamCutEveryNTokens) {
  const auto docs = make_documents(60, 1);
  auto data = std::make_shared<const IndexedDataset>(write_dataset("epoch", docs));
  const int64_t N = 16;
  SplitSamples samples(data, 5, 55, N, 42);
  int64_t tokens = 0;
  for (int64_t d = 5; d < 55; ++d) tokens += static_cast<int64_t>(docs[static_cast<size_t>(d)].size());
  ASSERT_EQ(samples.tokens(), tokens);
  ASSERT_EQ(samples.samples_per_epoch(), (tokens - 1) / N);
  std::vector<std::vector<int32_t>> got(static_cast<size_t>(samples.samples_per_epoch()));
  for (int64_t i = 0; i < samples.samples_per_epoch(); ++i) {
    got[static_cast<size_t>(i)].resize(N + 1);
    samples.window(i, N, got[static_cast<size_t>(i)].data());
  }
  // Where each token lives: (document, position); first tokens of documents.
  std::map<int32_t, std::pair<int64_t, int64_t>> where;
  for (int64_t d = 0; d < 60; ++d)
    for (size_t t = 0; t < docs[static_cast<size_t>(d)].size(); ++t)
      where[docs[static_cast<size_t>(d)][t]] = {d, static_cast<int64_t>(t)};
  std::set<int32_t> covered;
  std::set<int32_t> starts;
  for (const auto& g : got) {
    EXPECT_TRUE(starts.insert(g.front()).second) << "two samples start at token " << g.front();
    for (size_t j = 0; j < g.size(); ++j) {
      const auto [d, t] = where.at(g[j]);
      EXPECT_TRUE(d >= 5 && d < 55) << "token of document " << d << " outside the split";
      covered.insert(g[j]);
      if (j == 0) continue;
      // Consecutive in one document, or the first token of the next document of the stream.
      const auto [pd, pt] = where.at(g[j - 1]);
      EXPECT_TRUE((d == pd && t == pt + 1) ||
                  (t == 0 && pt + 1 == static_cast<int64_t>(docs[static_cast<size_t>(pd)].size())))
          << "tokens " << g[j - 1] << " -> " << g[j] << " are not adjacent in a document stream";
    }
  }
  // The samples tile the epoch's stream every N tokens: N * samples + 1 distinct tokens.
  EXPECT_EQ(static_cast<int64_t>(covered.size()), N * samples.samples_per_epoch() + 1);
  // Deterministic: the same seed gives the same samples; another seed another order.
  SplitSamples again(data, 5, 55, N, 42), other(data, 5, 55, N, 43);
  std::vector<int32_t> a(N + 1), b(N + 1);
  int64_t differ = 0;
  for (int64_t i = 0; i < samples.samples_per_epoch(); ++i) {
    again.window(i, N, a.data());
    EXPECT_EQ(a, got[static_cast<size_t>(i)]);
    other.window(i, N, b.data());
    differ += b != got[static_cast<size_t>(i)];
  }
  EXPECT_GT(differ, 0);
  // The next epoch: a new order of new windows (reshuffled documents), still within the split.
  std::vector<int32_t> next(N + 1);
  samples.window(samples.samples_per_epoch(), N, next.data());
  for (int32_t v : next) EXPECT_GT(v, 0);
}

TEST(GptDataset, SplitsTakeWholeDocumentsAndNeverOverlap) {
  const auto b = split_boundaries(1000, parse_split("969,30,1"));
  EXPECT_EQ(b[0], 0);
  EXPECT_EQ(b[1], 969);
  EXPECT_EQ(b[2], 999);
  EXPECT_EQ(b[3], 1000);
  const auto c = split_boundaries(10, parse_split("98,2"));
  EXPECT_EQ(c[1], 10);  // 9.8 rounds to 10: nothing left for validation
  EXPECT_EQ(c[2], 10);
  // Documents with disjoint token values: no validation sample holds a training document's token.
  std::vector<std::vector<int32_t>> docs;
  for (int d = 0; d < 100; ++d) docs.push_back(std::vector<int32_t>(30, d + 1));
  const std::string prefix = write_dataset("split", docs);
  IndexedCorpus corpus = open_indexed_corpus({{1.0, prefix}}, parse_split("80,20,0"), 8, 7, 500, 100, 256);
  std::set<int32_t> train_values, validation_values;
  std::vector<int32_t> w(9);
  for (int64_t i = 0; i < 500; ++i) {
    corpus.train->window(i, 8, w.data());
    train_values.insert(w.begin(), w.end());
  }
  for (int64_t i = 0; i < 100; ++i) {
    corpus.validation->window(i, 8, w.data());
    validation_values.insert(w.begin(), w.end());
  }
  for (int32_t v : train_values) EXPECT_LE(v, 80);
  for (int32_t v : validation_values) EXPECT_GT(v, 80);
}

TEST(GptDataset, ABlendKeepsItsWeightsWithinOnePercent) {
  const std::string a = write_dataset("blend_a", std::vector<std::vector<int32_t>>(50, std::vector<int32_t>(20, 1)));
  const std::string b = write_dataset("blend_b", std::vector<std::vector<int32_t>>(50, std::vector<int32_t>(20, 2)));
  const std::string c = write_dataset("blend_c", std::vector<std::vector<int32_t>>(50, std::vector<int32_t>(20, 3)));
  const int64_t total = 20000;
  IndexedCorpus corpus =
      open_indexed_corpus(parse_data_path({"0.5", a, "0.3", b, "0.2", c}), parse_split("90,10,0"), 8, 3, total, 10, 256);
  const std::vector<int64_t> n = corpus.train->drawn(total);
  EXPECT_NEAR(static_cast<double>(n[0]) / total, 0.5, 0.01);
  EXPECT_NEAR(static_cast<double>(n[1]) / total, 0.3, 0.01);
  EXPECT_NEAR(static_cast<double>(n[2]) / total, 0.2, 0.01);
  // And at every prefix, within one sample per dataset of its share.
  for (int64_t count : {1, 7, 100, 1234}) {
    const std::vector<int64_t> m = corpus.train->drawn(count);
    EXPECT_NEAR(static_cast<double>(m[0]), 0.5 * count, 1.0) << count;
  }
  // The samples come from the dataset the index names: value 1, 2 or 3 throughout.
  std::vector<int32_t> w(9);
  int64_t ones = 0;
  for (int64_t i = 0; i < 1000; ++i) {
    corpus.train->window(i, 8, w.data());
    EXPECT_EQ(std::set<int32_t>(w.begin(), w.end()).size(), 1u);
    ones += w[0] == 1;
  }
  EXPECT_NEAR(ones, 500, 2);
}

// Fuzzing finding (tests/fuzz/fuzz_data_args.cpp): finite parts whose sum overflows to infinity were
// each divided by it, giving fractions 0, 0, 0 (every document in the test split) instead of 1/2, 1/2.
TEST(GptDataset, SplitWithPartsSummingPastTheLargestDouble_KeepsItsProportions) {
  const std::array<double, 3> f = parse_split("1e308,1e308");
  EXPECT_DOUBLE_EQ(f[0], 0.5);
  EXPECT_DOUBLE_EQ(f[1], 0.5);
  EXPECT_EQ(f[2], 0.0);
  const std::array<double, 3> g = parse_split("1.7e308,1.7e308,1.7e308");
  for (double x : g) EXPECT_DOUBLE_EQ(x, 1.0 / 3);
  const auto b = split_boundaries(10, f);
  EXPECT_EQ(b, (std::array<int64_t, 4>{0, 5, 10, 10}));
}

TEST(GptDataset, BadInputIsRefusedNamingTheValue) {
  EXPECT_NE(error_of([] { parse_data_path({"0.5", "a", "b"}); }).find("pairs"), std::string::npos);
  EXPECT_NE(error_of([] { parse_data_path({"heavy", "a", "0.5", "b"}); }).find("weight 'heavy'"), std::string::npos);
  EXPECT_NE(error_of([] { parse_data_path({"-1", "a", "0.5", "b"}); }).find("weight '-1'"), std::string::npos);
  EXPECT_NE(error_of([] { parse_split("90,x,1"); }).find("part 'x'"), std::string::npos);
  EXPECT_NE(error_of([] { parse_split("0,0,0"); }).find("positive part"), std::string::npos);
  EXPECT_NE(error_of([] { parse_split("1,2,3,4"); }).find("more than three"), std::string::npos);
  // A vocabulary too small for the dataset's ids names the document.
  const std::string prefix = write_dataset("vocab", make_documents(20, 2));
  EXPECT_NE(error_of([&] { open_indexed_corpus({{1.0, prefix}}, parse_split("90,10,0"), 8, 1, 10, 10, 100); })
                .find("document"),
            std::string::npos);
  // A validation split too small for one sample says so.
  EXPECT_NE(error_of([&] { open_indexed_corpus({{1.0, prefix}}, parse_split("100,0,0"), 8, 1, 10, 10, 65536); })
                .find("validation split"),
            std::string::npos);
}

// The corpus names iteration i's global batch by (seed, i) alone: R ranks x B windows read the
// same windows as 1 rank x R B, and an iteration's batch does not depend on the ones before.
TEST(TrainingCorpus, GlobalBatchesDependOnlyOnSeedAndIteration) {
  const std::string prefix = write_dataset("corpus", make_documents(200, 5));
  const std::unique_ptr<Tokenizer> byte = make_tokenizer("byte", "");
  CorpusOptions o{{prefix}, "90,10,0", 8, 11, 40 * 8, 16};
  const TrainingCorpus corpus(o, *byte, 65536);
  const std::vector<int64_t> ids = corpus.training_ids(3, 8);
  ASSERT_EQ(ids.size(), 8u);
  EXPECT_EQ(ids, corpus.training_ids(3, 8));
  const Batch whole = make_batch(corpus.train(), ids, 8);
  const Batch first = make_batch(corpus.train(), std::vector<int64_t>(ids.begin(), ids.begin() + 4), 8);
  const Batch second = make_batch(corpus.train(), std::vector<int64_t>(ids.begin() + 4, ids.end()), 8);
  auto ints = [](const Tensor& t) { return std::vector<int32_t>(t.data<int32_t>(), t.data<int32_t>() + t.numel()); };
  std::vector<int32_t> joined = ints(first.tokens), tail = ints(second.tokens);
  joined.insert(joined.end(), tail.begin(), tail.end());
  EXPECT_EQ(joined, ints(whole.tokens));
  // A text file keeps today's rule (random offsets seeded by (seed, iteration)).
  const std::string text = temp_prefix("corpus.txt");
  int64_t bytes = 0;
  {
    std::ofstream out(text);
    for (int i = 0; i < 400; ++i) {
      const std::string line = "line " + std::to_string(i) + " of the corpus\n";
      out << line;
      bytes += static_cast<int64_t>(line.size());
    }
  }
  const TrainingCorpus plain({{text}, "969,30,1", 8, 11, 0, 4}, *byte, 256);
  EXPECT_EQ(plain.training_ids(2, 4), training_offsets(11, 2, 4, bytes - bytes / 10, 8));
  EXPECT_DOUBLE_EQ(plain.bytes_per_token(), 1.0);
}

}  // namespace
}  // namespace ampipe
