#include "model/moe/moe_layer.h"

#include "kernels/elementwise.h"

namespace ampipe {

MoeLayer::MoeLayer(const ModelConfig& config, ParameterRegistry& params, const std::string& prefix,
                   const ModelParallel& parallel)
    : norm_(config, params, prefix + "ln2"),
      router_(config, params, prefix),
      dispatcher_(config, parallel),
      experts_(config, params, prefix, parallel) {
  AMPIPE_CHECK(!parallel.sp() || parallel.etp_size() == 1)
      << "--sequence-parallel with --expert-tensor-parallel-size " << parallel.etp_size()
      << " is not supported yet (the experts would gather the tokens of their group); use "
         "--expert-tensor-parallel-size 1 with --sequence-parallel";
  if (!parallel.sp()) return;
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

void MoeLayer::run_experts(MoeContext& ctx) const {
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
  Tensor expert_output = experts_.forward_reduce(ctx.experts, std::move(ctx.expert_partial));
  ctx.expert_partial = Tensor();
  dispatcher_.begin_combine(ctx.dispatch, expert_output);
}

void MoeLayer::reduce_experts_backward(MoeContext& ctx) const {
  if (experts_.etp_size() == 1) return;
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
  Tensor dexpert_output = dispatcher_.finish_combine_backward(ctx.dispatch);
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
  run_experts(ctx);
  reduce_experts(ctx);
  exchange_combine(ctx);
  return finish_forward(ctx);
}

Tensor MoeLayer::backward(MoeContext& ctx, const Tensor& dy, const RoutingStats& stats,
                          double aux_grad_scale) const {
  begin_backward(ctx, dy);
  exchange_combine_backward(ctx);
  run_experts_backward(ctx);
  reduce_experts_backward(ctx);
  exchange_dispatch_backward(ctx);
  return finish_backward(ctx, stats, aux_grad_scale);
}

}  // namespace ampipe
