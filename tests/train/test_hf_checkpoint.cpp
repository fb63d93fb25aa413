// Hugging Face interchange (train/hf_checkpoint.h): export then import is bit-exact (one file and
// sharded), config.json carries transformers' fields, BF16 / F16 tensors convert exactly, a GPT-family
// model is refused for export, and every bad input is refused naming the field or tensor; the
// checkpoint readers, the trainer and the `ampipe export` command accept and produce such directories.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "cli_util.h"
#include "core/atomic_file.h"
#include "core/bf16.h"
#include "test_util.h"
#include "train/checkpoint.h"
#include "train/data.h"
#include "train/evaluate.h"
#include "train/hf_checkpoint.h"
#include "train/safetensors.h"
#include "train/trainer.h"

namespace ampipe {
namespace {

using testing::error_of;

namespace fs = std::filesystem;

std::string temp_dir(const std::string& name) { return testing::fresh_temp_dir("hf_" + name); }

// The brief's tiny Mixtral: d=32, h=4, g=2, E=4, f=48, L=2, V=64, S=16.
ModelConfig tiny_mixtral() {
  ModelConfig c;
  c.set_family("mixtral");
  c.vocab_size = 64;
  c.max_seq_len = 16;
  c.hidden_size = 32;
  c.num_attention_heads = 4;
  c.num_query_groups = 2;
  c.num_layers = 2;
  c.num_experts = 4;
  c.ffn_hidden_size = 48;
  c.top_k = 2;
  c.rotary_base = 10000;
  c.norm_epsilon = 1e-6;
  c.aux_loss_weight = 0.02;
  c.validate();
  return c;
}

// Every parameter (norm gains included) from its own random stream.
void randomize(GptMoe& model, uint64_t seed) {
  uint64_t s = seed;
  for (Parameter& p : model.params().all())
    p.value.copy_from(testing::random_tensor(p.value.shape(), ++s, 0.5f));
}

void expect_bit_identical(const GptMoe& a, const GptMoe& b) {
  ASSERT_EQ(a.params().all().size(), b.params().all().size());
  for (const Parameter& p : a.params().all()) {
    const Parameter& q = b.params().get(p.name);
    ASSERT_EQ(p.value.shape(), q.value.shape()) << p.name;
    const std::vector<float> x = p.value.to_vector(), y = q.value.to_vector();
    EXPECT_EQ(std::memcmp(x.data(), y.data(), x.size() * sizeof(float)), 0) << p.name << " differs";
  }
}

nlohmann::json read_json_file(const std::string& path) { return nlohmann::json::parse(read_file(path)); }
void write_json_file(const std::string& path, const nlohmann::json& j) {
  write_file_atomically(path, j.dump(2));
}

// An exported tiny model in `dir` (returned for comparisons).
std::unique_ptr<GptMoe> exported(const std::string& dir, const HfExportOptions& options = {}) {
  auto model = std::make_unique<GptMoe>(tiny_mixtral());
  randomize(*model, 11);
  export_hf_checkpoint(*model, dir, options);
  return model;
}

// Imports `dir` the way eval does: the config from the directory, then the weights.
void import_like_eval(const std::string& dir) {
  GptMoe m(read_checkpoint_config(dir));
  load_model_weights(dir, m);
}

TEST(HfCheckpoint, ExportThenImportIsBitIdentical) {
  const std::string dir = temp_dir("roundtrip");
  auto original = exported(dir);
  EXPECT_TRUE(fs::exists(dir + "/config.json"));
  EXPECT_TRUE(fs::exists(dir + "/model.safetensors"));
  EXPECT_FALSE(fs::exists(dir + "/model.safetensors.index.json"));
  EXPECT_TRUE(is_hf_checkpoint(dir));

  const ModelConfig read = read_checkpoint_config(dir);
  EXPECT_EQ(read.differences(tiny_mixtral()), "");
  GptMoe copy(read);
  randomize(copy, 999);
  load_model_weights(dir, copy);
  expect_bit_identical(*original, copy);

  // Every tensor of the file is F32 with transformers' name and shape, metadata {"format": "pt"}.
  const SafetensorsHeader h = read_safetensors_header(dir + "/model.safetensors");
  EXPECT_EQ(h.metadata, (std::map<std::string, std::string>{{"format", "pt"}}));
  EXPECT_EQ(h.tensors.size(), 3u + 2 * (4 + 1 + 4 * 3 + 2));
  EXPECT_EQ(h.tensors.at("model.layers.1.self_attn.k_proj.weight").shape, (Shape{16, 32}));
  EXPECT_EQ(h.tensors.at("model.layers.1.self_attn.o_proj.weight").shape, (Shape{32, 32}));
  EXPECT_EQ(h.tensors.at("model.layers.0.block_sparse_moe.experts.3.w2.weight").shape, (Shape{32, 48}));
  EXPECT_EQ(h.tensors.at("model.layers.0.block_sparse_moe.gate.weight").shape, (Shape{4, 32}));
  for (const auto& [name, e] : h.tensors) EXPECT_EQ(e.dtype, "F32") << name;
  // Expert e of the file is slice e of the ampipe tensor.
  const Tensor w2 = read_safetensors_tensor_f32(h, "model.layers.1.block_sparse_moe.experts.2.w2.weight");
  EXPECT_EQ(w2.to_vector(), original->params().get("blocks.1.moe.w2.weight").value.rows(2, 3).to_vector());
}

TEST(HfCheckpoint, ExportFromAnAmpipeCheckpointDirectory) {
  const std::string dir = temp_dir("fromdir");
  GptMoe model(tiny_mixtral());
  randomize(model, 5);
  AdamW optimizer(model.params(), AdamWConfig{});
  save_checkpoint(dir + "/ckpt", model, optimizer, TrainingProgress{3, 1, std::nullopt});
  const HfExportResult r = export_hf_checkpoint(dir + "/ckpt", dir + "/hf");
  EXPECT_EQ(r.files, std::vector<std::string>{"model.safetensors"});
  EXPECT_TRUE(r.warnings.empty());
  GptMoe copy(tiny_mixtral());
  load_model_weights(dir + "/hf", copy);
  expect_bit_identical(model, copy);
  // Not over the ampipe checkpoint itself.
  EXPECT_NE(error_of([&] {
              export_hf_checkpoint(dir + "/ckpt", dir + "/ckpt");
            }).find("holds an ampipe checkpoint"),
            std::string::npos);
  // An HF directory is not a place for train --save.
  EXPECT_NE(error_of([&] {
              save_checkpoint(dir + "/hf", model, optimizer, TrainingProgress{3, 1, std::nullopt});
            }).find("holds a Hugging Face checkpoint"),
            std::string::npos);
  EXPECT_FALSE(has_training_state(dir + "/hf"));
  EXPECT_TRUE(has_training_state(dir + "/ckpt"));
}

// --dtype bf16 (export's default for a checkpoint trained with --bf16): every tensor BF16, half of
// float32's bytes, each value the float32 value rounded to nearest even, config.json dtype
// "bfloat16"; it imports back as exactly those rounded values. float32 stays the default otherwise.
TEST(HfCheckpoint, Bf16ExportHalvesTheBytesAndImportsAsTheRoundedValues) {
  const std::string dir = temp_dir("bf16");
  GptMoe model(tiny_mixtral());
  randomize(model, 5);
  AdamW optimizer(model.params(), AdamWConfig{});
  save_checkpoint(dir + "/f32", model, optimizer, TrainingProgress{3, 1, std::nullopt});
  ModelConfig bf16_config = tiny_mixtral();
  bf16_config.bf16 = true;  // trained with --bf16: the checkpoint records it, its values are float32
  GptMoe bf16_model(bf16_config);
  for (size_t i = 0; i < model.params().all().size(); ++i)
    bf16_model.params().all()[i].value.copy_from(model.params().all()[i].value);
  save_checkpoint(dir + "/bf16", bf16_model, optimizer, TrainingProgress{3, 1, std::nullopt});
  EXPECT_TRUE(read_checkpoint_config(dir + "/bf16").bf16);
  EXPECT_FALSE(read_checkpoint_config(dir + "/f32").bf16);

  const HfExportResult f32 = export_hf_checkpoint(dir + "/f32", dir + "/hf32");
  const HfExportResult bf16 = export_hf_checkpoint(dir + "/bf16", dir + "/hf16");  // the default: as trained
  EXPECT_EQ(f32.dtype, DType::F32);
  EXPECT_EQ(bf16.dtype, DType::BF16);
  EXPECT_EQ(2 * bf16.total_bytes, f32.total_bytes);
  EXPECT_EQ(read_json_file(dir + "/hf16/config.json")["dtype"], "bfloat16");
  EXPECT_EQ(read_json_file(dir + "/hf32/config.json")["dtype"], "float32");
  const SafetensorsHeader h = read_safetensors_header(dir + "/hf16/model.safetensors");
  for (const auto& [name, e] : h.tensors) EXPECT_EQ(e.dtype, "BF16") << name;

  GptMoe back(read_checkpoint_config(dir + "/hf16"));
  load_model_weights(dir + "/hf16", back);
  bool any_rounded = false;
  for (const Parameter& p : model.params().all()) {
    const std::vector<float> v = p.value.to_vector(), b = back.params().get(p.name).value.to_vector();
    for (size_t i = 0; i < v.size(); ++i) {
      ASSERT_EQ(b[i], to_float(to_bf16(v[i]))) << p.name << " element " << i;
      any_rounded = any_rounded || b[i] != v[i];
    }
  }
  EXPECT_TRUE(any_rounded);
  // Asked for explicitly, the other way round.
  HfExportOptions as_f32;
  as_f32.dtype = DType::F32;
  EXPECT_EQ(export_hf_checkpoint(dir + "/bf16", dir + "/hf16as32", as_f32).total_bytes, f32.total_bytes);
  HfExportOptions bad;
  bad.dtype = DType::I32;
  EXPECT_NE(error_of([&] { export_hf_checkpoint(model, dir + "/bad", bad); }).find("float32 or bf16"),
            std::string::npos);
}

TEST(HfCheckpoint, ShardedExportHasAnIndexAndReadsBackBitIdentical) {
  const std::string dir = temp_dir("shards");
  HfExportOptions options;
  options.max_shard_bytes = 20000;  // the embedding alone is 8 KB, an expert 6 KB
  auto original = exported(dir, options);
  EXPECT_FALSE(fs::exists(dir + "/model.safetensors"));
  const nlohmann::json index = read_json_file(dir + "/model.safetensors.index.json");
  std::set<std::string> shards;
  uint64_t total = 0;
  for (const auto& [name, file] : index["weight_map"].items()) shards.insert(file.get<std::string>());
  ASSERT_GT(shards.size(), 2u);
  const std::string last = "model-" + std::string(5 - std::to_string(shards.size()).size(), '0') +
                           std::to_string(shards.size()) + "-of-" +
                           std::string(5 - std::to_string(shards.size()).size(), '0') +
                           std::to_string(shards.size()) + ".safetensors";
  EXPECT_TRUE(shards.count("model-00001-of-" + last.substr(15))) << last;
  EXPECT_TRUE(shards.count(last));
  for (const std::string& s : shards) {
    const SafetensorsHeader h = read_safetensors_header(dir + "/" + s);
    uint64_t bytes = 0;
    for (const auto& [name, e] : h.tensors) {
      bytes += e.end - e.begin;
      EXPECT_EQ(index["weight_map"][name], s) << name;
    }
    EXPECT_LE(bytes, options.max_shard_bytes) << s;
    total += bytes;
  }
  EXPECT_EQ(index["metadata"]["total_size"].get<uint64_t>(), total);
  EXPECT_EQ(index["weight_map"].size(), 3u + 2 * (4 + 1 + 4 * 3 + 2));

  GptMoe copy(read_checkpoint_config(dir));
  load_model_weights(dir, copy);
  expect_bit_identical(*original, copy);

  // Exporting again unsharded replaces the previous export: no stale shard or index is left.
  std::ofstream(dir + "/README.md") << "kept";
  export_hf_checkpoint(*original, dir);
  std::set<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir)) names.insert(entry.path().filename().string());
  EXPECT_EQ(names, (std::set<std::string>{"config.json", "model.safetensors", "README.md", "tokenizer.json",
                                          "tokenizer_config.json", "special_tokens_map.json",
                                          "generation_config.json"}));
  GptMoe again(tiny_mixtral());
  load_model_weights(dir, again);
  expect_bit_identical(*original, again);
}

