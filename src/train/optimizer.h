// AdamW over a model's parameters, with global-norm gradient clipping and the learning-rate
// schedule (linear warm-up, then cosine decay to min_lr).
#pragma once

#include <cstdint>
#include <vector>

#include "comm/communicator.h"
#include "model/parameters.h"

namespace ampipe {

struct LrSchedule {
  double lr = 1e-3;
  double min_lr = 1e-4;
  int64_t warmup_iters = 0;
  int64_t decay_iters = 1;  // iterations until min_lr is reached (usually --train-iters)
};
// Learning rate for 0-based `iteration`: lr * (it+1)/warmup during warm-up, then cosine from lr to
// min_lr over [warmup, decay_iters), then min_lr.
double learning_rate(const LrSchedule& schedule, int64_t iteration);

struct AdamWConfig {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
  double weight_decay = 0.1;
  double clip_grad = 1.0;  // max global L2 norm; 0 disables clipping
};

class AdamW {
 public:
  // expert_group (borrowed; nullptr = one rank): the ranks whose expert tensors together make the
  // whole model, so the clipping norm counts every expert once. The moments live on the device of
  // their parameters.
  AdamW(ParameterRegistry& params, const AdamWConfig& config, Communicator* expert_group = nullptr);

  // Clips gradients by the global norm over the whole model (collective over the expert group),
  // then updates every parameter. Returns the norm before clipping.
  double step(double lr);
  int64_t steps_taken() const { return step_; }

  // Optimizer state, by parameter name, for checkpoints: "<name>.exp_avg", "<name>.exp_avg_sq" (on
  // the parameters' device).
  std::vector<std::pair<std::string, Tensor>> state_tensors() const;
  // Restores state saved by state_tensors() (shapes checked; any device) and the step count.
  void load_state(const std::vector<std::pair<std::string, Tensor>>& tensors, int64_t steps);

 private:
  ParameterRegistry& params_;
  AdamWConfig config_;
  Communicator* expert_group_;
  std::vector<Tensor> exp_avg_, exp_avg_sq_;
  int64_t step_ = 0;
};

}  // namespace ampipe
