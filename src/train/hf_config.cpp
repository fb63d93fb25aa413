#include "train/hf_config.h"

#include <cmath>
#include <sstream>
#include <vector>

#include "core/error.h"

namespace ampipe {

namespace {

// transformers' MixtralConfig default when config.json has no router_aux_loss_coef.
constexpr double kHfDefaultAuxLossCoef = 0.001;
// The dtype names of config.json for the tensor dtypes ampipe reads (F32, BF16, F16).
const std::vector<std::string> kReadableDtypes = {"float32", "bfloat16", "float16"};

nlohmann::json id_or_null(int32_t id) { return id >= 0 ? nlohmann::json(id) : nlohmann::json(nullptr); }

// Reads config.json's fields, refusing a missing or malformed one by name.
class ConfigFields {
 public:
  ConfigFields(const std::string& path, const nlohmann::json& j) : path_(path), j_(j) {}

  // The value of `key`, or nullptr when it is absent or null (transformers writes null for unset).
  const nlohmann::json* find(const char* key) const {
    auto it = j_.find(key);
    return it == j_.end() || it->is_null() ? nullptr : &*it;
  }
  const nlohmann::json& required(const char* key) const {
    const nlohmann::json* v = find(key);
    AMPIPE_CHECK(v != nullptr) << path_ << ": missing field '" << key << "'";
    return *v;
  }
  int64_t positive_int(const char* key) const {
    const nlohmann::json& v = required(key);
    AMPIPE_CHECK(v.is_number_integer() && v.get<int64_t>() >= 1 &&
                 !(v.is_number_unsigned() && v.get<uint64_t>() > (1ull << 62)))
        << path_ << ": field '" << key << "' must be an integer >= 1, got " << v.dump();
    return v.get<int64_t>();
  }
  double number(const nlohmann::json& v, const std::string& key) const {
    AMPIPE_CHECK(v.is_number()) << path_ << ": field '" << key << "' must be a number, got " << v.dump();
    return v.get<double>();
  }
  double positive_number(const nlohmann::json& v, const std::string& key) const {
    const double x = number(v, key);
    AMPIPE_CHECK(x > 0 && std::isfinite(x))
        << path_ << ": field '" << key << "' must be > 0, got " << v.dump();
    return x;
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  const nlohmann::json& j_;
};

// Refuses a rope scaling type other than plain rope. `object` is a 5.x rope_parameters or a 4.x
// rope_scaling object; `field` names it. Both versions accept the legacy key "type" for "rope_type".
void check_plain_rope(const ConfigFields& f, const nlohmann::json& object, const std::string& field) {
  for (const char* key : {"rope_type", "type"}) {
    auto it = object.find(key);
    if (it == object.end() || it->is_null()) continue;
    AMPIPE_CHECK(it->is_string() && it->get<std::string>() == "default")
        << f.path() << ": field '" << field << "." << key << "' is " << it->dump()
        << "; ampipe implements plain rope only (\"default\"), not the scaled variants (linear, dynamic, "
           "yarn, "
           "llama3, longrope)";
  }
  auto partial = object.find("partial_rotary_factor");
  if (partial != object.end() && !partial->is_null()) {
    AMPIPE_CHECK(partial->is_number() && partial->get<double>() == 1.0)
        << f.path() << ": field '" << field << ".partial_rotary_factor' is " << partial->dump()
        << "; ampipe rotates every dimension of a head (1.0)";
  }
}

// The rotary base: 4.x's top-level rope_theta, 5.x's rope_parameters.rope_theta, or both when they
// agree. Refuses rope scaling in either form (4.x rope_scaling, 5.x rope_parameters.rope_type).
double read_rope_theta(const ConfigFields& f) {
  if (const nlohmann::json* scaling = f.find("rope_scaling")) {
    AMPIPE_CHECK(scaling->is_object()) << f.path() << ": field 'rope_scaling' is " << scaling->dump()
                                       << "; ampipe implements plain rope only (null)";
    check_plain_rope(f, *scaling, "rope_scaling");
  }
  const nlohmann::json* top = f.find("rope_theta");
  const nlohmann::json* nested = nullptr;
  if (const nlohmann::json* params = f.find("rope_parameters")) {
    AMPIPE_CHECK(params->is_object())
        << f.path() << ": field 'rope_parameters' must be an object "
        << "({\"rope_theta\": ..., \"rope_type\": \"default\"}), got " << params->dump();
    check_plain_rope(f, *params, "rope_parameters");
    auto it = params->find("rope_theta");
    if (it != params->end() && !it->is_null()) nested = &*it;
  }
  AMPIPE_CHECK(top != nullptr || nested != nullptr)
      << f.path() << ": missing field 'rope_theta' (Transformers 4.x writes it at the top level, 5.x as "
      << "'rope_parameters.rope_theta')";
  const double top_theta = top ? f.positive_number(*top, "rope_theta") : 0;
  const double nested_theta = nested ? f.positive_number(*nested, "rope_parameters.rope_theta") : 0;
  AMPIPE_CHECK(!top || !nested || top_theta == nested_theta)
      << f.path() << ": field 'rope_theta' " << top->dump() << " and 'rope_parameters.rope_theta' "
      << nested->dump() << " disagree; give one value (or the same in both)";
  return nested ? nested_theta : top_theta;
}

// "dtype" (5.x) and "torch_dtype" (4.x) name the weights' dtype; either may be absent. Each must be
// one ampipe reads, and both, when present, the same.
void check_dtype(const ConfigFields& f) {
  const nlohmann::json* dtype = f.find("dtype");
  const nlohmann::json* torch_dtype = f.find("torch_dtype");
  for (const auto& [v, key] : {std::pair{dtype, "dtype"}, std::pair{torch_dtype, "torch_dtype"}}) {
    if (v == nullptr) continue;
    bool readable = false;
    for (const std::string& name : kReadableDtypes) readable = readable || (v->is_string() && *v == name);
    AMPIPE_CHECK(readable) << f.path() << ": field '" << key << "' is " << v->dump()
                           << "; ampipe reads \"float32\", \"bfloat16\" and \"float16\" weights";
  }
  AMPIPE_CHECK(dtype == nullptr || torch_dtype == nullptr || *dtype == *torch_dtype)
      << f.path() << ": fields 'dtype' " << dtype->dump() << " and 'torch_dtype' " << torch_dtype->dump()
      << " disagree; give one (Transformers 5.x writes 'dtype', 4.x 'torch_dtype') or the same in both";
}

// The shapes: every size field of MixtralConfig, checked against each other.
void read_shapes(const ConfigFields& f, ModelConfig& c) {
  const std::string& path = f.path();
  c.vocab_size = f.positive_int("vocab_size");
  c.hidden_size = f.positive_int("hidden_size");
  c.ffn_hidden_size = f.positive_int("intermediate_size");
  c.num_attention_heads = f.positive_int("num_attention_heads");
  const int64_t g = f.positive_int("num_key_value_heads");
  c.num_layers = f.positive_int("num_hidden_layers");
  c.num_experts = f.positive_int("num_local_experts");
  c.top_k = f.positive_int("num_experts_per_tok");
  c.max_seq_len = f.positive_int("max_position_embeddings");
  c.norm_epsilon = f.positive_number(f.required("rms_norm_eps"), "rms_norm_eps");

  const int64_t d = c.hidden_size, h = c.num_attention_heads;
  AMPIPE_CHECK(d % h == 0) << path << ": field 'hidden_size' " << d
                           << " is not divisible by 'num_attention_heads' " << h;
  AMPIPE_CHECK(h % g == 0) << path << ": field 'num_attention_heads' " << h
                           << " is not divisible by 'num_key_value_heads' " << g;
  c.num_query_groups = g == h ? 0 : g;
  AMPIPE_CHECK(c.top_k <= c.num_experts) << path << ": field 'num_experts_per_tok' " << c.top_k
                                         << " exceeds 'num_local_experts' " << c.num_experts;
  if (const nlohmann::json* v = f.find("head_dim")) {
    AMPIPE_CHECK(v->is_number_integer() && v->get<int64_t>() == d / h)
        << path << ": field 'head_dim' is " << v->dump()
        << "; ampipe needs hidden_size / num_attention_heads = " << d / h;
  }
}

// The parts of the model that ampipe does not implement, refused by field.
void check_supported_parts(const ConfigFields& f, const ModelConfig& c) {
  const std::string& path = f.path();
  if (const nlohmann::json* v = f.find("tie_word_embeddings")) {
    AMPIPE_CHECK(v->is_boolean() && !v->get<bool>())
        << path << ": field 'tie_word_embeddings' is " << v->dump()
        << "; the Mixtral family has an untied LM head (lm_head.weight)";
  }
  if (const nlohmann::json* v = f.find("hidden_act")) {
    AMPIPE_CHECK(v->is_string() && v->get<std::string>() == "silu")
        << path << ": field 'hidden_act' is " << v->dump() << "; ampipe's experts are SwiGLU (\"silu\")";
  }
  // Sliding-window attention equals full causal attention on sequences no longer than the window;
  // ampipe attends over the whole sequence, so a window shorter than the sequences ampipe would run
  // (max_position_embeddings) would silently change the model. Refused; see the message for the fix.
  if (const nlohmann::json* v = f.find("sliding_window")) {
    AMPIPE_CHECK(v->is_number_integer())
        << path << ": field 'sliding_window' must be null or an integer, got " << v->dump();
    AMPIPE_CHECK(v->get<int64_t>() >= c.max_seq_len)
        << path << ": field 'sliding_window' " << v->dump() << " is smaller than 'max_position_embeddings' "
        << c.max_seq_len
        << "; ampipe runs full causal attention, which equals the sliding window only on sequences up to the "
           "window (set max_position_embeddings to at most the window to import it exactly)";
  }
}

}  // namespace

nlohmann::json hf_config_json(const ModelConfig& c, const HfSpecialTokenIds& ids, const std::string& dtype) {
  AMPIPE_CHECK(dtype == "float32" || dtype == "bfloat16")
      << "config.json dtype is float32 or bfloat16, got '" << dtype << "'";
  nlohmann::json j;
  j["architectures"] = {"MixtralForCausalLM"};
  j["model_type"] = "mixtral";
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = c.ffn_hidden_size;
  j["num_attention_heads"] = c.num_attention_heads;
  j["num_key_value_heads"] = c.kv_heads();
  j["head_dim"] = c.head_dim();
  j["num_hidden_layers"] = c.num_layers;
  j["num_local_experts"] = c.num_experts;
  j["num_experts_per_tok"] = c.top_k;
  j["rms_norm_eps"] = c.norm_epsilon;
  // Both versions' rope fields with one value: 4.x reads rope_theta (and ignores rope_parameters),
  // 5.x reads rope_parameters first.
  j["rope_theta"] = c.rotary_base;
  j["rope_parameters"] = {{"rope_theta", c.rotary_base}, {"rope_type", "default"}};
  j["max_position_embeddings"] = c.max_seq_len;
  j["vocab_size"] = c.vocab_size;
  j["tie_word_embeddings"] = false;
  j["router_aux_loss_coef"] = c.aux_loss_weight;
  j["hidden_act"] = "silu";
  j["attention_dropout"] = 0.0;
  j["sliding_window"] = nullptr;
  j["output_router_logits"] = false;
  // "dtype" only: 4.56 and later read it; earlier 4.x load float32 weights as float32 without
  // "torch_dtype" too, and 4.57 warns that "torch_dtype" is deprecated.
  j["dtype"] = dtype;
  j["bos_token_id"] = id_or_null(ids.bos);
  j["eos_token_id"] = id_or_null(ids.eos);
  j["pad_token_id"] = id_or_null(ids.pad);
  j["unk_token_id"] = id_or_null(ids.unk);  // not a MixtralConfig field; kept as an attribute
  // ampipe-only (transformers keeps unknown keys as plain attributes).
  j["capacity_factor"] = c.capacity_factor;
  j["tokenizer"] = c.tokenizer;
  return j;
}

ModelConfig hf_config_from_json(const std::string& path, const nlohmann::json& j) {
  AMPIPE_CHECK(j.is_object()) << path << " is not a JSON object";
  ConfigFields f(path, j);
  const nlohmann::json& type = f.required("model_type");
  AMPIPE_CHECK(type.is_string() && type.get<std::string>() == "mixtral")
      << path << ": field 'model_type' is " << type.dump()
      << "; ampipe imports only \"mixtral\" (transformers' MixtralForCausalLM)";

  ModelConfig c;
  c.set_family("mixtral");
  read_shapes(f, c);
  c.rotary_base = read_rope_theta(f);
  check_dtype(f);
  check_supported_parts(f, c);
  c.aux_loss_weight = kHfDefaultAuxLossCoef;
  if (const nlohmann::json* v = f.find("router_aux_loss_coef"))
    c.aux_loss_weight = f.number(*v, "router_aux_loss_coef");
  if (const nlohmann::json* v = f.find("capacity_factor"))
    c.capacity_factor = f.number(*v, "capacity_factor");
  if (const nlohmann::json* v = f.find("tokenizer")) {
    AMPIPE_CHECK(v->is_string()) << path << ": field 'tokenizer' must be a string, got " << v->dump();
    c.tokenizer = v->get<std::string>();
  }
  try {
    c.validate();
  } catch (const Error& e) {
    throw Error(path + ": " + e.what());
  }
  return c;
}

}  // namespace ampipe
