#include "model/moe/router.h"

#include "kernels/elementwise.h"
#include "kernels/router.h"
#include "model/linear.h"

namespace ampipe {

void RoutingStats::reset(int64_t num_experts) {
  routed_counts.assign(num_experts, 0.0);
  prob_sums.assign(num_experts, 0.0);
  tokens = 0;
}

Router::Router(const ModelConfig& config, ParameterRegistry& params, const std::string& prefix)
    : experts_(config.num_experts), top_k_(config.top_k), normalize_single_(config.mixtral()) {
  weight_ = &params.add(prefix + "moe.router.weight", {experts_, config.hidden_size}, true);
}

void Router::forward(RouterContext& ctx, const Tensor& m, RoutingStats& stats) const {
  const int64_t T = m.dim(0);
  if (stats.routed_counts.size() != static_cast<size_t>(experts_)) stats.reset(experts_);
  const Device device = m.device();
  ctx.m = m;
  Tensor logits = Tensor::empty({T, experts_}, DType::F32, device);
  linear_forward(m, weight_->value, Tensor(), logits);
  ctx.probs = Tensor::empty({T, experts_}, DType::F32, device);
  kernels::softmax_rows(logits, ctx.probs);
  ctx.expert_index = Tensor::empty({T, top_k_}, DType::I32, device);
  ctx.gate = Tensor::empty({T, top_k_}, DType::F32, device);
  kernels::router_topk(ctx.probs, static_cast<int>(top_k_), ctx.expert_index, ctx.gate, normalize_single_);

  // host round trip (GPU): probs [T, E] and expert_index [T, k] cross to the host, where the
  // routing statistics of the load-balancing loss are summed.
  const Tensor probs = ctx.probs.to(Device::CPU), expert_index = ctx.expert_index.to(Device::CPU);
  const float* p = probs.data<float>();
  const int32_t* idx = expert_index.data<int32_t>();
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t e = 0; e < experts_; ++e) stats.prob_sums[e] += p[t * experts_ + e];
    for (int64_t j = 0; j < top_k_; ++j) stats.routed_counts[idx[t * top_k_ + j]] += 1.0;
  }
  stats.tokens += T;
}

double Router::aux_loss(const RoutingStats& stats) const {
  if (stats.tokens == 0) return 0.0;
  const double T = static_cast<double>(stats.tokens);
  double sum = 0;
  for (int64_t e = 0; e < experts_; ++e)
    sum += (stats.routed_counts[e] / (T * top_k_)) * (stats.prob_sums[e] / T);
  return static_cast<double>(experts_) * sum;
}

void Router::backward(const RouterContext& ctx, const Tensor& dgate, const RoutingStats& stats,
                      double aux_grad_scale, Tensor dm) const {
  const int64_t T = ctx.m.dim(0);
  const Device device = ctx.m.device();
  Tensor dprobs = Tensor::empty({T, experts_}, DType::F32, device);
  kernels::router_topk_backward(ctx.probs, ctx.expert_index, ctx.gate, dgate, dprobs, normalize_single_);
  if (aux_grad_scale != 0.0 && stats.tokens > 0) {
    // d aux / d p[t, e] = E * count_e / (T k) / T: a constant per expert (counts are constants).
    const double Ttot = static_cast<double>(stats.tokens);
    Tensor add = Tensor::empty({experts_});
    float* a = add.data<float>();
    for (int64_t e = 0; e < experts_; ++e)
      a[e] = static_cast<float>(aux_grad_scale * experts_ * stats.routed_counts[e] / (Ttot * top_k_) / Ttot);
    // host round trip (GPU): the per-expert constants [E], formed on the host from the routing
    // statistics, cross to the device and are added to every row of dprobs.
    kernels::add_bias(dprobs, add.to(device));
  }
  Tensor dlogits = Tensor::empty({T, experts_}, DType::F32, device);
  kernels::softmax_rows_backward(ctx.probs, dprobs, dlogits);
  linear_backward(ctx.m, weight_->value, dlogits, dm, weight_->grad, Tensor(), /*accumulate_dx=*/true);
}

}  // namespace ampipe
