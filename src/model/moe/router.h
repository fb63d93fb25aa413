// MoE router: p = softmax(m @ Wr^T), top-k experts per token and their gates (docs/MODEL.md; the
// gate rule follows the family: ModelConfig::normalize_gates).
//
// Parameters: moe.router.weight [E, d] under `prefix`. Routing statistics for the load-balancing
// loss accumulate in RoutingStats across calls, so a block cut into chunks forms the same aux loss
// as the whole block: call forward() per chunk, then aux_loss() once.
#pragma once

#include <string>
#include <vector>

#include "model/config.h"
#include "model/parameters.h"

namespace ampipe {

struct RoutingStats {
  std::vector<double> routed_counts;  // [E] (token, choice) pairs per expert, before dropping
  std::vector<double> prob_sums;      // [E] sum over tokens of p[t, e]
  int64_t tokens = 0;                 // T
  void reset(int64_t num_experts);
};

struct RouterContext {
  Tensor m;             // [T, d] router input (LN2 output)
  Tensor probs;         // [T, E]
  Tensor expert_index;  // [T, k] int32
  Tensor gate;          // [T, k]
};

class Router {
 public:
  Router(const ModelConfig& config, ParameterRegistry& params, const std::string& prefix);
  // Sequence parallelism: each rank routes its own rows, so the weight's gradient is partial
  // (model/parameters.h, Parameter::sequence_parallel).
  void mark_sequence_parallel() { weight_->sequence_parallel = true; }

  // Routes m [T, d]: fills ctx and adds this call's tokens to stats.
  void forward(RouterContext& ctx, const Tensor& m, RoutingStats& stats) const;
  // aux = E * sum_e (count_e / (T k)) * (prob_sum_e / T), over everything accumulated in stats.
  double aux_loss(const RoutingStats& stats) const;
  // dgate [T, k]: gradient of the gates. aux_grad_scale: d(total loss) / d(aux) (the aux weight).
  // Accumulates router.weight's gradient and adds the gradient of m into dm [T, d].
  void backward(const RouterContext& ctx, const Tensor& dgate, const RoutingStats& stats, double aux_grad_scale,
                Tensor dm) const;

  int64_t num_experts() const { return experts_; }
  int64_t top_k() const { return top_k_; }

 private:
  int64_t experts_, top_k_;
  bool normalize_single_;  // the Mixtral family normalises the gate for k == 1 too (it is then 1)
  Parameter* weight_;
};

}  // namespace ampipe
