// The tokenizer of a Hugging Face export (train/hf_tokenizer.h, written by export_hf_checkpoint),
// checked file by file without Transformers: the byte tokenizer as tokenizers' byte-level BPE whose
// ids are the byte values, a SentencePiece BPE model as tokenizer.model + LlamaTokenizer files, a
// unigram model with a tokenizers Unigram tokenizer.json, the special-token ids in config.json and
// generation_config.json (padding ids suppressed), and ampipe's own --load of the export finding the
// tokenizer again. tests/scripts/test_hf_tokenizer.sh runs the files through Transformers itself.
#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>
#include <string>

#include "core/atomic_file.h"
#include "core/error.h"
#include "test_util.h"
#include "train/checkpoint.h"
#include "train/hf_checkpoint.h"
#include "train/hf_tokenizer.h"
#include "train/optimizer.h"
#include "train/tokenizer.h"

namespace ampipe {
namespace {

using testing::error_of;

namespace fs = std::filesystem;

nlohmann::json json_file(const std::string& path) { return nlohmann::json::parse(read_file(path)); }

ModelConfig tiny_mixtral(int64_t vocab) {
  ModelConfig c;
  c.set_family("mixtral");
  c.vocab_size = vocab;
  c.max_seq_len = 16;
  c.hidden_size = 16;
  c.num_attention_heads = 2;
  c.num_layers = 1;
  c.num_experts = 2;
  c.ffn_hidden_size = 16;
  c.top_k = 1;
  c.validate();
  return c;
}

// SentencePiece models (BPE and unigram, 400 pieces) trained once for the suite.
class HfTokenizer : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(testing::fresh_temp_dir("hf_tokenizer"));
    // Pseudo-random words: enough distinct substrings for a 400-piece unigram model.
    std::string text;
    uint64_t state = 12345;
    for (int line = 0; line < 600; ++line) {
      for (int w = 0; w < 10; ++w) {
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        const int length = 2 + static_cast<int>((state >> 60) % 6);
        for (int k = 0; k < length; ++k) text += static_cast<char>('a' + (state >> (8 + 5 * k)) % 26);
        text += w < 9 ? ' ' : '\n';
      }
    }
    write_file_atomically(path("corpus.txt"), text);
    for (const char* type : {"bpe", "unigram"}) {
      SentencePieceTrainOptions options;
      options.inputs = {path("corpus.txt")};
      options.model_prefix = path(type);
      options.vocab_size = 400;
      options.model_type = type;
      options.threads = 2;
      train_sentencepiece(options);
    }
  }
  static void TearDownTestSuite() {
    fs::remove_all(*dir_);
    delete dir_;
  }
  static std::string path(const std::string& name) { return (fs::path(*dir_) / name).string(); }

  // Exports a tiny model of vocabulary `vocab` trained with `tokenizer` to `out` (a fresh directory).
  static std::string export_with(const Tokenizer& tokenizer, int64_t vocab, const std::string& out) {
    ModelConfig c = tiny_mixtral(vocab);
    c.tokenizer = tokenizer.identity();
    GptMoe model(c);
    HfExportOptions options;
    options.tokenizer = &tokenizer;
    export_hf_checkpoint(model, path(out), options);
    return path(out);
  }

  static std::string* dir_;
};
std::string* HfTokenizer::dir_ = nullptr;

