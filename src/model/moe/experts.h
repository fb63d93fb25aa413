// The experts of one MoE layer held by this rank: FFN_e(u) = gelu_tanh(u @ W1[e]^T + b1[e]) @ W2[e]^T
// + b2[e] for the E_local = E / EP experts [offset, offset + E_local), offset = ep_rank * E_local.
//
// Parameters under `prefix` (expert tensors, see Parameter::is_expert): moe.fc1.weight
// [E_local, f, d], moe.fc1.bias [E_local, f], moe.fc2.weight [E_local, d, f], moe.fc2.bias
// [E_local, d]; a checkpoint holds the gathered [E, ...] tensors. Input rows arrive grouped by expert (the dispatcher's output): rows of expert
// e are the counts[e] rows after those of experts 0..e-1. An expert with no rows costs nothing.
#pragma once

#include <string>
#include <vector>

#include "model/config.h"
#include "model/parallel.h"
#include "model/parameters.h"

namespace ampipe {

struct ExpertsContext {
  std::vector<int64_t> counts;  // rows per expert
  Tensor u;                     // [P, d] input
  Tensor h;                     // [P, f] pre-activation
  Tensor g;                     // [P, f] gelu(h)
};

class Experts {
 public:
  Experts(const ModelConfig& config, ParameterRegistry& params, const std::string& prefix,
          const ModelParallel& parallel = {});

  // u [P, d] grouped by expert per counts (sum(counts) == P) -> y [P, d].
  Tensor forward(ExpertsContext& ctx, const Tensor& u, const std::vector<int64_t>& counts) const;
  // dy [P, d] -> du [P, d]; accumulates the expert parameters' gradients.
  Tensor backward(ExpertsContext& ctx, const Tensor& dy) const;

  int64_t num_local_experts() const { return experts_; }

 private:
  int64_t experts_, hidden_, ffn_;
  Parameter *fc1_w_, *fc1_b_, *fc2_w_, *fc2_b_;

  // Views of expert e's slices: [f, d], [f], [d, f], [d].
  Tensor slice(const Tensor& t, int64_t e) const;
};

}  // namespace ampipe
