// The GPT-MoE model's configuration (shared/MODEL.md, "Shapes and names").
#pragma once

#include <cstdint>
#include <map>
#include <string>

namespace ampipe {

struct ModelConfig {
  int64_t vocab_size = 256;
  int64_t max_seq_len = 128;
  int64_t hidden_size = 128;
  int64_t num_attention_heads = 4;
  int64_t num_layers = 4;
  int64_t num_experts = 4;
  int64_t ffn_hidden_size = 512;
  int64_t top_k = 1;
  double capacity_factor = 0.0;  // 0 = dropless
  double aux_loss_weight = 0.01;
  std::string tokenizer = "byte";

  int64_t head_dim() const { return hidden_size / num_attention_heads; }

  // Throws ampipe::Error naming the first bad value and what is allowed.
  void validate() const;

  // The safetensors __metadata__ form (all values are strings), and back (validated; names a
  // missing or malformed key).
  std::map<std::string, std::string> to_metadata() const;
  static ModelConfig from_metadata(const std::map<std::string, std::string>& metadata);

  // Lists every field that differs from `other` ("hidden_size: 128 vs 256; ..."), empty if none.
  std::string differences(const ModelConfig& other) const;
};

}  // namespace ampipe
