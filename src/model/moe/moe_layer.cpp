#include "model/moe/moe_layer.h"

#include "kernels/elementwise.h"

namespace ampipe {

MoeLayer::MoeLayer(const ModelConfig& config, ParameterRegistry& params, const std::string& prefix,
                   const ModelParallel& parallel)
    : norm_(config, params, prefix + "ln2"),
      router_(config, params, prefix),
      dispatcher_(config, parallel),
      experts_(config, params, prefix, parallel) {
  if (!parallel.sp()) return;
  if (parallel.etp_size() > 1) gather_group_ = parallel.expert_tensor_group;
  norm_.mark_sequence_parallel();
  router_.mark_sequence_parallel();
}

void MoeLayer::begin_forward(MoeContext& ctx, const Tensor& x, RoutingStats& stats) const {
  ctx.x = x;
  Tensor m = Tensor::empty(x.shape(), DType::F32, x.device());
  norm_.forward(x, m, ctx.norm);
  router_.forward(ctx.router, m, stats);
  dispatcher_.begin_dispatch(ctx.dispatch, m, ctx.router.expert_index, ctx.router.gate);
}

void MoeLayer::gather_experts(MoeContext& ctx) const {
  if (!gather_group_) return;
  const Tensor own = dispatcher_.finish_dispatch(ctx.dispatch);
  ctx.gather = plan_expert_gather(*gather_group_, dispatcher_.local_expert_counts(ctx.dispatch));
  ctx.gathered = gather_expert_rows(*gather_group_, ctx.gather, own);
}

void MoeLayer::run_experts(MoeContext& ctx) const {
  if (gather_group_) {  // the group's rows, gathered by gather_experts
    ctx.expert_partial = experts_.forward_local(ctx.experts, ctx.gathered, ctx.gather.expert_totals());
    ctx.gathered = Tensor();
    return;
  }
  Tensor expert_input = dispatcher_.finish_dispatch(ctx.dispatch);
  Tensor expert_output =
      experts_.forward_local(ctx.experts, expert_input, dispatcher_.local_expert_counts(ctx.dispatch));
  if (experts_.etp_size() > 1) {
    ctx.expert_partial = expert_output;  // reduce_experts sums it over the group
    return;
  }
  dispatcher_.begin_combine(ctx.dispatch, expert_output);
}

void MoeLayer::reduce_experts(MoeContext& ctx) const {
  if (experts_.etp_size() == 1) return;
  if (gather_group_) {  // this rank's rows of the group's sum, then their output bias
    Tensor own = reduce_scatter_expert_rows(*gather_group_, ctx.gather, ctx.expert_partial);
    ctx.expert_partial = Tensor();
    experts_.add_output_bias(own, dispatcher_.local_expert_counts(ctx.dispatch));
    dispatcher_.begin_combine(ctx.dispatch, own);
    return;
  }
  Tensor expert_output = experts_.forward_reduce(ctx.experts, std::move(ctx.expert_partial));
  ctx.expert_partial = Tensor();
  dispatcher_.begin_combine(ctx.dispatch, expert_output);
}

void MoeLayer::gather_experts_backward(MoeContext& ctx) const {
  if (!gather_group_) return;
  ctx.gathered =
      gather_expert_rows(*gather_group_, ctx.gather, dispatcher_.finish_combine_backward(ctx.dispatch));
}

void MoeLayer::reduce_experts_backward(MoeContext& ctx) const {
  if (experts_.etp_size() == 1) return;
  if (gather_group_) {
    Tensor own = reduce_scatter_expert_rows(*gather_group_, ctx.gather, ctx.expert_partial);
    ctx.expert_partial = Tensor();
    dispatcher_.begin_dispatch_backward(ctx.dispatch, own);
    return;
  }
  Tensor dexpert_input = experts_.backward_reduce(std::move(ctx.expert_partial));
  ctx.expert_partial = Tensor();
  dispatcher_.begin_dispatch_backward(ctx.dispatch, dexpert_input);
}

Tensor MoeLayer::finish_forward(MoeContext& ctx) const {
  Tensor y = dispatcher_.finish_combine(ctx.dispatch);
  kernels::add_inplace(y, ctx.x);
  return y;
}

void MoeLayer::begin_backward(MoeContext& ctx, const Tensor& dy) const {
  ctx.dy = dy;
  ctx.dgate = Tensor::empty(ctx.router.gate.shape(), DType::F32, dy.device());
  dispatcher_.begin_combine_backward(ctx.dispatch, dy, ctx.dgate);
}

void MoeLayer::run_experts_backward(MoeContext& ctx, bool delay_wgrad) const {
  Tensor dexpert_output;
  if (gather_group_) {
    dexpert_output = ctx.gathered;  // the group's output gradient, gathered by gather_experts_backward
    ctx.gathered = Tensor();
  } else {
    dexpert_output = dispatcher_.finish_combine_backward(ctx.dispatch);
  }
  Tensor dexpert_input =
      experts_.backward_local(ctx.experts, dexpert_output, delay_wgrad ? &ctx.wgrad : nullptr);
  if (experts_.etp_size() > 1) {
    ctx.expert_partial = dexpert_input;  // reduce_experts_backward sums it over the group
    return;
  }
  dispatcher_.begin_dispatch_backward(ctx.dispatch, dexpert_input);
}

Tensor MoeLayer::finish_backward(MoeContext& ctx, const RoutingStats& stats, double aux_grad_scale) const {
  AMPIPE_CHECK(ctx.wgrad.items.empty()) << "MoeLayer::finish_backward before run_experts_wgrad";
  Tensor dm = dispatcher_.finish_dispatch_backward(ctx.dispatch);
  router_.backward(ctx.router, ctx.dgate, stats, aux_grad_scale, dm);
  Tensor dx = Tensor::empty(ctx.dy.shape(), DType::F32, ctx.dy.device());
  norm_.backward(dm, ctx.x, ctx.norm, dx);
  kernels::add_inplace(dx, ctx.dy);
  ctx = MoeContext{};
  return dx;
}

Tensor MoeLayer::forward(MoeContext& ctx, const Tensor& x, RoutingStats& stats) const {
  begin_forward(ctx, x, stats);
  exchange_dispatch(ctx);
  gather_experts(ctx);
  run_experts(ctx);
  reduce_experts(ctx);
  exchange_combine(ctx);
  return finish_forward(ctx);
}

Tensor MoeLayer::backward(MoeContext& ctx, const Tensor& dy, const RoutingStats& stats,
                          double aux_grad_scale) const {
  begin_backward(ctx, dy);
  exchange_combine_backward(ctx);
  gather_experts_backward(ctx);
  run_experts_backward(ctx);
  reduce_experts_backward(ctx);
  exchange_dispatch_backward(ctx);
  return finish_backward(ctx, stats, aux_grad_scale);
}

}  // namespace ampipe
