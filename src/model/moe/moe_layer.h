// The MoE half of a transformer block: x + MoE(norm2(x)), built from Router, Dispatcher and Experts.
//
// Parameters under `prefix`: the norm ln2 (model/norm.h) plus the router's and the experts'. The aux loss
// is formed from statistics accumulated over every forward() since the last begin_step(), so a
// pipelined caller that routes a block in chunks gets the same loss as one call.
#pragma once

#include <string>

#include "model/moe/dispatcher.h"
#include "model/moe/expert_gather.h"
#include "model/moe/experts.h"
#include "model/moe/router.h"
#include "model/norm.h"

namespace ampipe {

struct MoeContext {
  Tensor x;                 // [T, d] input (residual stream)
  Tensor dy;                // [T, d] output gradient, between the stages of a staged backward
  Tensor dgate;             // [T, k]
  NormStats norm;           // norm2's statistics
  RouterContext router;
  DispatchContext dispatch;
  ExpertsContext experts;
  ExpertsWeightGrads wgrad;  // --delay-wgrad-compute: between run_experts_backward and run_experts_wgrad
  Tensor expert_partial;     // ETP > 1: the experts' partial output (input gradient) awaiting its reduce
  // ETP > 1 with sequence parallelism (model/moe/expert_gather.h): every rank's counts, and the
  // group's gathered rows (the experts' input, then their output gradient) awaiting the experts.
  ExpertGather gather;
  Tensor gathered;
};

class MoeLayer {
 public:
  MoeLayer(const ModelConfig& config, ParameterRegistry& params, const std::string& prefix,
           const ModelParallel& parallel = {});

  // Returns x + MoE(norm2(x)); adds routing statistics to `stats`.
  Tensor forward(MoeContext& ctx, const Tensor& x, RoutingStats& stats) const;
  // dy: gradient of the output. aux_grad_scale: d(total loss)/d(this layer's aux loss).
  Tensor backward(MoeContext& ctx, const Tensor& dy, const RoutingStats& stats, double aux_grad_scale) const;

  // The same forward and backward in stages, for schedules that run the all-to-alls on a
  // communication stream: begin (compute), exchange (communication only), experts (compute),
  // exchange, finish (compute). Run in this order they equal forward() / backward().
  void begin_forward(MoeContext& ctx, const Tensor& x, RoutingStats& stats) const;
  void exchange_dispatch(MoeContext& ctx) const { dispatcher_.exchange_dispatch(ctx.dispatch); }
  // Under expert tensor parallelism (ETP > 1, model/moe/experts.h) run_experts leaves the experts'
  // partial output in ctx and reduce_experts (the group's all-reduce, the output bias, the combine's
  // packing) follows it before exchange_combine; likewise run_experts_backward and
  // reduce_experts_backward before exchange_dispatch_backward. At ETP = 1 the reduces do nothing.
  // With sequence parallelism the ranks of an expert-tensor group hold different rows:
  // gather_experts (the group's rows, expert-major, model/moe/expert_gather.h) runs between
  // exchange_dispatch and run_experts, and reduce_experts reduce-scatters instead of all-reducing;
  // likewise gather_experts_backward between exchange_combine_backward and run_experts_backward.
  // Without it (or at ETP = 1) the gathers do nothing. Every collective here is over the
  // expert-tensor group and reads or writes this chunk's ctx only (a communication-stream task).
  void gather_experts(MoeContext& ctx) const;
  void run_experts(MoeContext& ctx) const;
  void reduce_experts(MoeContext& ctx) const;
  void gather_experts_backward(MoeContext& ctx) const;
  void reduce_experts_backward(MoeContext& ctx) const;
  void exchange_combine(MoeContext& ctx) const { dispatcher_.exchange_combine(ctx.dispatch); }
  Tensor finish_forward(MoeContext& ctx) const;
  void begin_backward(MoeContext& ctx, const Tensor& dy) const;
  void exchange_combine_backward(MoeContext& ctx) const { dispatcher_.exchange_combine_backward(ctx.dispatch); }
  // delay_wgrad (--delay-wgrad-compute): the experts' weight gradients wait in ctx.wgrad for
  // run_experts_wgrad, which must run before finish_backward (that releases ctx).
  void run_experts_backward(MoeContext& ctx, bool delay_wgrad = false) const;
  void run_experts_wgrad(MoeContext& ctx) const { experts_.weight_backward(ctx.wgrad); }
  void exchange_dispatch_backward(MoeContext& ctx) const { dispatcher_.exchange_dispatch_backward(ctx.dispatch); }
  Tensor finish_backward(MoeContext& ctx, const RoutingStats& stats, double aux_grad_scale) const;

  const Router& router() const { return router_; }
  const Dispatcher& dispatcher() const { return dispatcher_; }
  const Experts& experts() const { return experts_; }

 private:
  Norm norm_;
  Router router_;
  Dispatcher dispatcher_;
  Experts experts_;
  Communicator* gather_group_ = nullptr;  // ETP > 1 with sequence parallelism: the expert-tensor group
};

}  // namespace ampipe
