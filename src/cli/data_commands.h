// The corpus commands: `ampipe preprocess` (text or JSON Lines in, Megatron indexed datasets out)
// and `ampipe tokenizer train` (a SentencePiece model from text).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace CLI {
class App;
}

namespace ampipe {

struct PreprocessOptions {
  std::vector<std::string> inputs;  // text files (one document per non-empty line) or .jsonl / .json
  std::string output_prefix;        // writes PREFIX_<key>_document.bin / .idx per JSON key
  std::vector<std::string> json_keys = {"text"};
  std::string tokenizer_type = "byte";
  std::string tokenizer_model;
  bool append_eod = false;
  int workers = 0;  // 0: every core
  std::string format = "auto";  // auto (by extension) | text | jsonl
};

struct PreprocessResult {
  int64_t documents = 0, tokens = 0, input_bytes = 0;
  double seconds = 0;
  std::vector<std::string> outputs;  // prefixes written
  std::vector<int64_t> output_tokens;  // tokens of each output (one per JSON key); `tokens` is their sum
};
// Tokenizes every input (in parallel, in order) and writes one indexed dataset per JSON key; a
// progress line (MB/s, documents, tokens, ETA) goes to `progress` about every two seconds.
PreprocessResult preprocess(const PreprocessOptions& options, const std::function<void(const std::string&)>& progress);

struct TokenizerTrainOptions {
  std::vector<std::string> inputs;
  std::string output_prefix;
  int64_t vocab_size = 32000;
  std::string model_type = "bpe";
  int64_t input_sentence_size = 2000000;
  uint64_t seed = 1;
  int threads = 0;
};

CLI::App* add_preprocess_command(CLI::App& app, PreprocessOptions& options);
int run_preprocess(const PreprocessOptions& options);
CLI::App* add_tokenizer_command(CLI::App& app, TokenizerTrainOptions& options, CLI::App** train_command);
int run_tokenizer_train(const TokenizerTrainOptions& options);

}  // namespace ampipe