TEST(HfCheckpoint, ConfigJsonHasTransformersFields) {
  const std::string dir = temp_dir("config");
  exported(dir);
  const nlohmann::json j = read_json_file(dir + "/config.json");
  EXPECT_EQ(j["architectures"], nlohmann::json::array({"MixtralForCausalLM"}));
  EXPECT_EQ(j["model_type"], "mixtral");
  EXPECT_EQ(j["hidden_size"], 32);
  EXPECT_EQ(j["intermediate_size"], 48);
  EXPECT_EQ(j["num_attention_heads"], 4);
  EXPECT_EQ(j["num_key_value_heads"], 2);
  EXPECT_EQ(j["head_dim"], 8);
  EXPECT_EQ(j["num_hidden_layers"], 2);
  EXPECT_EQ(j["num_local_experts"], 4);
  EXPECT_EQ(j["num_experts_per_tok"], 2);
  EXPECT_EQ(j["rms_norm_eps"], 1e-6);
  EXPECT_EQ(j["rope_theta"], 10000.0);
  EXPECT_EQ(j["max_position_embeddings"], 16);
  EXPECT_EQ(j["vocab_size"], 64);
  EXPECT_EQ(j["tie_word_embeddings"], false);
  EXPECT_EQ(j["router_aux_loss_coef"], 0.02);
  EXPECT_EQ(j["hidden_act"], "silu");
  EXPECT_EQ(j["attention_dropout"], 0.0);
  EXPECT_TRUE(j["sliding_window"].is_null());
  EXPECT_EQ(j["output_router_logits"], false);
  EXPECT_EQ(j["dtype"], "float32");
  EXPECT_EQ(j["rope_parameters"]["rope_theta"], 10000.0);
  EXPECT_EQ(j["capacity_factor"], 0.0);
  EXPECT_EQ(j["tokenizer"], "byte");
}

