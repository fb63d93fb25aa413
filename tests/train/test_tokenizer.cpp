// Tokenizers: the byte tokenizer, SentencePiece training (bpe, unigram) and exact round trips,
// deterministic training for a seed, the identity hash, Megatron's vocab padding, and refusals.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <random>
#include <string>
#include <vector>

#include "core/atomic_file.h"
#include "core/error.h"
#include "train/tokenizer.h"

namespace ampipe {
namespace {

namespace fs = std::filesystem;

// Runs fn, which must throw ampipe::Error with every one of `parts` in its message.
void expect_error(const std::function<void()>& fn, std::initializer_list<std::string> parts) {
  try {
    fn();
  } catch (const Error& e) {
    std::string message = e.what();
    for (const std::string& part : parts) {
      EXPECT_NE(message.find(part), std::string::npos) << "'" << part << "' not in: " << message;
    }
    return;
  }
  FAIL() << "no ampipe::Error thrown";
}

std::string fnv1a64_hex(const std::string& bytes) {
  uint64_t hash = 0xcbf29ce484222325ull;
  for (unsigned char c : bytes) hash = (hash ^ c) * 0x100000001b3ull;
  char text[17];
  std::snprintf(text, sizeof(text), "%016llx", static_cast<unsigned long long>(hash));
  return text;
}

// A few hundred lines of varied text: words, punctuation, numbers, a little non-ASCII, occasional
// runs of spaces and tabs. Deterministic (mt19937_64's raw output is fixed by the standard).
std::vector<std::string> make_corpus_lines(int count) {
  static const char* const words[] = {
      "the",       "a",        "of",     "and",      "to",    "in",       "expert",   "experts",   "router",
      "token",     "tokens",   "layer",  "layers",   "model", "models",   "training", "pipeline",  "gradient",
      "gradients", "mixture",  "sparse", "dense",    "batch", "stream",   "memory",   "compute",   "overlap",
      "forward",   "backward", "loss",   "learning", "rate",  "warmup",   "schedule", "attention", "head",
      "heads",     "King",     "James",  "said",     "unto",  "them",     "And",      "God",       "light",
      "darkness",  "earth",    "heaven", "water",    "river", "mountain", "café",     "naïve",     "Größe",
      "déjà",      "vu",       "über",   "東京",     "data",  "parallel", "shard",    "rank",      "world"};
  static const char* const punct[] = {".", ",", ";", ":", "!", "?", " -", " (", ")", "\"", "'s"};
  std::mt19937_64 rng(12345);
  auto pick = [&rng](uint64_t n) { return static_cast<size_t>(rng() % n); };
  std::vector<std::string> lines;
  for (int l = 0; l < count; ++l) {
    std::string line;
    if (pick(20) == 0) line += "  ";
    int n = 4 + static_cast<int>(pick(14));
    for (int w = 0; w < n; ++w) {
      if (w > 0) line += pick(25) == 0 ? (pick(2) ? "\t" : "   ") : " ";
      if (pick(8) == 0) {
        line += std::to_string(rng() % 100000);
      } else {
        line += words[pick(std::size(words))];
      }
      if (pick(6) == 0) line += punct[pick(std::size(punct))];
    }
    line += pick(3) == 0 ? "?" : ".";
    lines.push_back(line);
  }
  return lines;
}

// Text the models never saw: punctuation, digits, runs of spaces, tabs, newlines, byte fallback.
const std::vector<std::string>& unseen_texts() {
  static const std::vector<std::string> texts = {
      "",
      " ",
      "   leading and trailing spaces   ",
      "Zebra-quartz 98765!! {json: [1, 2.5e-3]} <tag attr=\"x\"> a|b&c ~`^ @#$% 0x7fff_ffff",
      "tabs\there\t\tand   multiple    spaces\n\nnew lines\r\nCRLF too\n",
      "Ελληνικά, русский, العربية, 日本語, 한국어, 🙂🚀 ünïcödé",
      "\t\n \t",
      "x",
      "1234567890 3.14159 -42 +7 1e10",
  };
  return texts;
}

class TokenizerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    std::string pattern = ::testing::TempDir() + "ampipe_tokenizer_XXXXXX";
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr) << std::strerror(errno);
    dir_ = new std::string(pattern);
    lines_ = new std::vector<std::string>(make_corpus_lines(600));
    std::string text;
    for (const std::string& line : *lines_) text += line + "\n";
    write_file_atomically(corpus(), text);

    SentencePieceTrainOptions options;
    options.inputs = {corpus()};
    options.model_prefix = path("bpe");
    options.vocab_size = 400;
    options.threads = 2;
    train_sentencepiece(options);
  }
  static void TearDownTestSuite() {
    fs::remove_all(*dir_);
    delete dir_;
    delete lines_;
  }

  static std::string path(const std::string& name) { return (fs::path(*dir_) / name).string(); }
  static std::string corpus() { return path("corpus.txt"); }

  static void expect_round_trips(const Tokenizer& tok, const std::string& text) {
    std::vector<int32_t> ids = tok.encode(text);
    for (int32_t id : ids) {
      ASSERT_GE(id, 0);
      ASSERT_LT(id, tok.vocab_size());
    }
    EXPECT_EQ(tok.decode(ids), text) << "text: '" << text << "'";
  }

  static std::string* dir_;
  static std::vector<std::string>* lines_;
};

