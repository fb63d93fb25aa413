// Checkpoints: DIR/model.safetensors (weights, names and config metadata as docs/MODEL.md) and
// DIR/optimizer.safetensors (AdamW moments, step, and the data position).
//
// The readers also accept a Hugging Face Mixtral directory (train/hf_checkpoint.h): config.json and
// model.safetensors or its sharded index, without ampipe's metadata. It holds weights only.
//
// Each file is written atomically (temp file + fsync + rename). The optimizer file is written first
// and the model file last, both stamped with the iteration; a load refuses a pair whose stamps
// differ (a crash between the two renames), so a resumed run never mixes two checkpoints.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include <memory>

#include "model/gpt.h"
#include "train/tokenizer.h"
#include "train/distributed.h"
#include "train/optimizer.h"

namespace ampipe {

struct TrainingProgress {
  int64_t iteration = 0;  // iterations completed
  uint64_t seed = 0;      // data-order seed
};

// With `groups` (a parallel run) expert tensors are gathered over the expert group, so the file
// holds all experts, and world rank 0 writes; collective over the world. Any layout can load it.
// A subword tokenizer travels with the checkpoint as DIR/tokenizer.model (written before the
// model file; the model's config names the tokenizer's identity, train/tokenizer.h).
void save_checkpoint(const std::string& dir, const GptMoe& model, const AdamW& optimizer,
                     const TrainingProgress& progress, const TrainingGroups* groups = nullptr,
                     const Tokenizer* tokenizer = nullptr);

// DIR/tokenizer.model.
std::string checkpoint_tokenizer_path(const std::string& dir);
// The tokenizer a checkpoint's model was trained with (config.tokenizer): byte-level, or the
// SentencePiece model saved beside it, or `override_model` when given; refuses a tokenizer whose
// identity differs from the one recorded (naming both), or a missing file.
std::unique_ptr<Tokenizer> checkpoint_tokenizer(const std::string& dir, const ModelConfig& config,
                                                const std::string& override_model = "");

// The model config stored in DIR/model.safetensors (validated), or in a Hugging Face DIR's config.json.
ModelConfig read_checkpoint_config(const std::string& dir);
// Copies DIR's weights into the model (each rank its own experts' slice); refuses a config that
// differs from the model's, missing or extra tensors, and shape mismatches, naming each.
void load_model_weights(const std::string& dir, GptMoe& model);
// False for a directory that holds weights only (a Hugging Face one): training starts from its
// weights with a fresh optimizer at iteration 0 instead of calling load_training_state.
bool has_training_state(const std::string& dir);
// Restores the optimizer state (sliced like the weights) and returns the progress to resume from.
TrainingProgress load_training_state(const std::string& dir, const GptMoe& model, AdamW& optimizer);

}  // namespace ampipe
