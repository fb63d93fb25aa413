#include "cli/data_commands.h"

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <deque>
#include <fstream>
#include <future>
#include <memory>
#include <nlohmann/json.hpp>
#include <string_view>
#include <thread>

#include "cli/command_util.h"
#include "core/atomic_file.h"
#include "core/error.h"
#include "core/parallel.h"
#include "train/gpt_dataset.h"
#include "train/indexed_dataset.h"
#include "train/tokenizer.h"

namespace ampipe {
namespace {

constexpr size_t kBatchBytes = 4 << 20;  // input bytes per work item

bool is_json_input(const std::string& path, const std::string& format) {
  if (format != "auto") return format == "jsonl";
  auto ends = [&](const char* s) {
    const std::string suffix(s);
    return path.size() >= suffix.size() && path.compare(path.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  return ends(".jsonl") || ends(".json");
}

// A run of whole input lines and, once encoded, their documents (one list per key).
struct WorkItem {
  std::string file;
  int64_t first_line = 0;  // 1-based line number of the first line
  std::string text;        // whole lines, each ending in '\n' (but maybe the file's last)
  size_t bytes = 0;
  std::vector<std::vector<std::vector<int32_t>>> documents;  // [key][document] tokens
  std::string error;
};

void encode(WorkItem& item, bool json, const PreprocessOptions& o, const Tokenizer& tokenizer) {
  item.documents.assign(o.json_keys.size(), {});
  std::vector<std::string_view> lines;
  for (size_t begin = 0; begin < item.text.size();) {
    const size_t nl = item.text.find('\n', begin);
    const size_t end = nl == std::string::npos ? item.text.size() : nl;
    lines.emplace_back(item.text.data() + begin, end - begin);
    begin = end + 1;
  }
  try {
    for (size_t i = 0; i < lines.size(); ++i) {
      const std::string_view line = lines[i];
      if (!json) {
        if (line.empty()) continue;  // a text file's blank lines separate nothing
        item.documents[0].push_back(tokenizer.encode(line));
      } else {
        if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
        nlohmann::json record;
        try {
          record = nlohmann::json::parse(line.begin(), line.end());
        } catch (const nlohmann::json::exception& e) {
          AMPIPE_CHECK(false) << item.file << ":" << item.first_line + static_cast<int64_t>(i)
                              << ": not a JSON object (" << e.what() << ")";
        }
        for (size_t k = 0; k < o.json_keys.size(); ++k) {
          const auto it = record.find(o.json_keys[k]);
          AMPIPE_CHECK(record.is_object() && it != record.end() && it->is_string())
              << item.file << ":" << item.first_line + static_cast<int64_t>(i) << ": no string field '"
              << o.json_keys[k] << "' (--json-keys)";
          item.documents[k].push_back(tokenizer.encode(it->get<std::string>()));
        }
      }
      if (o.append_eod)
        for (auto& docs : item.documents) docs.back().push_back(tokenizer.eod_id());
    }
  } catch (const std::exception& e) {
    item.error = e.what();
  }
  item.text = std::string();
}

// Reads the next ~kBatchBytes of whole lines of `in` (the rest of a line cut by the read is carried
// in `carry` to the next item). Returns false at the end of the file.
bool read_item(std::ifstream& in, std::string& carry, WorkItem& item, int64_t& line_number) {
  item.text = std::move(carry);
  carry.clear();
  bool more = true;
  size_t last_newline = std::string::npos;
  // Read on until the item holds at least one whole line (a line may be longer than a batch).
  while (more && (item.text.size() < kBatchBytes || last_newline == std::string::npos)) {
    const size_t have = item.text.size();
    item.text.resize(have + kBatchBytes);
    in.read(item.text.data() + have, static_cast<std::streamsize>(kBatchBytes));
    item.text.resize(have + static_cast<size_t>(in.gcount()));
    more = in.good();
    last_newline = item.text.rfind('\n');
  }
  if (more) {
    carry.assign(item.text, last_newline + 1);
    item.text.resize(last_newline + 1);
  }
  item.bytes = item.text.size();
  item.first_line = line_number;
  line_number += std::count(item.text.begin(), item.text.end(), '\n');
  return more;
}

std::string format_eta(double seconds) {
  const int64_t s = static_cast<int64_t>(std::max(0.0, seconds));
  char buf[32];
  std::snprintf(buf, sizeof buf, "%lldm%02llds", static_cast<long long>(s / 60), static_cast<long long>(s % 60));
  return buf;
}

}  // namespace

namespace {

// Refuses bad options and unreadable inputs before anything is written; returns the inputs' bytes.
int64_t check_preprocess_inputs(const PreprocessOptions& o, const Tokenizer& tokenizer) {
  AMPIPE_CHECK(!o.inputs.empty()) << "preprocess needs --input FILE (text or JSON Lines)";
  AMPIPE_CHECK(!o.output_prefix.empty()) << "preprocess needs --output-prefix PREFIX";
  AMPIPE_CHECK(!o.json_keys.empty()) << "--json-keys needs at least one key";
  AMPIPE_CHECK(o.format == "auto" || o.format == "text" || o.format == "jsonl")
      << "--input-format '" << o.format << "' is not known; allowed: auto, text, jsonl";
  AMPIPE_CHECK(o.workers >= 0) << "--workers must be >= 0 (0: every core), got " << o.workers;
  AMPIPE_CHECK(!o.append_eod || tokenizer.eod_id() >= 0)
      << "--append-eod: tokenizer " << tokenizer.type() << " has no end-of-document token";
  int64_t total_bytes = 0;
  for (const std::string& path : o.inputs) {
    std::ifstream in(path, std::ios::binary | std::ios::ate);
    AMPIPE_CHECK(in.good()) << "cannot open --input '" << path << "'";
    total_bytes += static_cast<int64_t>(in.tellg());
    if (!is_json_input(path, o.format)) {
      AMPIPE_CHECK(o.json_keys.size() == 1)
          << "--input '" << path << "' is a text file (one document per line): it has no JSON keys to split";
    }
  }
  return total_bytes;
}

// One writer per JSON key, its files readied first (core/atomic_file.h prepare_output_file); the
// prefixes go to result.outputs.
std::vector<std::unique_ptr<IndexedDatasetWriter>> open_preprocess_writers(const PreprocessOptions& o,
                                                                           IndexedDType dtype,
                                                                           PreprocessResult& result) {
  std::vector<std::unique_ptr<IndexedDatasetWriter>> writers;
  for (const std::string& key : o.json_keys) {
    result.outputs.push_back(o.output_prefix + "_" + key + "_document");
    prepare_output_file("--output-prefix", indexed_bin_path(result.outputs.back()));
    prepare_output_file("--output-prefix", indexed_idx_path(result.outputs.back()));
    prepare_output_file("--output-prefix", tokenizer_record_path(result.outputs.back()));
    writers.push_back(std::make_unique<IndexedDatasetWriter>(result.outputs.back(), dtype));
    result.output_tokens.push_back(0);
  }
  return writers;
}

}  // namespace

PreprocessResult preprocess(const PreprocessOptions& o,
                            const std::function<void(const std::string&)>& progress) {
  const std::unique_ptr<Tokenizer> tokenizer = make_tokenizer(o.tokenizer_type, o.tokenizer_model);
  const int64_t total_bytes = check_preprocess_inputs(o, *tokenizer);
  PreprocessResult result;
  std::vector<std::unique_ptr<IndexedDatasetWriter>> writers =
      open_preprocess_writers(o, token_dtype_for_vocab(tokenizer->vocab_size()), result);
  const int workers = o.workers > 0 ? o.workers : std::max(1, available_cores());
  const auto start = std::chrono::steady_clock::now();
  auto last_report = start;
  auto report = [&](bool final) {
    const auto now = std::chrono::steady_clock::now();
    if (!final && std::chrono::duration<double>(now - last_report).count() < 2.0) return;
    last_report = now;
    const double secs = std::max(1e-9, std::chrono::duration<double>(now - start).count());
    const double mb = static_cast<double>(result.input_bytes) / 1e6;
    const double rate = mb / secs;
    char buf[256];
    std::snprintf(buf, sizeof buf, "preprocess: %.1f / %.1f MB (%.0f%%), %.1f MB/s, %lld documents, %lld tokens, %s %s",
                  mb, static_cast<double>(total_bytes) / 1e6,
                  total_bytes > 0 ? 100.0 * static_cast<double>(result.input_bytes) / static_cast<double>(total_bytes) : 100.0,
                  rate, static_cast<long long>(result.documents), static_cast<long long>(result.tokens),
                  final ? "in" : "ETA",
                  format_eta(final ? secs : (static_cast<double>(total_bytes) / 1e6 - mb) / std::max(rate, 1e-9)).c_str());
    progress(buf);
  };
  // A pipeline: this thread reads items and writes finished ones in input order while up to
  // `workers` items encode on their own threads.
  auto write = [&](WorkItem& item) {
    AMPIPE_CHECK(item.error.empty()) << item.error;
    for (size_t k = 0; k < writers.size(); ++k)
      for (const std::vector<int32_t>& doc : item.documents[k]) {
        writers[k]->add_document(doc);
        result.tokens += static_cast<int64_t>(doc.size());
        result.output_tokens[k] += static_cast<int64_t>(doc.size());
      }
    result.documents += static_cast<int64_t>(item.documents[0].size());
    result.input_bytes += static_cast<int64_t>(item.bytes);
    report(false);
  };
  for (const std::string& path : o.inputs) {
    const bool json = is_json_input(path, o.format);
    std::ifstream in(path, std::ios::binary);
    std::string carry;
    int64_t line_number = 1;
    bool more = true;
    std::deque<std::future<WorkItem>> in_flight;
    while (more || !in_flight.empty()) {
      while (more && in_flight.size() < static_cast<size_t>(workers)) {
        WorkItem item;
        item.file = path;
        more = read_item(in, carry, item, line_number);
        AMPIPE_CHECK(!in.bad()) << "error reading --input '" << path << "'";
        in_flight.push_back(std::async(std::launch::async, [&o, &tokenizer, json, item = std::move(item)]() mutable {
          encode(item, json, o, *tokenizer);
          return std::move(item);
        }));
      }
      WorkItem done = in_flight.front().get();
      in_flight.pop_front();
      write(done);
    }
  }
  // The tokenizer's record first: a dataset is complete once its .idx exists (train/gpt_dataset.h).
  for (const std::string& prefix : result.outputs)
    write_tokenizer_record(prefix, tokenizer->identity(), tokenizer->vocab_size());
  for (auto& w : writers) w->finalize();
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  report(true);
  return result;
}

CLI::App* add_preprocess_command(CLI::App& app, PreprocessOptions& o) {
  CLI::App* cmd = app.add_subcommand(
      "preprocess", "Tokenize text or JSON Lines into Megatron indexed datasets (PREFIX_<key>_document.bin / .idx)");
  cmd->add_option("--input", o.inputs, "Input files: text (one document per non-empty line) or .jsonl / .json")
      ->required()
      ->expected(1, -1);
  cmd->add_option("--output-prefix", o.output_prefix, "Output prefix P: writes P_<key>_document.bin / .idx")
      ->required();
  cmd->add_option("--json-keys", o.json_keys, "JSON Lines: the string fields to tokenize, one dataset each")
      ->capture_default_str()
      ->expected(1, -1);
  cmd->add_option("--input-format", o.format, "auto (by extension: .jsonl / .json are JSON Lines), text or jsonl")
      ->capture_default_str();
  cmd->add_option("--tokenizer-type", o.tokenizer_type, "byte or SentencePieceTokenizer (with --tokenizer-model)")
      ->capture_default_str();
  cmd->add_option("--tokenizer-model", o.tokenizer_model, "The SentencePiece .model file");
  cmd->add_flag("--append-eod", o.append_eod, "End every document with the tokenizer's end-of-document token");
  cmd->add_option("--workers", o.workers, "Tokenizing threads; 0: every core")->capture_default_str();
  return cmd;
}

int run_preprocess(const PreprocessOptions& o) {
  const PreprocessResult r = preprocess(o, [](const std::string& line) {
    std::fprintf(stderr, "%s\n", line.c_str());
    std::fflush(stderr);
  });
  for (size_t k = 0; k < r.outputs.size(); ++k)
    std::printf("wrote %s.bin / .idx: %lld documents, %lld tokens (%.1f MB/s of input)\n",
                r.outputs[k].c_str(), static_cast<long long>(r.documents),
                static_cast<long long>(r.output_tokens[k]),
                static_cast<double>(r.input_bytes) / 1e6 / std::max(r.seconds, 1e-9));
  return 0;
}

CLI::App* add_tokenizer_command(CLI::App& app, TokenizerTrainOptions& o, CLI::App** train_command) {
  CLI::App* cmd = app.add_subcommand("tokenizer", "Subword tokenizers");
  cmd->require_subcommand(1);
  CLI::App* train = cmd->add_subcommand("train", "Train a SentencePiece model (PREFIX.model, PREFIX.vocab) on text");
  train->add_option("--input", o.inputs, "Text files, one sentence or document per line")->required()->expected(1, -1);
  train->add_option("--output-prefix", o.output_prefix, "Writes PREFIX.model and PREFIX.vocab")->required();
  train->add_option("--vocab-size", o.vocab_size, "Vocabulary size")->capture_default_str();
  train->add_option("--model-type", o.model_type, "bpe or unigram")->capture_default_str();
  train->add_option("--input-sentence-size", o.input_sentence_size, "Lines sampled from the input; 0 = all")
      ->capture_default_str();
  train->add_option("--seed", o.seed, "Seed of SentencePiece's sampling (same input + seed = same model)")
      ->check(unsigned_integer())
      ->capture_default_str();
  train->add_option("--threads", o.threads, "Training threads; 0 = every core")->capture_default_str();
  *train_command = train;
  return cmd;
}

int run_tokenizer_train(const TokenizerTrainOptions& o) {
  // Before the training (minutes on a large input): a trained model is never lost for want of a
  // directory.
  prepare_output_file("--output-prefix", o.output_prefix + ".model");
  prepare_output_file("--output-prefix", o.output_prefix + ".vocab");
  SentencePieceTrainOptions t;
  t.inputs = o.inputs;
  t.model_prefix = o.output_prefix;
  t.vocab_size = o.vocab_size;
  t.model_type = o.model_type;
  t.input_sentence_size = o.input_sentence_size;
  t.seed = o.seed;
  t.threads = o.threads;
  const auto start = std::chrono::steady_clock::now();
  train_sentencepiece(t);
  const std::unique_ptr<Tokenizer> tok = make_tokenizer("SentencePieceTokenizer", o.output_prefix + ".model");
  std::printf("wrote %s.model (%s, vocabulary %lld, %s) in %.1f s\n", o.output_prefix.c_str(), o.model_type.c_str(),
              static_cast<long long>(tok->vocab_size()), tok->identity().c_str(),
              std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  return 0;
}

}  // namespace ampipe