TEST_F(HfTokenizer, ByteTokenizerJsonMapsEveryByteToItsOwnValue) {
  const auto byte = make_tokenizer("byte", "");
  const std::string dir = export_with(*byte, 256, "byte");
  const nlohmann::json t = json_file(dir + "/tokenizer.json");
  EXPECT_EQ(t["model"]["type"], "BPE");
  EXPECT_TRUE(t["model"]["merges"].empty());
  EXPECT_EQ(t["pre_tokenizer"]["type"], "ByteLevel");
  EXPECT_EQ(t["pre_tokenizer"]["use_regex"], false);
  EXPECT_EQ(t["pre_tokenizer"]["add_prefix_space"], false);
  const nlohmann::json& vocab = t["model"]["vocab"];
  ASSERT_EQ(vocab.size(), 256u);
  std::set<int> ids;
  for (const auto& [piece, id] : vocab.items()) ids.insert(id.get<int>());
  EXPECT_EQ(ids.size(), 256u);
  EXPECT_EQ(*ids.begin(), 0);
  EXPECT_EQ(*ids.rbegin(), 255);
  // The byte-level alphabet: printable bytes are themselves; the others are shifted past U+00FF in
  // byte order (space is U+0120 'Ġ', newline U+010A 'Ċ', as in every GPT-2-style vocabulary).
  const std::vector<std::pair<std::string, int>> known = {
      {"A", 65},         {"~", 126},        {"\xc4\xa0", 32},  {"\xc4\x8a", 10}, {"\xc4\x80", 0},
      {"\xc4\xa1", 127}, {"\xc5\x83", 173}, {"\xc2\xa1", 161}, {"\xc3\xbf", 255}};
  for (const auto& [piece, id] : known) EXPECT_EQ(vocab.at(piece), id) << "byte " << id;

  const nlohmann::json tc = json_file(dir + "/tokenizer_config.json");
  EXPECT_EQ(tc["tokenizer_class"], "PreTrainedTokenizerFast");
  // No token_type_ids: MixtralForCausalLM.generate(**tokenizer(text)) refuses them (Transformers 4.x).
  EXPECT_EQ(tc["model_input_names"], (nlohmann::json{"input_ids", "attention_mask"}));
  EXPECT_EQ(json_file(dir + "/special_tokens_map.json"), nlohmann::json::object());
  EXPECT_EQ(json_file(dir + "/generation_config.json"), nlohmann::json::object());
  EXPECT_TRUE(json_file(dir + "/config.json")["eos_token_id"].is_null());
  EXPECT_FALSE(fs::exists(dir + "/tokenizer.model"));
}

TEST_F(HfTokenizer, SentencePieceBpeExportsTokenizerModelWithLlamaTokenizerFiles) {
  const auto sp = make_tokenizer("SentencePieceTokenizer", path("bpe.model"));
  const std::string dir = export_with(*sp, 448, "bpe_export");  // 400 pieces padded to 448
  EXPECT_EQ(read_file(dir + "/tokenizer.model"), sp->serialized_model());
  EXPECT_FALSE(fs::exists(dir + "/tokenizer.json"));  // Transformers converts tokenizer.model itself

  const nlohmann::json tc = json_file(dir + "/tokenizer_config.json");
  EXPECT_EQ(tc["tokenizer_class"], "LlamaTokenizer");
  EXPECT_EQ(tc["add_bos_token"], false);  // ampipe never prepends <s>
  EXPECT_EQ(tc["add_eos_token"], false);
  EXPECT_EQ(tc["add_prefix_space"], true);  // SentencePiece's add_dummy_prefix, on in ampipe's models
  EXPECT_EQ(tc["bos_token"], "<s>");
  EXPECT_EQ(tc["eos_token"], "</s>");
  EXPECT_EQ(tc["unk_token"], "<unk>");
  EXPECT_FALSE(tc.contains("pad_token"));
  EXPECT_EQ(tc["model_max_length"], 16);
  EXPECT_EQ(tc["added_tokens_decoder"]["2"]["content"], "</s>");
  EXPECT_EQ(json_file(dir + "/special_tokens_map.json"),
            (nlohmann::json{{"bos_token", "<s>"}, {"eos_token", "</s>"}, {"unk_token", "<unk>"}}));

  const nlohmann::json config = json_file(dir + "/config.json");
  EXPECT_EQ(config["bos_token_id"], 1);
  EXPECT_EQ(config["eos_token_id"], sp->eod_id());
  EXPECT_EQ(config["unk_token_id"], 0);
  EXPECT_TRUE(config["pad_token_id"].is_null());

  const nlohmann::json generation = json_file(dir + "/generation_config.json");
  EXPECT_EQ(generation["bos_token_id"], 1);
  EXPECT_EQ(generation["eos_token_id"], 2);
  ASSERT_EQ(generation["suppress_tokens"].size(), 48u);
  EXPECT_EQ(generation["suppress_tokens"].front(), 400);
  EXPECT_EQ(generation["suppress_tokens"].back(), 447);
}

