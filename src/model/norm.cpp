#include "model/norm.h"

#include "kernels/layernorm.h"

namespace ampipe {

Norm::Norm(const ModelConfig& config, ParameterRegistry& params, const std::string& name)
    : rms_(config.rms_norm()), eps_(static_cast<float>(config.norm_epsilon)) {
  weight_ = &params.add(name + ".weight", {config.hidden_size}, false);
  if (!rms_) bias_ = &params.add(name + ".bias", {config.hidden_size}, false);
}

void Norm::forward(const Tensor& x, Tensor y, NormStats& stats) const {
  const int64_t T = x.dim(0);
  stats.rstd = Tensor::empty({T}, DType::F32, x.device());
  if (rms_) {
    stats.mean = Tensor();
    kernels::rmsnorm_forward(x, weight_->value, y, stats.rstd, eps_);
    return;
  }
  stats.mean = Tensor::empty({T}, DType::F32, x.device());
  kernels::layernorm_forward(x, weight_->value, bias_->value, y, stats.mean, stats.rstd, eps_);
}

void Norm::backward(const Tensor& dy, const Tensor& x, const NormStats& stats, Tensor dx) const {
  if (rms_) {
    kernels::rmsnorm_backward(dy, x, weight_->value, stats.rstd, dx, weight_->grad);
    return;
  }
  kernels::layernorm_backward(dy, x, weight_->value, stats.mean, stats.rstd, dx, weight_->grad, bias_->grad);
}

}  // namespace ampipe