std::string* TokenizerTest::dir_ = nullptr;
std::vector<std::string>* TokenizerTest::lines_ = nullptr;

TEST_F(TokenizerTest, ByteTokenizerIdsAreBytes) {
  auto tok = make_tokenizer("byte", "");
  EXPECT_EQ(tok->type(), "byte");
  EXPECT_EQ(tok->identity(), "byte");
  EXPECT_EQ(tok->vocab_size(), 256);
  EXPECT_EQ(tok->eod_id(), -1);
  EXPECT_TRUE(tok->serialized_model().empty());

  std::string all;
  for (int b = 0; b < 256; ++b) all += static_cast<char>(b);
  std::vector<int32_t> ids = tok->encode(all);
  ASSERT_EQ(ids.size(), 256u);
  for (int b = 0; b < 256; ++b) EXPECT_EQ(ids[b], b);
  EXPECT_EQ(tok->decode(ids), all);
  for (const std::string& text : unseen_texts()) expect_round_trips(*tok, text);
  EXPECT_EQ(tok->encode("Hi\n"), (std::vector<int32_t>{72, 105, 10}));

  expect_error([&] { tok->decode({65, 256}); }, {"256", "[0, 256)"});
  expect_error([&] { tok->decode({-1}); }, {"-1"});
}

TEST_F(TokenizerTest, PaddedVocabSize) {
  EXPECT_EQ(padded_vocab_size(256, 128), 256);
  EXPECT_EQ(padded_vocab_size(257, 128), 384);
  EXPECT_EQ(padded_vocab_size(50257, 128), 50304);
  EXPECT_EQ(padded_vocab_size(32000, 128), 32000);
  EXPECT_EQ(padded_vocab_size(400, 1), 400);
  EXPECT_EQ(padded_vocab_size(1, 64), 64);
  EXPECT_EQ(padded_vocab_size(0, 8), 0);
  expect_error([] { padded_vocab_size(256, 0); }, {"0", ">= 1"});
}

TEST_F(TokenizerTest, BpeRoundTripsExactly) {
  auto tok = make_tokenizer("SentencePieceTokenizer", path("bpe.model"));
  EXPECT_EQ(tok->type(), "SentencePieceTokenizer");
  EXPECT_EQ(tok->vocab_size(), 400);
  EXPECT_EQ(tok->eod_id(), 2);  // SentencePiece's </s>

  std::string bytes = read_file(path("bpe.model"));
  EXPECT_EQ(tok->serialized_model(), bytes);
  EXPECT_EQ(tok->identity(), "SentencePieceTokenizer:" + fnv1a64_hex(bytes));
  EXPECT_TRUE(fs::exists(path("bpe.vocab")));

  std::string all;
  for (const std::string& line : *lines_) {
    expect_round_trips(*tok, line);
    all += line + "\n";
  }
  expect_round_trips(*tok, all);
  // It learned subwords: fewer tokens than bytes on its own training text (1.75 bytes a token here).
  EXPECT_LT(tok->encode(all).size() * 3, all.size() * 2);

  for (const std::string& text : unseen_texts()) expect_round_trips(*tok, text);
  // Unseen characters fall back to their UTF-8 bytes: one id per byte, none of them <unk> (0).
  std::vector<int32_t> emoji = tok->encode("🙂");
  EXPECT_GE(emoji.size(), 4u);
  for (int32_t id : emoji) EXPECT_NE(id, 0);

  expect_error([&] { tok->decode({5, 400}); }, {"400", "[0, 400)"});
  expect_error([&] { tok->decode({-3}); }, {"-3"});
}

TEST_F(TokenizerTest, UnigramTrainsAndRoundTrips) {
  SentencePieceTrainOptions options;
  options.inputs = {corpus()};
  options.model_prefix = path("uni");
  options.vocab_size = 400;
  options.model_type = "unigram";
  options.threads = 2;
  train_sentencepiece(options);
  auto tok = make_tokenizer("SentencePieceTokenizer", path("uni.model"));
  EXPECT_EQ(tok->vocab_size(), 400);
  EXPECT_EQ(tok->eod_id(), 2);
  auto bpe = make_tokenizer("SentencePieceTokenizer", path("bpe.model"));
  EXPECT_NE(tok->identity(), bpe->identity());
  for (const std::string& line : *lines_) expect_round_trips(*tok, line);
  for (const std::string& text : unseen_texts()) expect_round_trips(*tok, text);
}