// Before the tokenizer was exported, --load of such an export failed: tokenizer.model was missing.
TEST_F(HfTokenizer, ExportOfASentencePieceModelLoadsBackWithItsTokenizer) {
  const auto sp = make_tokenizer("SentencePieceTokenizer", path("bpe.model"));
  const std::string dir = export_with(*sp, 448, "bpe_reload");
  const ModelConfig c = read_checkpoint_config(dir);
  EXPECT_EQ(c.tokenizer, sp->identity());
  EXPECT_EQ(checkpoint_tokenizer(dir, c)->identity(), sp->identity());

  // The same through an ampipe checkpoint: export --load CKPT takes the checkpoint's tokenizer.
  GptMoe model(c);
  AdamW optimizer(model.params(), AdamWConfig{});
  save_checkpoint(path("ckpt"), model, optimizer, TrainingProgress{1, 1, std::nullopt}, nullptr, sp.get());
  export_hf_checkpoint(path("ckpt"), path("from_ckpt"));
  EXPECT_EQ(read_file(path("from_ckpt/tokenizer.model")), sp->serialized_model());
}

TEST_F(HfTokenizer, UnigramModelGetsATokenizersUnigramJson) {
  const auto sp = make_tokenizer("SentencePieceTokenizer", path("unigram.model"));
  const std::string dir = export_with(*sp, 400, "unigram_export");
  EXPECT_EQ(read_file(dir + "/tokenizer.model"), sp->serialized_model());
  // Transformers 5's LlamaTokenizer would rebuild the .model as BPE; the generic class reads this file.
  EXPECT_EQ(json_file(dir + "/tokenizer_config.json")["tokenizer_class"], "PreTrainedTokenizerFast");
  const nlohmann::json t = json_file(dir + "/tokenizer.json");
  EXPECT_EQ(t["model"]["type"], "Unigram");
  EXPECT_EQ(t["model"]["unk_id"], 0);
  EXPECT_EQ(t["model"]["byte_fallback"], true);
  ASSERT_EQ(t["model"]["vocab"].size(), 400u);
  EXPECT_EQ(t["model"]["vocab"][2][0], "</s>");
  EXPECT_EQ(t["normalizer"]["normalizers"][0]["type"], "Prepend");  // add_dummy_prefix
  std::set<std::string> special;
  for (const auto& token : t["added_tokens"]) special.insert(token["content"].get<std::string>());
  EXPECT_EQ(special, (std::set<std::string>{"<unk>", "<s>", "</s>"}));
  EXPECT_FALSE(json_file(dir + "/generation_config.json").contains("suppress_tokens"));  // no padding
}

TEST_F(HfTokenizer, ReexportReplacesThePreviousExportsTokenizerFiles) {
  const auto sp = make_tokenizer("SentencePieceTokenizer", path("bpe.model"));
  const auto byte = make_tokenizer("byte", "");
  const std::string dir = export_with(*sp, 448, "reexport");
  ASSERT_TRUE(fs::exists(dir + "/tokenizer.model"));
  export_with(*byte, 256, "reexport");
  EXPECT_FALSE(fs::exists(dir + "/tokenizer.model"));
  EXPECT_EQ(json_file(dir + "/tokenizer_config.json")["tokenizer_class"], "PreTrainedTokenizerFast");
  EXPECT_EQ(read_checkpoint_config(dir).tokenizer, "byte");
}

TEST_F(HfTokenizer, ATokenizerOtherThanTheModelsIsRefused) {
  const auto sp = make_tokenizer("SentencePieceTokenizer", path("bpe.model"));
  const auto uni = make_tokenizer("SentencePieceTokenizer", path("unigram.model"));
  ModelConfig c = tiny_mixtral(448);
  c.tokenizer = sp->identity();
  GptMoe model(c);
  HfExportOptions options;
  options.tokenizer = uni.get();
  std::string e = error_of([&] { export_hf_checkpoint(model, path("wrong"), options); });
  EXPECT_NE(e.find(uni->identity()), std::string::npos) << e;
  EXPECT_NE(e.find(sp->identity()), std::string::npos) << e;
  e = error_of([&] { export_hf_checkpoint(model, path("none"), HfExportOptions{}); });
  EXPECT_NE(e.find("needs that tokenizer"), std::string::npos) << e;
  EXPECT_FALSE(fs::exists(path("none/config.json")));
}

}  // namespace
}  // namespace ampipe