TEST(HfCheckpoint, CapacityFactorExportsWithAWarning) {
  const std::string dir = temp_dir("capacity");
  ModelConfig c = tiny_mixtral();
  c.capacity_factor = 1.25;
  GptMoe model(c);
  const HfExportResult r = export_hf_checkpoint(model, dir);
  ASSERT_EQ(r.warnings.size(), 1u);
  EXPECT_NE(r.warnings[0].find("capacity_factor 1.25"), std::string::npos) << r.warnings[0];
  EXPECT_NE(r.warnings[0].find("dropless"), std::string::npos) << r.warnings[0];
  EXPECT_EQ(read_checkpoint_config(dir).capacity_factor, 1.25);
}

TEST(HfCheckpoint, GptFamilyIsRefusedForExportNamingWhatDiffers) {
  const std::string dir = temp_dir("gpt");
  ModelConfig c;
  c.vocab_size = 64;
  c.max_seq_len = 16;
  c.hidden_size = 32;
  c.num_layers = 1;
  GptMoe model(c);
  const std::string e = error_of([&] { export_hf_checkpoint(model, dir + "/out"); });
  for (const char* part : {"'gpt' family", "LayerNorm", "rope", "GELU", "biases", "tied"})
    EXPECT_NE(e.find(part), std::string::npos) << part << " in: " << e;
  EXPECT_FALSE(fs::exists(dir + "/out/config.json"));

  AdamW optimizer(model.params(), AdamWConfig{});
  save_checkpoint(dir + "/ckpt", model, optimizer, TrainingProgress{1, 1, std::nullopt});
  const std::string e2 = error_of([&] { export_hf_checkpoint(dir + "/ckpt", dir + "/out2"); });
  EXPECT_NE(e2.find("LayerNorm"), std::string::npos) << e2;
  EXPECT_FALSE(fs::exists(dir + "/out2"));

  // A GPT model with every Mixtral part exports with top-k >= 2; with top-1 its gate (the router's
  // probability, not renormalized to 1 as Mixtral's) is the one part refused.
  c.normalization = "RMSNorm";
  c.position_embedding_type = "rope";
  c.swiglu = true;
  c.add_bias_linear = false;
  c.untie_embeddings_and_output_weights = true;
  c.top_k = 1;
  const std::string top1 = hf_export_refusal(c);
  EXPECT_NE(top1.find("top-1"), std::string::npos) << top1;
  EXPECT_EQ(top1.find("LayerNorm"), std::string::npos) << top1;
  c.top_k = 2;
  EXPECT_EQ(hf_export_refusal(c), "");
  EXPECT_EQ(hf_export_refusal(tiny_mixtral()), "");
}

