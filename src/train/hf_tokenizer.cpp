#include "train/hf_tokenizer.h"

#include <sentencepiece_processor.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string_view>

#include "core/error.h"

namespace ampipe {

namespace {

constexpr const char* kMetaspace = "\xe2\x96\x81";  // U+2581, SentencePiece's word-boundary mark
// What the tokenizer returns for the model: Transformers 4.x's PreTrainedTokenizerFast would add
// token_type_ids, which MixtralForCausalLM.generate(**tokenizer(text)) refuses.
const nlohmann::json kModelInputNames = {"input_ids", "attention_mask"};

std::string utf8(uint32_t code_point) {
  std::string s;
  if (code_point < 0x80) {
    s += static_cast<char>(code_point);
  } else if (code_point < 0x800) {
    s += static_cast<char>(0xc0 | (code_point >> 6));
    s += static_cast<char>(0x80 | (code_point & 0x3f));
  } else {
    s += static_cast<char>(0xe0 | (code_point >> 12));
    s += static_cast<char>(0x80 | ((code_point >> 6) & 0x3f));
    s += static_cast<char>(0x80 | (code_point & 0x3f));
  }
  return s;
}

// The byte-level alphabet of tokenizers' ByteLevel pre-tokenizer (GPT-2's): the printable bytes
// '!'..'~', 0xA1..0xAC and 0xAE..0xFF stand for themselves (as code points); the other 68 bytes, in
// increasing order, become the code points 256, 257, ...
std::string byte_level_char(int byte) {
  auto printable = [](int b) { return (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae); };
  if (printable(byte)) return utf8(static_cast<uint32_t>(byte));
  uint32_t shifted = 256;
  for (int b = 0; b < byte; ++b)
    if (!printable(b)) ++shifted;
  return utf8(shifted);
}

std::string dump(const nlohmann::json& j) { return j.dump(2) + "\n"; }

// The two fields of a SentencePiece model that the Hugging Face files depend on, read from the
// serialized ModelProto (protobuf wire format; ampipe has no generated protobuf code for it):
// trainer_spec (field 2).model_type (field 3: 1 unigram, the default; 2 BPE) and normalizer_spec
// (field 3).add_dummy_prefix (field 3, default true) and .name (field 1, the normalization rule).
struct SentencePieceFacts {
  int model_type = 1;
  bool add_dummy_prefix = true;
  std::string normalization = "nmt_nfkc";  // SentencePiece's default rule
};

class ProtoReader {
 public:
  explicit ProtoReader(std::string_view bytes) : bytes_(bytes) {}
  bool done() const { return pos_ >= bytes_.size(); }
  uint64_t varint() {
    uint64_t value = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      AMPIPE_CHECK(pos_ < bytes_.size()) << "SentencePiece model: truncated varint";
      const auto byte = static_cast<uint8_t>(bytes_[pos_++]);
      value |= static_cast<uint64_t>(byte & 0x7f) << shift;
      if (!(byte & 0x80)) return value;
    }
    throw Error("SentencePiece model: malformed varint");
  }
  // Reads one field: its number, and for a length-delimited field its bytes (others are skipped
  // except varints, whose value is returned in `value`).
  int field(std::string_view& payload, uint64_t& value) {
    const uint64_t tag = varint();
    const int wire = static_cast<int>(tag & 7);
    payload = {};
    value = 0;
    if (wire == 0) {
      value = varint();
    } else if (wire == 1 || wire == 5) {
      skip(wire == 1 ? 8 : 4);
    } else if (wire == 2) {
      const uint64_t n = varint();
      AMPIPE_CHECK(n <= bytes_.size() - pos_) << "SentencePiece model: a field runs past the end";
      payload = bytes_.substr(pos_, n);
      pos_ += n;
    } else {
      throw Error("SentencePiece model: unsupported protobuf wire type " + std::to_string(wire));
    }
    return static_cast<int>(tag >> 3);
  }

