// MoE token dispatcher: moves each (token, choice) pair to its expert and the results back.
//
// Two halves, separately callable (pipelined schedules interleave them with other work):
//   dispatch: permute tokens into expert-major order (and, with expert parallelism, send them to
//             the rank holding the expert) -> expert input [P, d] grouped by local expert;
//   combine:  bring expert outputs back and sum them per token weighted by the gates.
// Each half has its backward mirror. This single-rank dispatcher holds all experts locally.
#pragma once

#include <vector>

#include "kernels/permute.h"
#include "model/config.h"

namespace ampipe {

struct DispatchContext {
  kernels::DispatchPlan plan;
  Tensor gate;           // [T, k]
  Tensor expert_output;  // [P, d] saved by combine for its backward
};

class Dispatcher {
 public:
  explicit Dispatcher(const ModelConfig& config);

  // Capacity per expert for a routing group of `tokens` tokens (-1: dropless); shared/MODEL.md.
  int64_t capacity(int64_t tokens) const;

  // m [T, d], expert_index [T, k] -> expert input [P, d]; rows of local expert e are
  // [offset_e, offset_e + counts[e]) with counts = local_expert_counts(ctx).
  Tensor dispatch(DispatchContext& ctx, const Tensor& m, const Tensor& expert_index, const Tensor& gate) const;
  const std::vector<int64_t>& local_expert_counts(const DispatchContext& ctx) const { return ctx.plan.expert_counts; }
  // expert_output [P, d] -> per-token weighted sum [T, d].
  Tensor combine(DispatchContext& ctx, const Tensor& expert_output) const;

  // Backward of combine: dout [T, d] -> d expert_output [P, d]; writes dgate [T, k].
  Tensor combine_backward(const DispatchContext& ctx, const Tensor& dout, Tensor dgate) const;
  // Backward of dispatch: d expert_input [P, d] -> dm [T, d].
  Tensor dispatch_backward(const DispatchContext& ctx, const Tensor& dexpert_input) const;

 private:
  int64_t experts_, top_k_;
  double capacity_factor_;
};

}  // namespace ampipe
