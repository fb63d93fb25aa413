#include "model/moe/experts.h"

#include "kernels/elementwise.h"
#include "model/linear.h"

namespace ampipe {

Experts::Experts(const ModelConfig& config, ParameterRegistry& params, const std::string& prefix,
                 const ModelParallel& parallel)
    : experts_(config.num_experts / parallel.ep_size()), hidden_(config.hidden_size), ffn_(config.ffn_hidden_size) {
  AMPIPE_CHECK(config.num_experts % parallel.ep_size() == 0)
      << "--moe-num-experts " << config.num_experts << " is not divisible by the expert-parallel size "
      << parallel.ep_size();
  const int64_t offset = parallel.ep_rank() * experts_;
  fc1_w_ = &params.add_expert(prefix + "moe.fc1.weight", {experts_, ffn_, hidden_}, true, offset);
  fc1_b_ = &params.add_expert(prefix + "moe.fc1.bias", {experts_, ffn_}, false, offset);
  fc2_w_ = &params.add_expert(prefix + "moe.fc2.weight", {experts_, hidden_, ffn_}, true, offset);
  fc2_b_ = &params.add_expert(prefix + "moe.fc2.bias", {experts_, hidden_}, false, offset);
}

Tensor Experts::slice(const Tensor& t, int64_t e) const {
  Tensor s = t.rows(e, e + 1);
  Shape shape(t.shape().begin() + 1, t.shape().end());
  return s.reshape(shape);
}

Tensor Experts::forward(ExpertsContext& ctx, const Tensor& u, const std::vector<int64_t>& counts) const {
  AMPIPE_CHECK(static_cast<int64_t>(counts.size()) == experts_)
      << "experts got counts for " << counts.size() << " experts, hold " << experts_;
  const int64_t P = u.dim(0);
  ctx.counts = counts;
  ctx.u = u;
  ctx.h = Tensor::empty({P, ffn_});
  ctx.g = Tensor::empty({P, ffn_});
  Tensor y = Tensor::empty({P, hidden_});
  int64_t row = 0;
  for (int64_t e = 0; e < experts_; ++e) {
    const int64_t n = counts[e];
    if (n == 0) continue;
    AMPIPE_CHECK(row + n <= P) << "expert counts sum past the " << P << " input rows";
    Tensor h = ctx.h.rows(row, row + n);
    linear_forward(u.rows(row, row + n), slice(fc1_w_->value, e), slice(fc1_b_->value, e), h);
    Tensor g = ctx.g.rows(row, row + n);
    kernels::gelu_forward(h, g);
    linear_forward(g, slice(fc2_w_->value, e), slice(fc2_b_->value, e), y.rows(row, row + n));
    row += n;
  }
  AMPIPE_CHECK(row == P) << "expert counts sum to " << row << ", input has " << P << " rows";
  return y;
}

Tensor Experts::backward(ExpertsContext& ctx, const Tensor& dy) const {
  const int64_t P = dy.dim(0);
  Tensor du = Tensor::empty({P, hidden_});
  Tensor dg = Tensor::empty({P, ffn_});
  int64_t row = 0;
  for (int64_t e = 0; e < experts_; ++e) {
    const int64_t n = ctx.counts[e];
    if (n == 0) continue;
    Tensor dg_e = dg.rows(row, row + n);
    linear_backward(ctx.g.rows(row, row + n), slice(fc2_w_->value, e), dy.rows(row, row + n), dg_e,
                    slice(fc2_w_->grad, e), slice(fc2_b_->grad, e));
    kernels::gelu_backward(ctx.h.rows(row, row + n), dg_e, dg_e);
    linear_backward(ctx.u.rows(row, row + n), slice(fc1_w_->value, e), dg_e, du.rows(row, row + n),
                    slice(fc1_w_->grad, e), slice(fc1_b_->grad, e));
    row += n;
  }
  ctx = ExpertsContext{};
  return du;
}

}  // namespace ampipe