 private:
  void skip(size_t n) {
    AMPIPE_CHECK(n <= bytes_.size() - pos_) << "SentencePiece model: a field runs past the end";
    pos_ += n;
  }
  std::string_view bytes_;
  size_t pos_ = 0;
};

SentencePieceFacts sentencepiece_facts(std::string_view model) {
  SentencePieceFacts facts;
  ProtoReader top(model);
  std::string_view payload;
  uint64_t value = 0;
  while (!top.done()) {
    const int number = top.field(payload, value);
    if (number != 2 && number != 3) continue;
    ProtoReader spec(payload);
    while (!spec.done()) {
      std::string_view inner;
      uint64_t v = 0;
      const int field = spec.field(inner, v);
      if (number == 2 && field == 3) facts.model_type = static_cast<int>(v);
      if (number == 3 && field == 3) facts.add_dummy_prefix = v != 0;
      if (number == 3 && field == 1) facts.normalization = std::string(inner);
    }
  }
  return facts;
}

nlohmann::json added_token(int32_t id, const std::string& piece) {
  return {{"id", id},        {"content", piece},    {"single_word", false}, {"lstrip", false},
          {"rstrip", false}, {"normalized", false}, {"special", true}};
}

// tokenizers' Unigram model of a SentencePiece unigram model: the same pieces and scores, text
// normalized the SentencePiece way (spaces to U+2581, one prepended with add_dummy_prefix).
nlohmann::json unigram_tokenizer_json(const sentencepiece::SentencePieceProcessor& sp,
                                      const SentencePieceFacts& facts) {
  nlohmann::json vocab = nlohmann::json::array(), added = nlohmann::json::array();
  for (int id = 0; id < sp.GetPieceSize(); ++id) {
    vocab.push_back({sp.IdToPiece(id), sp.GetScore(id)});
    if (sp.IsControl(id) || sp.IsUnknown(id)) added.push_back(added_token(id, sp.IdToPiece(id)));
  }
  nlohmann::json normalizers = nlohmann::json::array();
  if (facts.add_dummy_prefix) normalizers.push_back({{"type", "Prepend"}, {"prepend", kMetaspace}});
  normalizers.push_back({{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", kMetaspace}});
  nlohmann::json decoders = {{{"type", "Replace"}, {"pattern", {{"String", kMetaspace}}}, {"content", " "}},
                             {{"type", "ByteFallback"}},
                             {{"type", "Fuse"}}};
  if (facts.add_dummy_prefix)
    decoders.push_back({{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}});
  return {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", added},
      {"normalizer", {{"type", "Sequence"}, {"normalizers", normalizers}}},
      {"pre_tokenizer", nullptr},
      {"post_processor", nullptr},
      {"decoder", {{"type", "Sequence"}, {"decoders", decoders}}},
      {"model", {{"type", "Unigram"}, {"unk_id", sp.unk_id()}, {"vocab", vocab}, {"byte_fallback", true}}}};
}

// tokenizers' byte-level BPE whose ids are the 256 byte values (no merges: each byte is a token).
nlohmann::json byte_tokenizer_json() {
  nlohmann::json vocab = nlohmann::json::object();
  for (int b = 0; b < 256; ++b) vocab[byte_level_char(b)] = b;
  const nlohmann::json byte_level = {
      {"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false}, {"use_regex", false}};
  return {{"version", "1.0"},
          {"truncation", nullptr},
          {"padding", nullptr},
          {"added_tokens", nlohmann::json::array()},
          {"normalizer", nullptr},
          {"pre_tokenizer", byte_level},
          {"post_processor", nullptr},
          {"decoder", byte_level},
          {"model",
           {{"type", "BPE"},
            {"dropout", nullptr},
            {"unk_token", nullptr},
            {"continuing_subword_prefix", nullptr},
            {"end_of_word_suffix", nullptr},
            {"fuse_unk", false},
            {"byte_fallback", false},
            {"ignore_merges", false},
            {"vocab", vocab},
            {"merges", nlohmann::json::array()}}}};
}

// The SentencePiece files: tokenizer.model, tokenizer_config.json, special_tokens_map.json, and
// tokenizer.json for a unigram model.
void sentencepiece_files(const Tokenizer& tokenizer, const ModelConfig& config, HfTokenizerExport& out) {
  const std::string model = tokenizer.serialized_model();
  sentencepiece::SentencePieceProcessor sp;
  const auto status = sp.LoadFromSerializedProto(model);
  AMPIPE_CHECK(status.ok()) << "the checkpoint's SentencePiece model does not load: " << status.ToString();
  const SentencePieceFacts facts = sentencepiece_facts(model);
  AMPIPE_CHECK(facts.model_type == 1 || facts.model_type == 2)
      << "the checkpoint's SentencePiece model is of type " << facts.model_type
      << " (3 word, 4 char); the Hugging Face export supports unigram (1) and BPE (2) models";
  out.ids = {sp.bos_id(), sp.eos_id(), sp.unk_id(), sp.pad_id()};

  nlohmann::json special = nlohmann::json::object();
  nlohmann::json decoder = nlohmann::json::object();
  for (const auto& [key, id] : {std::pair{"bos_token", out.ids.bos}, std::pair{"eos_token", out.ids.eos},
                                std::pair{"unk_token", out.ids.unk}, std::pair{"pad_token", out.ids.pad}}) {
    if (id < 0) continue;
    special[key] = sp.IdToPiece(id);
    nlohmann::json token = added_token(id, sp.IdToPiece(id));
    token.erase("id");
    decoder[std::to_string(id)] = token;
  }
  const bool unigram = facts.model_type == 1;
  nlohmann::json tokenizer_config = special;
  tokenizer_config["tokenizer_class"] = unigram ? "PreTrainedTokenizerFast" : "LlamaTokenizer";
  tokenizer_config["add_bos_token"] = false;
  tokenizer_config["add_eos_token"] = false;
  tokenizer_config["add_prefix_space"] = facts.add_dummy_prefix;
  tokenizer_config["legacy"] = true;  // 4.x: encode as SentencePiece itself does
  tokenizer_config["clean_up_tokenization_spaces"] = false;
  tokenizer_config["spaces_between_special_tokens"] = false;
  tokenizer_config["model_max_length"] = config.max_seq_len;
  tokenizer_config["model_input_names"] = kModelInputNames;
  tokenizer_config["sp_model_kwargs"] = nlohmann::json::object();
  tokenizer_config["added_tokens_decoder"] = decoder;
  if (facts.normalization != "identity")
    out.warnings.push_back("the SentencePiece model normalizes text (rule '" + facts.normalization +
                           "'), which Transformers' tokenizer built from these files does not: a text that "
                           "normalization changes may tokenize differently there");

  out.files.push_back({"tokenizer.model", model});
  if (unigram) out.files.push_back({"tokenizer.json", dump(unigram_tokenizer_json(sp, facts))});
  out.files.push_back({"tokenizer_config.json", dump(tokenizer_config)});
  out.files.push_back({"special_tokens_map.json", dump(special)});
}

}  // namespace

HfTokenizerExport hf_tokenizer_export(const Tokenizer& tokenizer, const ModelConfig& config) {
  AMPIPE_CHECK(tokenizer.identity() == config.tokenizer)
      << "the tokenizer to export is " << tokenizer.identity() << ", but the model was trained with "
      << config.tokenizer;
  HfTokenizerExport out;
  if (tokenizer.type() == "byte") {
    out.files.push_back({"tokenizer.json", dump(byte_tokenizer_json())});
    out.files.push_back({"tokenizer_config.json", dump({{"tokenizer_class", "PreTrainedTokenizerFast"},
                                                        {"clean_up_tokenization_spaces", false},
                                                        {"model_max_length", config.max_seq_len},
                                                        {"model_input_names", kModelInputNames}})});
    out.files.push_back({"special_tokens_map.json", dump(nlohmann::json::object())});
  } else {
    sentencepiece_files(tokenizer, config, out);
  }

  nlohmann::json generation = nlohmann::json::object();
  if (out.ids.bos >= 0) generation["bos_token_id"] = out.ids.bos;
  if (out.ids.eos >= 0) generation["eos_token_id"] = out.ids.eos;
  if (out.ids.pad >= 0) generation["pad_token_id"] = out.ids.pad;
  nlohmann::json padding = nlohmann::json::array();
  for (int64_t id = tokenizer.vocab_size(); id < config.vocab_size; ++id) padding.push_back(id);
  if (!padding.empty()) generation["suppress_tokens"] = padding;
  out.files.push_back({"generation_config.json", dump(generation)});
  return out;
}

const std::vector<std::string>& hf_tokenizer_file_names() {
  static const std::vector<std::string> names = {"tokenizer.model", "tokenizer.json", "tokenizer_config.json",
                                                 "special_tokens_map.json", "generation_config.json"};
  return names;
}

}  // namespace ampipe
