// AdamW over a model's parameters, with global-norm gradient clipping and the learning-rate
// schedule (linear warm-up, then cosine decay to min_lr).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "kernels/adamw.h"
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

class GradientBuckets;

// One run of a parameter's moment that this rank holds: the flattened elements [begin, begin +
// numel) of parameter `param_index`, viewed in place (1-D, on the parameters' device).
struct MomentRange {
  size_t param_index = 0;
  int64_t begin = 0, numel = 0;
  Tensor exp_avg, exp_avg_sq;
};

class AdamW {
 public:
  // expert_group (borrowed; nullptr = one rank): the ranks whose expert tensors together make the
  // whole model, so the clipping norm counts every expert once. The moments live on the device of
  // their parameters.
  //
  // shards (borrowed; optional): the run's gradient buckets. When they are sharded
  // (--use-distributed-optimizer, Megatron's distributed optimizer), this rank keeps the moments of
  // the elements it owns only (1/G of them, G the data-parallel group of each space), takes its
  // gradients from the buckets' reduce-scattered shards, updates its own elements and all-gathers
  // the parameters. Unsharded buckets only name, for checkpoints, which elements this rank writes
  // (owned_ranges). Either way the result equals the plain optimizer's on the same gradients, up
  // to the order in which the gradient norm is summed.
  AdamW(ParameterRegistry& params, const AdamWConfig& config, Communicator* expert_group = nullptr,
        GradientBuckets* shards = nullptr);
  // Tensor parallelism (borrowed; nullptr or one rank = none): the group whose ranks hold different
  // shards of the parameters marked tensor_parallel, so the clipping norm sums their squares over
  // it (the whole parameters, the same on every rank of the group, count once; sharded, each owned
  // element of a whole parameter is weighted by 1 / T).
  void set_tensor_group(Communicator* tensor_group);
  // Expert tensor parallelism (likewise): the group whose ranks hold different shards of the expert
  // parameters marked tensor_parallel; their squares are summed over it, then with every expert's
  // over the expert group.
  void set_expert_tensor_group(Communicator* expert_tensor_group);

  // Clips gradients by the global norm over the whole model (collective over the expert group and
  // the tensor group, or the world when sharded), then updates every parameter (sharded: then all-gathers
  // them, collective). Returns the norm before clipping.
  double step(double lr);
  int64_t steps_taken() const { return step_; }
  bool sharded() const;

  // Optimizer state, by parameter name, for checkpoints: "<name>.exp_avg", "<name>.exp_avg_sq" (on
  // the parameters' device), whole. Sharded, the shards are all-gathered first: collective over the
  // data-parallel groups, and only for a gathered save or a test.
  std::vector<std::pair<std::string, Tensor>> state_tensors() const;
  // The moments this rank holds, as in-place views: whole parameters when unsharded, the owned
  // segments when sharded.
  std::vector<MomentRange> held_ranges() const;
  // The runs of every parameter that this rank writes into a sharded checkpoint (each element of
  // the model written by exactly one rank of the world): the buckets' owned segments when there
  // are buckets, else whole parameters. Views of the moments where this rank holds them.
  std::vector<MomentRange> owned_ranges() const;

  // Restores the held moments: read(name, begin, out) fills `out` (a 1-D float32 host tensor) with
  // elements [begin, begin + out.numel()) of the flattened local tensor `name` ("<param>.exp_avg"
  // or "<param>.exp_avg_sq"), and throws if it cannot. Then sets the step count.
  using StateReader = std::function<void(const std::string& name, int64_t begin, Tensor out)>;
  void load_state(const StateReader& read, int64_t steps);
  // Restores state saved by state_tensors() (shapes checked; any device) and the step count.
  void load_state(const std::vector<std::pair<std::string, Tensor>>& tensors, int64_t steps);

 private:
  ParameterRegistry& params_;
  AdamWConfig config_;
  Communicator* expert_group_;
  Communicator* tensor_group_ = nullptr;
  Communicator* expert_tensor_group_ = nullptr;
  GradientBuckets* shards_;
  std::vector<Tensor> exp_avg_, exp_avg_sq_;  // per parameter, or per shard space when sharded
  int64_t step_ = 0;

  double sharded_step(double lr);
  kernels::AdamWStep hyper(const Parameter& p, double lr) const;
};

}  // namespace ampipe
