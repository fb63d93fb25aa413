// The model-family flags (Megatron-LM's names), shared by every subcommand that builds a model:
// --model-family, --normalization, --norm-epsilon, --position-embedding-type, --rotary-base,
// --swiglu, --group-query-attention, --num-query-groups, --disable-bias-linear,
// --untie-embeddings-and-output-weights.
//
// --model-family mixtral sets every part the Mixtral way (ModelConfig::set_family); a part flag
// given beside it overrides that part (and validate() refuses one the family cannot have).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"

namespace CLI {
class App;
}

namespace ampipe {

struct FamilyFlags {
  std::string family = "gpt";
  std::string normalization = "LayerNorm";
  double norm_epsilon = 1e-5;
  std::string position_embedding_type = "learned_absolute";
  double rotary_base = 10000;
  bool swiglu = false;
  bool group_query_attention = false;
  int64_t num_query_groups = 1;
  bool disable_bias_linear = false;
  bool untie_embeddings_and_output_weights = false;
  const CLI::App* command = nullptr;  // set by add_family_flags: which flags were given
};

// Registers the flags on `cmd`, bound to `flags` (which must outlive parsing).
void add_family_flags(CLI::App& cmd, FamilyFlags& flags);
// The flag names, for callers that ask whether any model flag was given.
const std::vector<std::string>& family_flag_names();
// Applies what was given on the command to `config`: the family first, then each part given. Refuses
// --num-query-groups without --group-query-attention, and a count that does not divide the heads
// (through ModelConfig::validate, which the caller runs).
void apply_family_flags(const FamilyFlags& flags, ModelConfig& config);
// Whether any model-family flag was given.
bool any_family_flag_given(const FamilyFlags& flags);

// Registers --device (cpu or cuda; default cpu) on `cmd`, bound to `device`; `what` names what runs
// there in the help text ("the model trains"). train/trainer.h parse_device reads the value.
void add_device_flags(CLI::App& cmd, std::string& device, std::string& distributed_backend, const char* what);

// Registers --bf16 (Megatron-LM's flag: mixed precision, docs/MODEL.md "Precision") on `cmd`, bound
// to `bf16`; `what` names what runs in it ("the model trains").
void add_precision_flag(CLI::App& cmd, bool& bf16, const char* what);

}  // namespace ampipe
