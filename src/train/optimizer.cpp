#include "train/optimizer.h"

#include <cmath>
#include <map>
#include <numbers>

#include "kernels/adamw.h"
#include "kernels/elementwise.h"

namespace ampipe {

double learning_rate(const LrSchedule& s, int64_t iteration) {
  if (iteration < s.warmup_iters) return s.lr * static_cast<double>(iteration + 1) / static_cast<double>(s.warmup_iters);
  if (iteration >= s.decay_iters) return s.min_lr;
  const double span = static_cast<double>(std::max<int64_t>(s.decay_iters - s.warmup_iters, 1));
  const double progress = static_cast<double>(iteration - s.warmup_iters) / span;
  return s.min_lr + 0.5 * (s.lr - s.min_lr) * (1.0 + std::cos(std::numbers::pi * progress));
}

AdamW::AdamW(ParameterRegistry& params, const AdamWConfig& config, Communicator* expert_group)
    : params_(params), config_(config), expert_group_(expert_group) {
  for (const Parameter& p : params_.all()) {
    exp_avg_.push_back(Tensor::zeros(p.value.shape(), DType::F32, p.value.device()));
    exp_avg_sq_.push_back(Tensor::zeros(p.value.shape(), DType::F32, p.value.device()));
  }
}

double AdamW::step(double lr) {
  double dense_sq = 0, expert_sq = 0;
  for (const Parameter& p : params_.all()) (p.is_expert ? expert_sq : dense_sq) += kernels::sum_of_squares(p.grad);
  if (expert_group_ != nullptr && expert_group_->size() > 1) expert_group_->all_reduce_sum(expert_sq);
  const double norm = std::sqrt(dense_sq + expert_sq);
  if (config_.clip_grad > 0 && norm > config_.clip_grad) {
    const float scale = static_cast<float>(config_.clip_grad / (norm + 1e-6));
    for (Parameter& p : params_.all()) kernels::scale_inplace(p.grad, scale);
  }
  ++step_;
  size_t i = 0;
  for (Parameter& p : params_.all()) {
    kernels::AdamWStep hp;
    hp.lr = static_cast<float>(lr);
    hp.beta1 = static_cast<float>(config_.beta1);
    hp.beta2 = static_cast<float>(config_.beta2);
    hp.eps = static_cast<float>(config_.eps);
    hp.weight_decay = p.weight_decay ? static_cast<float>(config_.weight_decay) : 0.0f;
    hp.step = step_;
    kernels::adamw_update(p.value, p.grad, exp_avg_[i], exp_avg_sq_[i], hp);
    ++i;
  }
  return norm;
}

std::vector<std::pair<std::string, Tensor>> AdamW::state_tensors() const {
  std::vector<std::pair<std::string, Tensor>> out;
  size_t i = 0;
  for (const Parameter& p : params_.all()) {
    out.emplace_back(p.name + ".exp_avg", exp_avg_[i]);
    out.emplace_back(p.name + ".exp_avg_sq", exp_avg_sq_[i]);
    ++i;
  }
  return out;
}

void AdamW::load_state(const std::vector<std::pair<std::string, Tensor>>& tensors, int64_t steps) {
  std::map<std::string, Tensor> by_name(tensors.begin(), tensors.end());
  size_t i = 0;
  for (const Parameter& p : params_.all()) {
    for (auto [suffix, dst] : {std::pair<const char*, Tensor*>{".exp_avg", &exp_avg_[i]},
                               std::pair<const char*, Tensor*>{".exp_avg_sq", &exp_avg_sq_[i]}}) {
      auto it = by_name.find(p.name + suffix);
      AMPIPE_CHECK(it != by_name.end()) << "optimizer state lacks '" << p.name << suffix << "'";
      AMPIPE_CHECK(it->second.shape() == p.value.shape())
          << "optimizer state '" << p.name << suffix << "' has shape " << shape_string(it->second.shape())
          << ", the parameter has " << shape_string(p.value.shape());
      dst->copy_from(it->second);
    }
    ++i;
  }
  AMPIPE_CHECK(steps >= 0) << "optimizer step count " << steps << " is negative";
  step_ = steps;
}

}  // namespace ampipe
