#include "model/config.h"

#include <sstream>

#include "core/error.h"

namespace ampipe {

void ModelConfig::validate() const {
  AMPIPE_CHECK(vocab_size >= 2) << "vocab_size must be at least 2, got " << vocab_size;
  AMPIPE_CHECK(max_seq_len >= 1) << "--seq-length must be at least 1, got " << max_seq_len;
  AMPIPE_CHECK(hidden_size >= 1) << "--hidden-size must be at least 1, got " << hidden_size;
  AMPIPE_CHECK(num_attention_heads >= 1)
      << "--num-attention-heads must be at least 1, got " << num_attention_heads;
  AMPIPE_CHECK(hidden_size % num_attention_heads == 0)
      << "--hidden-size " << hidden_size << " is not divisible by --num-attention-heads "
      << num_attention_heads << "; each head needs hidden-size / heads columns";
  AMPIPE_CHECK(num_layers >= 1) << "--num-layers must be at least 1, got " << num_layers;
  AMPIPE_CHECK(num_experts >= 1) << "--moe-num-experts must be at least 1, got " << num_experts;
  AMPIPE_CHECK(ffn_hidden_size >= 1) << "--ffn-hidden-size must be at least 1, got " << ffn_hidden_size;
  AMPIPE_CHECK(top_k >= 1 && top_k <= num_experts)
      << "--moe-top-k " << top_k << " is not in [1, --moe-num-experts " << num_experts << "]";
  AMPIPE_CHECK(capacity_factor >= 0.0)
      << "--moe-capacity-factor must be >= 0 (0 = dropless), got " << capacity_factor;
  AMPIPE_CHECK(aux_loss_weight >= 0.0) << "--moe-aux-loss-coeff must be >= 0, got " << aux_loss_weight;
  AMPIPE_CHECK(tokenizer == "byte" || tokenizer.rfind("SentencePieceTokenizer:", 0) == 0)
      << "tokenizer '" << tokenizer << "' is not supported; allowed: byte, SentencePieceTokenizer:<hash>";
  AMPIPE_CHECK(family == "gpt" || family == "mixtral")
      << "--model-family '" << family << "' is not known; allowed: gpt, mixtral";
  AMPIPE_CHECK(normalization == "LayerNorm" || normalization == "RMSNorm")
      << "--normalization '" << normalization << "' is not known; allowed: LayerNorm, RMSNorm";
  AMPIPE_CHECK(norm_epsilon > 0 && norm_epsilon < 1) << "--norm-epsilon must be in (0, 1), got " << norm_epsilon;
  AMPIPE_CHECK(position_embedding_type == "learned_absolute" || position_embedding_type == "rope")
      << "--position-embedding-type '" << position_embedding_type << "' is not known; allowed: learned_absolute, rope";
  AMPIPE_CHECK(rotary_base > 1) << "--rotary-base must be > 1, got " << rotary_base;
  AMPIPE_CHECK(!rope() || head_dim() % 2 == 0)
      << "--position-embedding-type rope needs an even head dimension (hidden-size / heads), got " << head_dim();
  AMPIPE_CHECK(num_query_groups >= 0) << "--num-query-groups must be >= 1, got " << num_query_groups;
  AMPIPE_CHECK(num_attention_heads % kv_heads() == 0)
      << "--num-attention-heads " << num_attention_heads << " is not divisible by --num-query-groups "
      << num_query_groups << "; each KV head serves h / g query heads";
  if (mixtral()) {
    auto require = [](bool ok, const char* part, const std::string& got) {
      AMPIPE_CHECK(ok) << "--model-family mixtral requires " << part << ", got " << got
                       << " (drop the conflicting flag, or use --model-family gpt)";
    };
    require(rms_norm(), "--normalization RMSNorm", normalization);
    require(rope(), "--position-embedding-type rope", position_embedding_type);
    require(swiglu, "--swiglu", "no --swiglu");
    require(!add_bias_linear, "--disable-bias-linear", "biases");
    require(untie_embeddings_and_output_weights, "--untie-embeddings-and-output-weights", "a tied head");
  }
}

void ModelConfig::set_family(const std::string& name) {
  AMPIPE_CHECK(name == "gpt" || name == "mixtral")
      << "--model-family '" << name << "' is not known; allowed: gpt, mixtral";
  const ModelConfig defaults;
  family = name;
  const bool m = name == "mixtral";
  normalization = m ? "RMSNorm" : defaults.normalization;
  norm_epsilon = defaults.norm_epsilon;
  position_embedding_type = m ? "rope" : defaults.position_embedding_type;
  rotary_base = m ? 1e6 : defaults.rotary_base;
  swiglu = m;
  add_bias_linear = !m;
  untie_embeddings_and_output_weights = m;
}

std::map<std::string, std::string> ModelConfig::to_metadata() const {
  auto num = [](double v) {
    std::ostringstream s;
    s.precision(17);
    s << v;
    return s.str();
  };
  return {{"vocab_size", std::to_string(vocab_size)},
          {"max_seq_len", std::to_string(max_seq_len)},
          {"hidden_size", std::to_string(hidden_size)},
          {"num_attention_heads", std::to_string(num_attention_heads)},
          {"num_layers", std::to_string(num_layers)},
          {"num_experts", std::to_string(num_experts)},
          {"ffn_hidden_size", std::to_string(ffn_hidden_size)},
          {"top_k", std::to_string(top_k)},
          {"capacity_factor", num(capacity_factor)},
          {"aux_loss_weight", num(aux_loss_weight)},
          {"tokenizer", tokenizer},
          {"family", family},
          {"normalization", normalization},
          {"norm_epsilon", num(norm_epsilon)},
          {"position_embedding_type", position_embedding_type},
          {"rope_theta", num(rotary_base)},
          {"swiglu", swiglu ? "true" : "false"},
          {"num_query_groups", std::to_string(kv_heads())},
          {"add_bias_linear", add_bias_linear ? "true" : "false"},
          {"untie_embeddings_and_output_weights", untie_embeddings_and_output_weights ? "true" : "false"},
          {"precision", bf16 ? "bf16" : "float32"}};
}

ModelConfig ModelConfig::from_metadata(const std::map<std::string, std::string>& metadata) {
  auto get = [&](const char* key) -> const std::string& {
    auto it = metadata.find(key);
    AMPIPE_CHECK(it != metadata.end()) << "checkpoint metadata lacks the key '" << key << "'";
    return it->second;
  };
  auto get_int = [&](const char* key) -> int64_t {
    const std::string& s = get(key);
    try {
      size_t used = 0;
      long long v = std::stoll(s, &used);
      AMPIPE_CHECK(used == s.size()) << "trailing characters";
      return v;
    } catch (const std::exception&) {
      AMPIPE_CHECK(false) << "checkpoint metadata '" << key << "' is not an integer: '" << s << "'";
    }
    return 0;
  };
  auto get_double = [&](const char* key) -> double {
    const std::string& s = get(key);
    try {
      size_t used = 0;
      double v = std::stod(s, &used);
      AMPIPE_CHECK(used == s.size()) << "trailing characters";
      return v;
    } catch (const std::exception&) {
      AMPIPE_CHECK(false) << "checkpoint metadata '" << key << "' is not a number: '" << s << "'";
    }
    return 0;
  };
  ModelConfig c;
  c.vocab_size = get_int("vocab_size");
  c.max_seq_len = get_int("max_seq_len");
  c.hidden_size = get_int("hidden_size");
  c.num_attention_heads = get_int("num_attention_heads");
  c.num_layers = get_int("num_layers");
  c.num_experts = get_int("num_experts");
  c.ffn_hidden_size = get_int("ffn_hidden_size");
  c.top_k = get_int("top_k");
  c.capacity_factor = get_double("capacity_factor");
  c.aux_loss_weight = get_double("aux_loss_weight");
  c.tokenizer = get("tokenizer");
  // The family's keys came later: a checkpoint without them is a GPT-family one with today's parts.
  auto has = [&](const char* key) { return metadata.count(key) != 0; };
  auto get_bool = [&](const char* key) -> bool {
    const std::string& s = get(key);
    AMPIPE_CHECK(s == "true" || s == "false") << "checkpoint metadata '" << key << "' is not true/false: '" << s << "'";
    return s == "true";
  };
  if (has("family")) c.family = get("family");
  if (has("normalization")) c.normalization = get("normalization");
  if (has("norm_epsilon")) c.norm_epsilon = get_double("norm_epsilon");
  if (has("position_embedding_type")) c.position_embedding_type = get("position_embedding_type");
  if (has("rope_theta")) c.rotary_base = get_double("rope_theta");
  if (has("swiglu")) c.swiglu = get_bool("swiglu");
  if (has("num_query_groups")) c.num_query_groups = get_int("num_query_groups");
  if (has("add_bias_linear")) c.add_bias_linear = get_bool("add_bias_linear");
  if (has("untie_embeddings_and_output_weights"))
    c.untie_embeddings_and_output_weights = get_bool("untie_embeddings_and_output_weights");
  if (c.num_query_groups == c.num_attention_heads) c.num_query_groups = 0;
  if (has("precision")) {  // absent: written before --bf16 existed, so float32
    const std::string& p = get("precision");
    AMPIPE_CHECK(p == "bf16" || p == "float32")
        << "checkpoint metadata 'precision' is not bf16 or float32: '" << p << "'";
    c.bf16 = p == "bf16";
  }
  c.validate();
  return c;
}

std::string ModelConfig::differences(const ModelConfig& o) const {
  std::ostringstream s;
  auto diff = [&](const char* name, auto a, auto b) {
    if (a != b) s << (s.tellp() > 0 ? "; " : "") << name << ": " << a << " vs " << b;
  };
  diff("vocab_size", vocab_size, o.vocab_size);
  diff("max_seq_len", max_seq_len, o.max_seq_len);
  diff("hidden_size", hidden_size, o.hidden_size);
  diff("num_attention_heads", num_attention_heads, o.num_attention_heads);
  diff("num_layers", num_layers, o.num_layers);
  diff("num_experts", num_experts, o.num_experts);
  diff("ffn_hidden_size", ffn_hidden_size, o.ffn_hidden_size);
  diff("top_k", top_k, o.top_k);
  diff("capacity_factor", capacity_factor, o.capacity_factor);
  diff("aux_loss_weight", aux_loss_weight, o.aux_loss_weight);
  diff("tokenizer", tokenizer, o.tokenizer);
  diff("family", family, o.family);
  diff("normalization", normalization, o.normalization);
  diff("norm_epsilon", norm_epsilon, o.norm_epsilon);
  diff("position_embedding_type", position_embedding_type, o.position_embedding_type);
  diff("rotary_base", rotary_base, o.rotary_base);
  diff("swiglu", swiglu, o.swiglu);
  diff("num_query_groups", kv_heads(), o.kv_heads());
  diff("add_bias_linear", add_bias_linear, o.add_bias_linear);
  diff("untie_embeddings_and_output_weights", untie_embeddings_and_output_weights,
       o.untie_embeddings_and_output_weights);
  return s.str();
}

}  // namespace ampipe