// A model composed from Megatron's part flags in the 'gpt' family (RMSNorm, rope, SwiGLU, GQA, no
// biases, untied head, top-2) is a Mixtral-architecture model: the export splits its fused QKV
// projection into q/k/v_proj, and the Mixtral model imported from it computes the same logits (to
// float32 rounding: one fused GEMM against three) and holds the same values, tensor by tensor.
TEST(HfCheckpoint, AGptModelComposedOfMixtralPartsExportsAsMixtral) {
  const std::string dir = temp_dir("composed");
  ModelConfig c = tiny_mixtral();
  c.family = "gpt";  // the parts stay Mixtral's
  c.validate();
  GptMoe composed(c);
  randomize(composed, 23);
  export_hf_checkpoint(composed, dir + "/hf");
  const ModelConfig read = read_checkpoint_config(dir + "/hf");
  EXPECT_EQ(read.family, "mixtral");
  GptMoe mixtral(read);
  load_model_weights(dir + "/hf", mixtral);
  const int64_t d = c.hidden_size, q = c.num_attention_heads * c.head_dim(), kv = c.kv_heads() * c.head_dim();
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string b = "blocks." + std::to_string(l) + ".";
    const std::vector<float> qkv = composed.params().get(b + "attn.qkv.weight").value.to_vector();
    std::vector<float> split;
    for (const char* part : {"attn.q.weight", "attn.k.weight", "attn.v.weight"}) {
      const std::vector<float> v = mixtral.params().get(b + part).value.to_vector();
      split.insert(split.end(), v.begin(), v.end());
    }
    EXPECT_EQ(split, qkv) << b << "attn.qkv split into q, k, v";
    EXPECT_EQ(static_cast<int64_t>(qkv.size()), (q + 2 * kv) * d);
    EXPECT_EQ(mixtral.params().get(b + "attn.o.weight").value.to_vector(),
              composed.params().get(b + "attn.proj.weight").value.to_vector());
  }
  std::vector<int32_t> ids(2 * c.max_seq_len);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>((7 * i + 3) % c.vocab_size);
  const Tensor tokens = Tensor::from_ints({static_cast<int64_t>(ids.size())}, ids);
  const std::vector<float> want = composed.logits(tokens, 2).to_vector(),
                           got = mixtral.logits(tokens, 2).to_vector();
  ASSERT_EQ(got.size(), want.size());
  double worst = 0, scale = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    worst = std::max(worst, std::abs(static_cast<double>(got[i]) - want[i]));
    scale = std::max(scale, std::abs(static_cast<double>(want[i])));
  }
  EXPECT_GT(scale, 0.1);
  EXPECT_LE(worst, 1e-5 * scale) << "logits of the imported Mixtral model against the composed GPT model";
}

