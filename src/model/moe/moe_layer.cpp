#include "model/moe/moe_layer.h"

#include "kernels/elementwise.h"
#include "kernels/layernorm.h"

namespace ampipe {

static Parameter& add_ln(ParameterRegistry& params, const std::string& name, int64_t d) {
  return params.add(name, {d}, false);
}

MoeLayer::MoeLayer(const ModelConfig& config, ParameterRegistry& params, const std::string& prefix,
                   const ModelParallel& parallel)
    : ln_w_(&add_ln(params, prefix + "ln2.weight", config.hidden_size)),
      ln_b_(&add_ln(params, prefix + "ln2.bias", config.hidden_size)),
      router_(config, params, prefix),
      dispatcher_(config, parallel),
      experts_(config, params, prefix, parallel) {}

Tensor MoeLayer::forward(MoeContext& ctx, const Tensor& x, RoutingStats& stats) const {
  const int64_t T = x.dim(0);
  const int64_t d = x.dim(1);
  ctx.x = x;
  ctx.ln_mean = Tensor::empty({T});
  ctx.ln_rstd = Tensor::empty({T});
  Tensor m = Tensor::empty({T, d});
  kernels::layernorm_forward(x, ln_w_->value, ln_b_->value, m, ctx.ln_mean, ctx.ln_rstd);
  router_.forward(ctx.router, m, stats);
  Tensor expert_input = dispatcher_.dispatch(ctx.dispatch, m, ctx.router.expert_index, ctx.router.gate);
  Tensor expert_output =
      experts_.forward(ctx.experts, expert_input, dispatcher_.local_expert_counts(ctx.dispatch));
  Tensor y = dispatcher_.combine(ctx.dispatch, expert_output);
  kernels::add_inplace(y, x);
  return y;
}

Tensor MoeLayer::backward(MoeContext& ctx, const Tensor& dy, const RoutingStats& stats,
                          double aux_grad_scale) const {
  const int64_t T = dy.dim(0);
  Tensor dgate = Tensor::empty(ctx.router.gate.shape());
  Tensor dexpert_output = dispatcher_.combine_backward(ctx.dispatch, dy, dgate);
  Tensor dexpert_input = experts_.backward(ctx.experts, dexpert_output);
  Tensor dm = dispatcher_.dispatch_backward(ctx.dispatch, dexpert_input);
  router_.backward(ctx.router, dgate, stats, aux_grad_scale, dm);
  Tensor dx = Tensor::empty({T, dy.dim(1)});
  kernels::layernorm_backward(dm, ctx.x, ln_w_->value, ctx.ln_mean, ctx.ln_rstd, dx, ln_w_->grad, ln_b_->grad);
  kernels::add_inplace(dx, dy);
  ctx = MoeContext{};
  return dx;
}

}  // namespace ampipe
