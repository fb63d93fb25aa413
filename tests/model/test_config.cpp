// The model configuration: the family and its parts through checkpoint metadata (and the old GPT
// metadata without them), and the refusals that name the bad value.
#include <gtest/gtest.h>

#include "core/error.h"
#include "model/config.h"

namespace ampipe {
namespace {

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "no error was thrown";
  return "";
}

TEST(ModelConfig, MixtralFamilySetsEveryPart) {
  ModelConfig c;
  c.set_family("mixtral");
  EXPECT_TRUE(c.mixtral());
  EXPECT_TRUE(c.rms_norm());
  EXPECT_TRUE(c.rope());
  EXPECT_DOUBLE_EQ(c.rotary_base, 1e6);
  EXPECT_TRUE(c.swiglu);
  EXPECT_FALSE(c.add_bias_linear);
  EXPECT_TRUE(c.untie_embeddings_and_output_weights);
  EXPECT_TRUE(c.normalize_gates());  // for k == 1 too
  c.validate();
  c.set_family("gpt");
  EXPECT_EQ(c.differences(ModelConfig{}), "");
  EXPECT_FALSE(c.normalize_gates());
  c.top_k = 2;
  EXPECT_TRUE(c.normalize_gates());
}

TEST(ModelConfig, MetadataRoundTripsTheFamilyAndItsParts) {
  ModelConfig c;
  c.set_family("mixtral");
  c.num_attention_heads = 8;
  c.hidden_size = 256;
  c.num_query_groups = 2;
  c.rotary_base = 12345.5;
  c.norm_epsilon = 1e-6;
  const ModelConfig back = ModelConfig::from_metadata(c.to_metadata());
  EXPECT_EQ(c.differences(back), "");
  EXPECT_EQ(back.kv_heads(), 2);
  EXPECT_EQ(c.to_metadata().at("family"), "mixtral");
  EXPECT_EQ(c.to_metadata().at("rope_theta"), "12345.5");
  // Each part alone in the GPT family.
  ModelConfig g;
  g.swiglu = true;
  g.normalization = "RMSNorm";
  g.untie_embeddings_and_output_weights = true;
  EXPECT_EQ(g.differences(ModelConfig::from_metadata(g.to_metadata())), "");
}

// The training precision is recorded ("precision") and read back, absent means float32 (older
// checkpoints), a bad value is refused by name, and differences() ignores it (a checkpoint resumes
// in either precision).
TEST(ModelConfig, PrecisionRoundTripsButIsNotADifference) {
  ModelConfig c;
  c.bf16 = true;
  EXPECT_EQ(c.to_metadata().at("precision"), "bf16");
  EXPECT_TRUE(ModelConfig::from_metadata(c.to_metadata()).bf16);
  EXPECT_EQ(c.differences(ModelConfig{}), "");
  std::map<std::string, std::string> meta = c.to_metadata();
  meta.erase("precision");
  EXPECT_FALSE(ModelConfig::from_metadata(meta).bf16);
  meta["precision"] = "fp16";
  EXPECT_NE(error_of([&] { ModelConfig::from_metadata(meta); }).find("'precision' is not bf16 or float32: 'fp16'"),
            std::string::npos);
}

TEST(ModelConfig, OldGptMetadataWithoutTheFamilyKeysLoadsAsTheGptFamily) {
  std::map<std::string, std::string> old = ModelConfig{}.to_metadata();
  for (const char* key :
       {"family", "normalization", "norm_epsilon", "position_embedding_type", "rope_theta", "swiglu",
        "num_query_groups", "add_bias_linear", "untie_embeddings_and_output_weights"})
    ASSERT_EQ(old.erase(key), 1u) << key;
  const ModelConfig c = ModelConfig::from_metadata(old);
  EXPECT_EQ(c.differences(ModelConfig{}), "");
  EXPECT_EQ(c.family, "gpt");
}

TEST(ModelConfig, BadFamilyValuesAreRefusedNamingTheFlagOrKey) {
  ModelConfig c;
  c.family = "llama";
  EXPECT_NE(error_of([&] { c.validate(); }).find("--model-family 'llama'"), std::string::npos);
  EXPECT_NE(error_of([&] { ModelConfig().set_family("llama"); }).find("allowed: gpt, mixtral"),
            std::string::npos);
  c = ModelConfig{};
  c.normalization = "BatchNorm";
  EXPECT_NE(error_of([&] { c.validate(); }).find("--normalization 'BatchNorm'"), std::string::npos);
  c = ModelConfig{};
  c.position_embedding_type = "alibi";
  EXPECT_NE(error_of([&] { c.validate(); }).find("--position-embedding-type 'alibi'"), std::string::npos);
  c = ModelConfig{};
  c.num_attention_heads = 4;
  c.num_query_groups = 3;
  EXPECT_NE(error_of([&] { c.validate(); }).find("--num-query-groups 3"), std::string::npos);
  c = ModelConfig{};
  c.position_embedding_type = "rope";
  c.hidden_size = 12;
  c.num_attention_heads = 4;  // head dimension 3
  EXPECT_NE(error_of([&] { c.validate(); }).find("even head dimension"), std::string::npos);
  c = ModelConfig{};
  c.norm_epsilon = 0;
  EXPECT_NE(error_of([&] { c.validate(); }).find("--norm-epsilon"), std::string::npos);
  // The Mixtral family with a part it cannot have names the part.
  c = ModelConfig{};
  c.set_family("mixtral");
  c.normalization = "LayerNorm";
  EXPECT_NE(error_of([&] { c.validate(); }).find("requires --normalization RMSNorm, got LayerNorm"),
            std::string::npos);
  c.set_family("mixtral");
  c.add_bias_linear = true;
  EXPECT_NE(error_of([&] { c.validate(); }).find("--disable-bias-linear"), std::string::npos);
  // Metadata: a malformed boolean names the key.
  std::map<std::string, std::string> meta = ModelConfig{}.to_metadata();
  meta["swiglu"] = "yes";
  EXPECT_NE(error_of([&] { ModelConfig::from_metadata(meta); }).find("'swiglu' is not true/false"),
            std::string::npos);
}

}  // namespace
}  // namespace ampipe