TEST(HfCheckpoint, CheckpointOfTheOtherFamilyIsRefused) {
  const std::string dir = temp_dir("family");
  exported(dir + "/hf");
  ModelConfig gpt;
  gpt.vocab_size = 64;
  gpt.max_seq_len = 16;
  gpt.hidden_size = 32;
  gpt.num_layers = 2;
  GptMoe gpt_model(gpt);
  EXPECT_NE(error_of([&] { load_model_weights(dir + "/hf", gpt_model); }).find("family: mixtral vs gpt"),
            std::string::npos);
  AdamW optimizer(gpt_model.params(), AdamWConfig{});
  save_checkpoint(dir + "/gpt", gpt_model, optimizer, TrainingProgress{1, 1, std::nullopt});
  GptMoe mixtral_model(tiny_mixtral());
  EXPECT_NE(error_of([&] { load_model_weights(dir + "/gpt", mixtral_model); }).find("family: gpt vs mixtral"),
            std::string::npos);
}

// Each edit of config.json is refused by read_checkpoint_config naming the field.
TEST(HfCheckpoint, BadConfigFieldsAreRefusedByName) {
  const std::string dir = temp_dir("badconfig");
  exported(dir);
  const nlohmann::json good = read_json_file(dir + "/config.json");
  struct Case {
    const char* key;
    nlohmann::json value;  // discarded when erase
    bool erase;
    const char* expected;
  };
  const std::vector<Case> cases = {
      {"model_type", "llama", false, "field 'model_type' is \"llama\""},
      {"model_type", nullptr, true, "missing field 'model_type'"},
      {"num_local_experts", nullptr, true, "missing field 'num_local_experts'"},
      {"num_key_value_heads", nullptr, true, "missing field 'num_key_value_heads'"},
      {"hidden_size", "32", false, "field 'hidden_size' must be an integer"},
      {"num_key_value_heads", 3, false, "not divisible by 'num_key_value_heads' 3"},
      {"num_experts_per_tok", 5, false, "'num_experts_per_tok' 5 exceeds"},
      {"head_dim", 16, false, "field 'head_dim' is 16"},
      {"tie_word_embeddings", true, false, "field 'tie_word_embeddings'"},
      {"hidden_act", "gelu", false, "field 'hidden_act'"},
      {"rope_scaling", {{"type", "linear"}, {"factor", 2}}, false, "field 'rope_scaling.type' is \"linear\""},
      {"sliding_window", 8, false, "field 'sliding_window' 8 is smaller than 'max_position_embeddings' 16"},
      {"tokenizer", "gpt2", false, "tokenizer 'gpt2'"},
  };
  for (const Case& c : cases) {
    nlohmann::json j = good;
    if (c.erase) {
      j.erase(c.key);
    } else {
      j[c.key] = c.value;
    }
    write_json_file(dir + "/config.json", j);
    const std::string e = error_of([&] { read_checkpoint_config(dir); });
    EXPECT_NE(e.find(c.expected), std::string::npos) << c.key << ": " << e;
    EXPECT_NE(e.find("config.json"), std::string::npos) << c.key << ": " << e;
  }
  // A window no shorter than the sequences is full causal attention; optional fields may be absent.
  nlohmann::json j = good;
  j["sliding_window"] = 16;
  for (const char* key : {"head_dim", "router_aux_loss_coef", "capacity_factor", "tokenizer", "hidden_act",
                          "tie_word_embeddings", "architectures", "dtype"})
    j.erase(key);
  write_json_file(dir + "/config.json", j);
  const ModelConfig c = read_checkpoint_config(dir);
  EXPECT_EQ(c.aux_loss_weight, 0.001);  // transformers' default
  EXPECT_EQ(c.capacity_factor, 0.0);
  EXPECT_EQ(c.tokenizer, "byte");
}

// Rewrites model.safetensors with `edit` applied to its tensors.
void rewrite_weights(const std::string& dir,
                     const std::function<void(std::vector<std::pair<std::string, Tensor>>&)>& edit) {
  SafetensorsFile f = read_safetensors(dir + "/model.safetensors");
  std::vector<std::pair<std::string, Tensor>> tensors(f.tensors.begin(), f.tensors.end());
  edit(tensors);
  write_safetensors(dir + "/model.safetensors", tensors, f.metadata);
}

