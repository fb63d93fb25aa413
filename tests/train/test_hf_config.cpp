// config.json of the Hugging Face Mixtral layout (train/hf_config.h) in the forms Transformers writes,
// without Transformers: tests/train/hf_fixtures/ holds config.json files saved by
// MixtralConfig(...).save_pretrained of Transformers 4.46.3 (top-level rope_theta, torch_dtype),
// 4.57.6 (rope_theta, dtype) and 5.25.0 (rope_parameters, dtype), all of one tiny model with
// rope_theta 500000 (not the Mixtral default, so a reader that ignores the field fails). Each loads
// to the same model; rope scaling and disagreeing duplicates are refused naming the values; what
// ampipe writes carries both versions' rope fields with one value; an export whose config.json is
// rewritten in the 5.x-only form loads, and the command line refuses a scaled rope naming it.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>

#include "cli_util.h"
#include "core/atomic_file.h"
#include "core/error.h"
#include "test_util.h"
#include "train/checkpoint.h"
#include "train/hf_checkpoint.h"
#include "train/hf_config.h"

namespace ampipe {
namespace {

using testing::error_of;

nlohmann::json fixture(const std::string& version) {
  const std::string path =
      std::string(AMPIPE_SOURCE_DIR) + "/tests/train/hf_fixtures/transformers-" + version + "-config.json";
  return nlohmann::json::parse(read_file(path));
}

// The model every fixture describes.
ModelConfig fixture_model() {
  ModelConfig c;
  c.set_family("mixtral");
  c.vocab_size = 64;
  c.max_seq_len = 16;
  c.hidden_size = 32;
  c.ffn_hidden_size = 48;
  c.num_attention_heads = 4;
  c.num_query_groups = 2;
  c.num_layers = 2;
  c.num_experts = 4;
  c.top_k = 2;
  c.rotary_base = 500000;
  c.norm_epsilon = 1e-5;
  c.aux_loss_weight = 0.001;
  c.validate();
  return c;
}

std::string refusal(const nlohmann::json& j) {
  return error_of([&] { hf_config_from_json("fixture/config.json", j); });
}

void expect_contains(const std::string& text, const std::string& part) {
  EXPECT_NE(text.find(part), std::string::npos) << "'" << part << "' not in: " << text;
}

TEST(HfConfig, EveryTransformersVersionsFormLoadsToTheSameModel) {
  for (const char* version : {"4.46.3", "4.57.6", "5.25.0"}) {
    const ModelConfig c = hf_config_from_json(version, fixture(version));
    EXPECT_EQ(c.differences(fixture_model()), "") << version;
    EXPECT_EQ(c.rotary_base, 500000.0) << version;
  }
}

TEST(HfConfig, FixturesAreInTheFormEachVersionWrites) {
  // Guards the premise of the test above: the 4.x forms have only the top-level rope_theta, 5.x only
  // rope_parameters; 4.46 names the dtype torch_dtype, later versions dtype.
  const nlohmann::json v4 = fixture("4.46.3"), v457 = fixture("4.57.6"), v5 = fixture("5.25.0");
  EXPECT_TRUE(v4.contains("rope_theta") && !v4.contains("rope_parameters") && v4.contains("torch_dtype"));
  EXPECT_TRUE(v457.contains("rope_theta") && !v457.contains("rope_parameters") && v457.contains("dtype"));
  EXPECT_TRUE(!v5.contains("rope_theta") && v5.contains("rope_parameters") && v5.contains("dtype"));
}

TEST(HfConfig, RopeTypesOtherThanDefaultAreRefusedNamingThem) {
  for (const char* type : {"yarn", "llama3", "linear", "dynamic", "longrope"}) {
    nlohmann::json j = fixture("5.25.0");
    j["rope_parameters"]["rope_type"] = type;
    j["rope_parameters"]["factor"] = 2.0;
    const std::string e = refusal(j);
    expect_contains(e, std::string("'rope_parameters.rope_type' is \"") + type + "\"");
    expect_contains(e, "plain rope only");
    expect_contains(e, "fixture/config.json");

    // 4.x form: rope_scaling with "rope_type", or the legacy "type".
    for (const char* key : {"rope_type", "type"}) {
      nlohmann::json old = fixture("4.46.3");
      old["rope_scaling"] = {{key, type}, {"factor", 2.0}};
      expect_contains(refusal(old), std::string("'rope_scaling.") + key + "' is \"" + type + "\"");
    }
  }
  // The legacy "type" inside rope_parameters is read as well.
  nlohmann::json j = fixture("5.25.0");
  j["rope_parameters"].erase("rope_type");
  j["rope_parameters"]["type"] = "yarn";
  expect_contains(refusal(j), "'rope_parameters.type' is \"yarn\"");
  // A partial rotation is not plain rope either.
  j = fixture("5.25.0");
  j["rope_parameters"]["partial_rotary_factor"] = 0.5;
  expect_contains(refusal(j), "'rope_parameters.partial_rotary_factor' is 0.5");
}

TEST(HfConfig, DefaultRopeTypeAndNullScalingAreAccepted) {
  nlohmann::json j = fixture("4.46.3");
  j["rope_scaling"] = {{"rope_type", "default"}};
  EXPECT_EQ(hf_config_from_json("x", j).rotary_base, 500000.0);
  j["rope_scaling"] = nullptr;
  EXPECT_EQ(hf_config_from_json("x", j).rotary_base, 500000.0);
}

TEST(HfConfig, DisagreeingRopeThetasAreRefusedNamingBothValues) {
  nlohmann::json j = fixture("5.25.0");
  j["rope_theta"] = 10000.0;
  const std::string e = refusal(j);
  expect_contains(e, "'rope_theta' 10000.0");
  expect_contains(e, "'rope_parameters.rope_theta' 500000.0");
  expect_contains(e, "disagree");
  // Agreeing duplicates (what ampipe writes) are fine.
  j["rope_theta"] = 500000.0;
  EXPECT_EQ(hf_config_from_json("x", j).rotary_base, 500000.0);
}

TEST(HfConfig, MissingRopeThetaIsRefusedNamingBothForms) {
  nlohmann::json j = fixture("5.25.0");
  j["rope_parameters"].erase("rope_theta");
  const std::string e = refusal(j);
  expect_contains(e, "missing field 'rope_theta'");
  expect_contains(e, "'rope_parameters.rope_theta'");
  j["rope_parameters"] = "fast";
  expect_contains(refusal(j), "field 'rope_parameters' must be an object");
  j = fixture("5.25.0");
  j["rope_parameters"]["rope_theta"] = -1;
  expect_contains(refusal(j), "field 'rope_parameters.rope_theta' must be > 0, got -1");
}

TEST(HfConfig, DisagreeingDtypesAreRefusedNamingBothValues) {
  nlohmann::json j = fixture("5.25.0");
  j["torch_dtype"] = "float32";
  const std::string e = refusal(j);
  expect_contains(e, "'dtype' \"bfloat16\"");
  expect_contains(e, "'torch_dtype' \"float32\"");
  expect_contains(e, "disagree");
  j["torch_dtype"] = "bfloat16";
  EXPECT_NO_THROW(hf_config_from_json("x", j));
}

TEST(HfConfig, DtypesAmpipeCannotReadAreRefusedNamingThem) {
  for (const char* key : {"dtype", "torch_dtype"}) {
    nlohmann::json j = fixture("4.57.6");
    j.erase("dtype");
    j[key] = "float64";
    expect_contains(refusal(j), std::string("field '") + key + "' is \"float64\"");
    j[key] = "float16";
    EXPECT_NO_THROW(hf_config_from_json("x", j));
  }
}

TEST(HfConfig, WrittenConfigCarriesBothRopeFormsAndReadsBack) {
  ModelConfig c = fixture_model();
  c.capacity_factor = 1.5;
  const nlohmann::json j = hf_config_json(c, HfSpecialTokenIds{1, 2, 0, -1});
  EXPECT_EQ(j["rope_theta"], 500000.0);
  EXPECT_EQ(j["rope_parameters"], (nlohmann::json{{"rope_theta", 500000.0}, {"rope_type", "default"}}));
  EXPECT_EQ(j["dtype"], "float32");
  EXPECT_FALSE(j.contains("torch_dtype"));
  EXPECT_EQ(j["bos_token_id"], 1);
  EXPECT_EQ(j["eos_token_id"], 2);
  EXPECT_EQ(j["unk_token_id"], 0);
  EXPECT_TRUE(j["pad_token_id"].is_null());
  EXPECT_EQ(hf_config_from_json("x", j).differences(c), "");
  const nlohmann::json byte = hf_config_json(c);
  for (const char* key : {"bos_token_id", "eos_token_id", "unk_token_id", "pad_token_id"})
    EXPECT_TRUE(byte[key].is_null()) << key;
}

TEST(HfConfig, ExportRewrittenInTheTransformers5FormLoadsAndTheCliRefusesScaledRope) {
  const std::string dir = testing::fresh_temp_dir("hf_config_v5");
  GptMoe model(fixture_model());
  uint64_t seed = 3;
  for (Parameter& p : model.params().all())
    p.value.copy_from(testing::random_tensor(p.value.shape(), ++seed, 0.5f));
  export_hf_checkpoint(model, dir + "/hf");

  nlohmann::json j = nlohmann::json::parse(read_file(dir + "/hf/config.json"));
  j.erase("rope_theta");  // what Transformers 5 writes: rope_parameters only
  write_file_atomically(dir + "/hf/config.json", j.dump(2));
  GptMoe copy(read_checkpoint_config(dir + "/hf"));
  load_model_weights(dir + "/hf", copy);
  for (const Parameter& p : model.params().all())
    EXPECT_EQ(p.value.to_vector(), copy.params().get(p.name).value.to_vector()) << p.name;

  j["rope_parameters"]["rope_type"] = "yarn";
  write_file_atomically(dir + "/hf/config.json", j.dump(2));
  const auto r = testing::run_ampipe("export --load " + dir + "/hf --save " + dir + "/again");
  EXPECT_EQ(r.status, 1) << r.output;
  expect_contains(r.output, "'rope_parameters.rope_type' is \"yarn\"");
}

}  // namespace
}  // namespace ampipe
