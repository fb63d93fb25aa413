// Checkpoints: DIR/model.safetensors (weights, names and config metadata as shared/MODEL.md) and
// DIR/optimizer.safetensors (AdamW moments, step, and the data position).
//
// Each file is written atomically (temp file + fsync + rename). The optimizer file is written first
// and the model file last, both stamped with the iteration; a load refuses a pair whose stamps
// differ (a crash between the two renames), so a resumed run never mixes two checkpoints.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "model/gpt.h"
#include "train/optimizer.h"

namespace ampipe {

struct TrainingProgress {
  int64_t iteration = 0;  // iterations completed
  uint64_t seed = 0;      // data-order seed
};

void save_checkpoint(const std::string& dir, const GptMoe& model, const AdamW& optimizer,
                     const TrainingProgress& progress);

// The model config stored in DIR/model.safetensors (validated).
ModelConfig read_checkpoint_config(const std::string& dir);
// Copies DIR's weights into the model; refuses a config that differs from the model's, missing or
// extra tensors, and shape mismatches, naming each.
void load_model_weights(const std::string& dir, GptMoe& model);
// Restores the optimizer state and returns the progress to resume from.
TrainingProgress load_training_state(const std::string& dir, AdamW& optimizer);

}  // namespace ampipe
