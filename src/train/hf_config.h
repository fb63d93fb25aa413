// config.json of the Hugging Face Mixtral layout (train/hf_checkpoint.h): the one ampipe writes, which
// Transformers 4.x and 5.x both load, and the reader of either version's form.
//
// The two versions write MixtralConfig differently:
//   4.x: top-level "rope_theta", "rope_scaling" (null for plain rope), "torch_dtype" (from 4.56 "dtype")
//   5.x: "rope_parameters": {"rope_theta": ..., "rope_type": "default"}, "dtype"
// ampipe writes both rope forms with the same value (4.x reads only the top-level one, 5.x prefers
// rope_parameters) and "dtype" alone (every 4.x loads float32 weights as float32 without a dtype;
// 4.57 warns that "torch_dtype" is deprecated). The reader accepts either form or both; where both
// are present they must agree (a disagreement is refused naming both values). ampipe implements
// plain rope only, so a "rope_type" (or the legacy "type") other than "default" is refused naming it.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "model/config.h"

namespace ampipe {

// The special-token ids an export names in config.json (-1: the tokenizer has none; written null).
struct HfSpecialTokenIds {
  int32_t bos = -1;
  int32_t eos = -1;
  int32_t unk = -1;
  int32_t pad = -1;
};

// config.json of a Mixtral-family `config` (which must pass hf_export_refusal): transformers' names,
// both versions' rope and dtype fields, the special-token ids, and two ampipe-only keys that
// transformers keeps as plain attributes: "capacity_factor" and "tokenizer" (config.tokenizer).
// Special-token ids of -1 are written as null. `dtype` is the weights' dtype as transformers names
// it: "float32" or "bfloat16".
nlohmann::json hf_config_json(const ModelConfig& config, const HfSpecialTokenIds& ids = {},
                              const std::string& dtype = "float32");

// The model config of a parsed config.json (`path` names it in messages): validated, of the Mixtral
// family. Refuses (ampipe::Error naming `path` and the field) a missing or malformed field, a model
// ampipe does not implement (another model_type, tied embeddings, another activation, rope scaling,
// a sliding window shorter than the sequences), and the disagreeing duplicates described above.
ModelConfig hf_config_from_json(const std::string& path, const nlohmann::json& j);

}  // namespace ampipe