TEST(HfCheckpoint, BadTensorsAreRefusedByNameBeforeAnyDataIsRead) {
  const std::string dir = temp_dir("badtensors");
  exported(dir);
  const std::string pristine = read_file(dir + "/model.safetensors");
  const nlohmann::json good = read_json_file(dir + "/config.json");
  auto restore = [&] {
    write_file_atomically(dir + "/model.safetensors", pristine);
    write_json_file(dir + "/config.json", good);
  };

  // config.json's shapes disagree with the tensors: the tensor, the found and the expected shape.
  nlohmann::json j = good;
  j["intermediate_size"] = 40;
  write_json_file(dir + "/config.json", j);
  std::string e = error_of([&] { import_like_eval(dir); });
  EXPECT_NE(e.find("tensor 'model.layers.0.block_sparse_moe.experts.0.w1.weight'"), std::string::npos) << e;
  EXPECT_NE(e.find("has shape [48, 32], config.json implies [40, 32]"), std::string::npos) << e;
  restore();

  // A missing expert, by name.
  rewrite_weights(dir, [](auto& t) {
    std::erase_if(
        t, [](const auto& p) { return p.first == "model.layers.1.block_sparse_moe.experts.3.w2.weight"; });
  });
  e = error_of([&] { import_like_eval(dir); });
  EXPECT_NE(e.find("lacks tensor 'model.layers.1.block_sparse_moe.experts.3.w2.weight'"), std::string::npos)
      << e;
  restore();

  // An extra tensor (a fifth expert, a rotary buffer), by name.
  rewrite_weights(dir, [](auto& t) {
    t.emplace_back("model.layers.0.self_attn.rotary_emb.inv_freq", Tensor::zeros({4}));
  });
  e = error_of([&] { import_like_eval(dir); });
  EXPECT_NE(e.find("unexpected tensor 'model.layers.0.self_attn.rotary_emb.inv_freq'"), std::string::npos)
      << e;
  restore();

  // A dtype that does not convert: named with the dtype.
  rewrite_weights(dir, [](auto& t) {
    for (auto& [name, v] : t)
      if (name == "model.norm.weight") v = Tensor::zeros({32}, DType::I32);
  });
  e = error_of([&] { import_like_eval(dir); });
  EXPECT_NE(e.find("tensor 'model.norm.weight' has dtype I32"), std::string::npos) << e;
  restore();

  // A model of another shape than config.json: refused naming the fields (checkpoint vs flags).
  ModelConfig other = tiny_mixtral();
  other.num_experts = 8;
  GptMoe wrong(other);
  e = error_of([&] { load_model_weights(dir, wrong); });
  EXPECT_NE(e.find("num_experts: 4 vs 8"), std::string::npos) << e;
  import_like_eval(dir);  // and the pristine directory still loads
}

TEST(HfCheckpoint, IndexInconsistenciesAreRefused) {
  const std::string dir = temp_dir("badindex");
  HfExportOptions options;
  options.max_shard_bytes = 20000;
  exported(dir, options);
  const nlohmann::json good = read_json_file(dir + "/model.safetensors.index.json");
  nlohmann::json j = good;
  const std::string name = "model.layers.1.self_attn.q_proj.weight";
  const std::string shard = j["weight_map"][name];
  std::string other;
  for (const auto& [n, f] : good["weight_map"].items())
    if (f != shard) other = f.get<std::string>();
  ASSERT_FALSE(other.empty());
  j["weight_map"][name] = other;  // listed in a shard that does not hold it
  write_json_file(dir + "/model.safetensors.index.json", j);
  std::string e = error_of([&] { import_like_eval(dir); });
  EXPECT_NE(e.find("'" + name + "' is in " + shard + " but model.safetensors.index.json maps it to " + other),
            std::string::npos)
      << e;

  j = good;
  j["weight_map"][name] = "../elsewhere.safetensors";
  write_json_file(dir + "/model.safetensors.index.json", j);
  e = error_of([&] { import_like_eval(dir); });
  EXPECT_NE(e.find("not a file name"), std::string::npos) << e;

  j = good;
  j.erase("weight_map");
  write_json_file(dir + "/model.safetensors.index.json", j);
  e = error_of([&] { import_like_eval(dir); });
  EXPECT_NE(e.find("missing field 'weight_map'"), std::string::npos) << e;
}

uint16_t to_bf16(float x) { return static_cast<uint16_t>(std::bit_cast<uint32_t>(x) >> 16); }

// float -> IEEE half for values exactly representable (as produced below).
uint16_t to_f16(float x) {
  const uint32_t b = std::bit_cast<uint32_t>(x);
  const uint32_t sign = (b >> 16) & 0x8000u;
  const int32_t exponent = static_cast<int32_t>((b >> 23) & 0xff) - 127 + 15;
  if ((b & 0x7fffffffu) == 0) return static_cast<uint16_t>(sign);
  if (exponent <= 0) {  // subnormal half
    const uint32_t mantissa = (b & 0x7fffffu) | 0x800000u;
    return static_cast<uint16_t>(sign | (mantissa >> (14 - exponent)));
  }
  return static_cast<uint16_t>(sign | (static_cast<uint32_t>(exponent) << 10) | ((b >> 13) & 0x3ffu));
}