TEST_F(TokenizerTest, SameSeedSameModel) {
  // Sample 200 of the 600 lines, so the seed matters; the prefix is not recorded in the model.
  SentencePieceTrainOptions options;
  options.inputs = {corpus()};
  options.vocab_size = 350;
  options.input_sentence_size = 200;
  options.threads = 2;
  options.seed = 7;
  options.model_prefix = path("seed_a");
  train_sentencepiece(options);
  options.model_prefix = path("seed_b");
  train_sentencepiece(options);
  options.seed = 8;
  options.model_prefix = path("seed_c");
  train_sentencepiece(options);

  std::string a = read_file(path("seed_a.model"));
  std::string b = read_file(path("seed_b.model"));
  std::string c = read_file(path("seed_c.model"));
  EXPECT_EQ(a, b);
  EXPECT_EQ(read_file(path("seed_a.vocab")), read_file(path("seed_b.vocab")));
  EXPECT_NE(a, c);
  EXPECT_EQ(make_tokenizer("SentencePieceTokenizer", path("seed_a.model"))->identity(),
            make_tokenizer("SentencePieceTokenizer", path("seed_b.model"))->identity());
  EXPECT_NE(make_tokenizer("SentencePieceTokenizer", path("seed_a.model"))->identity(),
            make_tokenizer("SentencePieceTokenizer", path("seed_c.model"))->identity());

  // Nothing else was left in the directory (no temporary files).
  for (const auto& entry : fs::directory_iterator(*dir_)) {
    std::string name = entry.path().filename().string();
    EXPECT_EQ(name.find(".tmp"), std::string::npos) << name;
  }
}

TEST_F(TokenizerTest, MakeTokenizerRefusals) {
  expect_error([] { make_tokenizer("GPT2BPETokenizer", ""); },
               {"GPT2BPETokenizer", "byte", "SentencePieceTokenizer"});
  expect_error([] { make_tokenizer("byte", "some.model"); }, {"some.model"});
  expect_error([] { make_tokenizer("SentencePieceTokenizer", ""); }, {"SentencePieceTokenizer"});
  expect_error([] { make_tokenizer("SentencePieceTokenizer", path("missing.model")); }, {"missing.model"});

  write_file_atomically(path("empty.model"), std::string_view());
  expect_error([] { make_tokenizer("SentencePieceTokenizer", path("empty.model")); }, {"empty.model"});
  write_file_atomically(path("junk.model"), std::string_view("this is not a protobuf \xff\xfe\x01\x02", 27));
  expect_error([] { make_tokenizer("SentencePieceTokenizer", path("junk.model")); }, {"junk.model"});
  // A real model cut short.
  std::string bytes = read_file(path("bpe.model"));
  write_file_atomically(path("cut.model"), std::string_view(bytes).substr(0, bytes.size() / 2));
  expect_error([] { make_tokenizer("SentencePieceTokenizer", path("cut.model")); }, {"cut.model"});
}

TEST_F(TokenizerTest, TrainingRefusals) {
  SentencePieceTrainOptions options;
  options.inputs = {corpus()};
  options.vocab_size = 400;
  options.threads = 2;

  options.model_prefix = path("bad_type");
  options.model_type = "wordpiece";
  expect_error([&] { train_sentencepiece(options); }, {"wordpiece", "bpe", "unigram"});
  options.model_type = "bpe";

  // Fewer than the 3 meta pieces + 256 byte pieces + the corpus's characters.
  options.model_prefix = path("too_small");
  options.vocab_size = 100;
  expect_error([&] { train_sentencepiece(options); }, {"--vocab-size", "100"});
  EXPECT_FALSE(fs::exists(path("too_small.model")));
  EXPECT_FALSE(fs::exists(path("too_small.vocab")));

  // More pieces than this small corpus can give.
  options.model_prefix = path("too_large");
  options.model_type = "unigram";
  options.vocab_size = 20000;
  expect_error([&] { train_sentencepiece(options); }, {"--vocab-size", "20000"});
  EXPECT_FALSE(fs::exists(path("too_large.model")));
  options.model_type = "bpe";
  expect_error([&] { train_sentencepiece(options); }, {"--vocab-size", "20000"});
  EXPECT_FALSE(fs::exists(path("too_large.model")));
  options.vocab_size = 400;

  options.model_prefix = path("missing_input");
  options.inputs = {corpus(), path("no_such_corpus.txt")};
  expect_error([&] { train_sentencepiece(options); }, {"no_such_corpus.txt"});
  EXPECT_FALSE(fs::exists(path("missing_input.model")));
  options.inputs = {corpus()};

  // Nothing to train on.
  write_file_atomically(path("blank.txt"), std::string_view("\n\n\n"));
  options.model_prefix = path("blank");
  options.inputs = {path("blank.txt")};
  expect_error([&] { train_sentencepiece(options); }, {"no non-empty lines", "blank.txt"});
  EXPECT_FALSE(fs::exists(path("blank.model")));
}

}  // namespace
}  // namespace ampipe
