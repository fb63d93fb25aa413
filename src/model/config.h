// The model's configuration (docs/MODEL.md, "Shapes and names" and "The Mixtral family").
//
// Two families share the engine. `family` decides the checkpoint names of the attention
// projections, the router's gate rule and whether the model exports to the Hugging Face Mixtral
// layout; the parts (normalization, positions, SwiGLU, query groups, biases, untied head) are
// separate fields, each usable on its own in the GPT family. The Mixtral family requires its parts
// (RMSNorm, rope, SwiGLU, no biases, untied head); validate() names any that disagree.
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

  // The family and its parts (Megatron-LM's flag names in the comments).
  std::string family = "gpt";               // "gpt" | "mixtral"
  std::string normalization = "LayerNorm";  // --normalization LayerNorm|RMSNorm
  double norm_epsilon = 1e-5;               // --norm-epsilon
  std::string position_embedding_type =
      "learned_absolute";                            // --position-embedding-type learned_absolute|rope
  double rotary_base = 10000;                        // --rotary-base (theta of rope)
  bool swiglu = false;                               // --swiglu: silu(u W1^T) * (u W3^T) experts
  int64_t num_query_groups = 0;                      // --num-query-groups: KV heads; 0 = h (no GQA)
  bool add_bias_linear = true;                       // false: --disable-bias-linear
  bool untie_embeddings_and_output_weights = false;  // --untie-embeddings-and-output-weights

  // --bf16: mixed precision (docs/MODEL.md "Precision"). A setting of the run, not of the model:
  // the metadata records it ("precision": the dtype the checkpoint was trained in, export's default
  // --dtype), but differences() ignores it, so a checkpoint resumes or loads in either dtype.
  bool bf16 = false;
  // --recompute-granularity selective: the blocks drop the cheap, large activations after their use
  // in the forward (the attention's normed input, the experts' activation output) and recompute them
  // from what they keep, in the backward. A setting of the run: neither in the metadata nor in
  // differences(); results are the same bits.
  bool selective_recompute = false;

  int64_t head_dim() const { return hidden_size / num_attention_heads; }
  // KV heads g (h % g == 0): query head j uses KV head j / (h / g).
  int64_t kv_heads() const { return num_query_groups > 0 ? num_query_groups : num_attention_heads; }
  bool rms_norm() const { return normalization == "RMSNorm"; }
  bool rope() const { return position_embedding_type == "rope"; }
  bool mixtral() const { return family == "mixtral"; }
  // The router's gate: p / (sum of the k selected p) when true, p itself when false (GPT, k == 1).
  bool normalize_gates() const { return mixtral() || top_k > 1; }
  // Sets the family and every part the way the family defines it (Mixtral: RMSNorm eps 1e-5, rope
  // theta 1e6, SwiGLU, no biases, untied head; GPT: today's defaults). Query groups are left alone.
  void set_family(const std::string& name);

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