// Writes `dir`/model.safetensors by hand with every tensor of `src` stored as BF16 or F16.
void write_half(const std::string& src_dir, const std::string& dir, bool bf16) {
  const SafetensorsFile src = read_safetensors(src_dir + "/model.safetensors");
  nlohmann::ordered_json header;
  header["__metadata__"] = {{"format", "pt"}};
  std::string data;
  for (const auto& [name, t] : src.tensors) {
    const std::vector<float> v = t.to_vector();
    header[name] = {{"dtype", bf16 ? "BF16" : "F16"},
                    {"shape", t.shape()},
                    {"data_offsets", {data.size(), data.size() + 2 * v.size()}}};
    for (float x : v) {
      const uint16_t h = bf16 ? to_bf16(x) : to_f16(x);
      data.push_back(static_cast<char>(h & 0xff));
      data.push_back(static_cast<char>(h >> 8));
    }
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  std::string file(8, '\0');
  for (int i = 0; i < 8; ++i) file[i] = static_cast<char>((text.size() >> (8 * i)) & 0xff);
  fs::create_directories(dir);
  write_file_atomically(dir + "/model.safetensors", file + text + data);
  fs::copy_file(src_dir + "/config.json", dir + "/config.json", fs::copy_options::overwrite_existing);
}

TEST(HfCheckpoint, Bf16AndF16TensorsConvertExactly) {
  const std::string dir = temp_dir("half");
  // Weights exactly representable in each format, so the import must reproduce them bit for bit.
  GptMoe model(tiny_mixtral());
  randomize(model, 3);
  for (Parameter& p : model.params().all()) {
    float* v = p.value.data<float>();
    for (int64_t i = 0; i < p.value.numel(); ++i)
      v[i] = std::abs(v[i]) < std::ldexp(1.0f, -14)
                 ? std::ldexp(std::nearbyint(std::ldexp(v[i], 24)), -24)               // a half subnormal
                 : std::bit_cast<float>(std::bit_cast<uint32_t>(v[i]) & 0xffffe000u);  // 10 mantissa bits
  }
  // A few edge values in the norm: a half subnormal, a negative zero, a large value.
  float* norm = model.params().get("final_ln.weight").value.data<float>();
  norm[0] = std::ldexp(1.0f, -20);
  norm[1] = -0.0f;
  norm[2] = 65504.0f;  // the largest half
  export_hf_checkpoint(model, dir + "/f32");
  for (bool bf16 : {false, true}) {
    const std::string half = dir + (bf16 ? "/bf16" : "/f16");
    write_half(dir + "/f32", half, bf16);
    GptMoe copy(read_checkpoint_config(half));
    load_model_weights(half, copy);
    if (!bf16) {
      expect_bit_identical(model, copy);
      continue;
    }
    for (const Parameter& p : model.params().all()) {  // bf16 keeps the top 16 bits
      const std::vector<float> a = p.value.to_vector(), b = copy.params().get(p.name).value.to_vector();
      for (size_t i = 0; i < a.size(); ++i)
        ASSERT_EQ(std::bit_cast<uint32_t>(b[i]), std::bit_cast<uint32_t>(a[i]) & 0xffff0000u)
            << p.name << " " << i;
    }
  }
}

TEST(HfCheckpoint, ParseByteSize) {
  EXPECT_EQ(parse_byte_size("1048576"), 1048576u);
  EXPECT_EQ(parse_byte_size("500MB"), 500'000'000u);
  EXPECT_EQ(parse_byte_size("5GB"), 5'000'000'000u);
  EXPECT_EQ(parse_byte_size("5gb"), 5'000'000'000u);
  EXPECT_EQ(parse_byte_size("1.5GB"), 1'500'000'000u);
  EXPECT_EQ(parse_byte_size("2GiB"), 2147483648u);
  EXPECT_EQ(parse_byte_size("64KiB"), 65536u);
  EXPECT_EQ(parse_byte_size("100B"), 100u);
  for (const char* junk :
       {"", "abc", "5 GB", "5XB", "-1", "0", "1e9", ".5GB", "1.2.3MB", "5GBx", "99999999999999999999"}) {
    const std::string e = error_of([&] { parse_byte_size(junk); });
    EXPECT_NE(e.find(std::string("--max-shard-size '") + junk + "'"), std::string::npos) << junk << ": " << e;
  }
}

// Fuzzing findings (tests/fuzz/fuzz_byte_size.cpp): a size with a unit from 2^63 bytes up wrapped
// around through llround (12222222242222248KB, 1.2e19 bytes, came out as 2^63), and a number past
// double's range threw std::out_of_range from std::stod instead of an ampipe::Error.
TEST(HfCheckpoint, ParseByteSize_SizesPastTwoToTheSixtyThreeAndHugeNumbers) {
  // Sizes with a unit go through double: the nearest double to 1.2222222242222248e19 is exact here.
  EXPECT_EQ(parse_byte_size("12222222242222248KB"), 12222222242222247936u);
  EXPECT_EQ(parse_byte_size("9000000TB"), 9'000'000'000'000'000'000u);
  EXPECT_EQ(parse_byte_size("16777215TiB"), 16777215ull << 40);
  for (const std::string& too_large : {std::string("18446744073709552KB"), std::string("16777216TiB"),
                                       std::string(400, '9') + "KB", std::string(400, '9') + ".5GiB"}) {
    const std::string e = error_of([&] { parse_byte_size(too_large); });
    EXPECT_NE(e.find("--max-shard-size '" + too_large + "' is too large: at most 18446744073709551615 bytes"),
              std::string::npos)
        << e;
  }
  const std::string tiny = "0." + std::string(400, '0') + "1KB";
  EXPECT_NE(error_of([&] { parse_byte_size(tiny); }).find("must be at least 1 byte"), std::string::npos);
}

std::string write_corpus(const std::string& dir) {
  std::string text;
  for (int i = 0; i < 200; ++i) text += "In the beginning God created the heaven and the earth. ";
  const std::string path = dir + "/corpus.txt";
  std::ofstream(path) << text;
  return path;
}

// eval of the export equals eval of the ampipe checkpoint exactly; train --load of the export starts
// from its weights at iteration 0 with a fresh optimizer.
TEST(HfCheckpoint, EvalAndTrainLoadTheExport) {
  const std::string dir = temp_dir("train");
  const std::string data = write_corpus(dir);
  TrainOptions o;
  o.model = tiny_mixtral();
  o.model.vocab_size = 256;  // byte tokens
  o.micro_batch_size = 2;
  o.train_iters = 3;
  o.eval_iters = 1;
  o.lr.warmup_iters = 0;
  o.data_path = {data};
  o.save = dir + "/ckpt";
  run_training(o, [](const std::string&) {});
  export_hf_checkpoint(dir + "/ckpt", dir + "/hf");

  const std::vector<int32_t> tokens = load_tokens(data);
  const std::vector<int64_t> offsets = consecutive_windows(static_cast<int64_t>(tokens.size()), 16);
  auto eval = [&](const std::string& d) {
    GptMoe m(read_checkpoint_config(d));
    load_model_weights(d, m);
    return evaluate_windows(m, tokens, offsets, 16, 4).loss;
  };
  EXPECT_EQ(eval(dir + "/hf"), eval(dir + "/ckpt"));

  TrainOptions again = o;
  again.load = dir + "/hf";
  again.save = dir + "/ckpt2";
  again.train_iters = 2;
  std::vector<std::string> log;
  const TrainResult r = run_training(again, [&](const std::string& line) { log.push_back(line); });
  EXPECT_EQ(r.iterations, 2);
  bool started = false;
  for (const std::string& line : log)
    started |= line.find("starting from the weights of") != std::string::npos;
  EXPECT_TRUE(started);
  EXPECT_TRUE(has_training_state(dir + "/ckpt2"));
  EXPECT_FALSE(is_hf_checkpoint(dir + "/ckpt2"));
}

// The command (main.cpp registers it with add_export_command / run_export).
TEST(HfCheckpoint, ExportCommand) {
  const std::string dir = temp_dir("cli");
  GptMoe model(tiny_mixtral());
  randomize(model, 1);
  AdamW optimizer(model.params(), AdamWConfig{});
  save_checkpoint(dir + "/ckpt", model, optimizer, TrainingProgress{1, 1, std::nullopt});

  auto r = testing::run_ampipe("export --load " + dir + "/ckpt --save " + dir + "/hf --max-shard-size 30KB");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("ampipe export: "), std::string::npos) << r.output;
  EXPECT_TRUE(fs::exists(dir + "/hf/model.safetensors.index.json"));
  GptMoe copy(read_checkpoint_config(dir + "/hf"));
  load_model_weights(dir + "/hf", copy);
  expect_bit_identical(model, copy);

  r = testing::run_ampipe("export --load " + dir + "/ckpt --save " + dir + "/x --max-shard-size 5XB");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("--max-shard-size '5XB'"), std::string::npos) << r.output;

  ModelConfig gpt;
  gpt.vocab_size = 64;
  gpt.max_seq_len = 16;
  gpt.hidden_size = 32;
  gpt.num_layers = 1;
  GptMoe gpt_model(gpt);
  AdamW gpt_optimizer(gpt_model.params(), AdamWConfig{});
  save_checkpoint(dir + "/gpt", gpt_model, gpt_optimizer, TrainingProgress{1, 1, std::nullopt});
  r = testing::run_ampipe("export --load " + dir + "/gpt --save " + dir + "/y");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("LayerNorm"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace ampipe
