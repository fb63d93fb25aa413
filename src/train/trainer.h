// The single-process training loop: batches, forward/backward, AdamW, logging, evaluation,
// checkpoints, resume.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "model/config.h"
#include "train/optimizer.h"

namespace ampipe {

struct TrainOptions {
  ModelConfig model;
  int64_t micro_batch_size = 16;
  LrSchedule lr{3e-3, 3e-4, 200, 1};  // decay_iters is set from train_iters
  AdamWConfig adamw;
  int64_t train_iters = 3000;
  int64_t eval_interval = 500;  // 0: evaluate only at the end
  int64_t eval_iters = 20;      // validation batches per evaluation
  int64_t log_interval = 50;
  std::string save;             // checkpoint directory ("" = none)
  int64_t save_interval = 0;    // 0: save only at the end
  std::string load;             // resume from this checkpoint ("" = fresh start)
  int64_t exit_interval = 0;    // stop (after saving) when the iteration is a multiple; 0 = never
  uint64_t seed = 1234;
  std::string data_path = "data/kjv.txt";
  std::string metrics_file;     // JSON Lines, one object per logged iteration ("" = none)
};

struct TrainResult {
  int64_t iterations = 0;          // total completed (including resumed ones)
  double final_loss = 0;           // training loss of the last iteration
  double final_val_loss = 0;       // validation loss at the end
  double tokens_per_sec = 0;       // over this run
  double seconds = 0;              // wall time of this run
};

// Runs training; progress lines go to `log` (one string per line). Throws ampipe::Error on bad
// configuration or data.
TrainResult run_training(TrainOptions options, const std::function<void(const std::string&)>& log);

}  // namespace ampipe
