#include "train/optimizer.h"

#include <cmath>
#include <map>
#include <numbers>
#include <utility>

#include "kernels/adamw.h"
#include "kernels/elementwise.h"
#include "train/distributed.h"

namespace ampipe {

double learning_rate(const LrSchedule& s, int64_t iteration) {
  if (iteration < s.warmup_iters) return s.lr * static_cast<double>(iteration + 1) / static_cast<double>(s.warmup_iters);
  if (iteration >= s.decay_iters) return s.min_lr;
  const double span = static_cast<double>(std::max<int64_t>(s.decay_iters - s.warmup_iters, 1));
  const double progress = static_cast<double>(iteration - s.warmup_iters) / span;
  return s.min_lr + 0.5 * (s.lr - s.min_lr) * (1.0 + std::cos(std::numbers::pi * progress));
}

AdamW::AdamW(ParameterRegistry& params, const AdamWConfig& config, Communicator* expert_group,
             GradientBuckets* shards)
    : params_(params), config_(config), expert_group_(expert_group), shards_(shards) {
  if (sharded()) {
    for (const ShardSpace* space : shards_->spaces()) {
      const Device device = space->params[0]->value.device();
      exp_avg_.push_back(Tensor::zeros({space->shard}, DType::F32, device));
      exp_avg_sq_.push_back(Tensor::zeros({space->shard}, DType::F32, device));
    }
    return;
  }
  for (const Parameter& p : params_.all()) {
    exp_avg_.push_back(Tensor::zeros(p.value.shape(), DType::F32, p.value.device()));
    exp_avg_sq_.push_back(Tensor::zeros(p.value.shape(), DType::F32, p.value.device()));
  }
}

bool AdamW::sharded() const { return shards_ != nullptr && shards_->sharded(); }

kernels::AdamWStep AdamW::hyper(const Parameter& p, double lr) const {
  kernels::AdamWStep hp;
  hp.lr = static_cast<float>(lr);
  hp.beta1 = static_cast<float>(config_.beta1);
  hp.beta2 = static_cast<float>(config_.beta2);
  hp.eps = static_cast<float>(config_.eps);
  hp.weight_decay = p.weight_decay ? static_cast<float>(config_.weight_decay) : 0.0f;
  hp.step = step_;
  return hp;
}

void AdamW::set_tensor_group(Communicator* tensor_group) {
  tensor_group_ = tensor_group != nullptr && tensor_group->size() > 1 ? tensor_group : nullptr;
}

void AdamW::set_expert_tensor_group(Communicator* expert_tensor_group) {
  expert_tensor_group_ =
      expert_tensor_group != nullptr && expert_tensor_group->size() > 1 ? expert_tensor_group : nullptr;
}

double AdamW::step(double lr) {
  if (sharded()) return sharded_step(lr);
  double dense_sq = 0, expert_sq = 0, shard_sq = 0, expert_shard_sq = 0;
  for (const Parameter& p : params_.all()) {
    const double sq = kernels::sum_of_squares(p.grad);
    if (p.is_expert)
      (p.tensor_parallel ? expert_shard_sq : expert_sq) += sq;
    else
      (p.tensor_parallel ? shard_sq : dense_sq) += sq;
  }
  if (expert_tensor_group_ != nullptr) expert_tensor_group_->all_reduce_sum(expert_shard_sq);
  expert_sq += expert_shard_sq;
  if (expert_group_ != nullptr && expert_group_->size() > 1) expert_group_->all_reduce_sum(expert_sq);
  if (tensor_group_ != nullptr) tensor_group_->all_reduce_sum(shard_sq);
  const double norm = std::sqrt(dense_sq + shard_sq + expert_sq);
  if (config_.clip_grad > 0 && norm > config_.clip_grad) {
    const float scale = static_cast<float>(config_.clip_grad / (norm + 1e-6));
    for (Parameter& p : params_.all()) kernels::scale_inplace(p.grad, scale);
  }
  ++step_;
  size_t i = 0;
  for (Parameter& p : params_.all()) {
    kernels::adamw_update(p.value, p.grad, exp_avg_[i], exp_avg_sq_[i], hyper(p, lr));
    ++i;
  }
  return norm;
}

// Every element of a data-parallel space is owned by one rank of its group, so the owned shards'
// squares summed over the world count each gradient element once per copy of it in the world: a
// whole dense parameter has one copy per rank of a tensor group (T), a whole expert parameter (the
// output bias) one per rank of an expert-tensor group (ETP), a shard one. Each is weighted by
// 1 / copies, so every element of the model counts once.
double AdamW::sharded_step(double lr) {
  const std::vector<ShardSpace*> spaces = shards_->spaces();
  const double T = tensor_group_ ? tensor_group_->size() : 1,
               ETP = expert_tensor_group_ ? expert_tensor_group_->size() : 1;
  double sq = 0;
  for (const ShardSpace* space : spaces)
    for (const ShardSpace::Segment& seg : space->owned) {
      const double copies = seg.param->tensor_parallel ? 1.0 : seg.param->is_expert ? ETP : T;
      sq += kernels::sum_of_squares(space->gradient(seg)) / copies;
    }
  Communicator* world = shards_->world();
  if (world != nullptr && world->size() > 1) world->all_reduce_sum(sq);
  const double norm = std::sqrt(sq);
  if (config_.clip_grad > 0 && norm > config_.clip_grad) {
    const float scale = static_cast<float>(config_.clip_grad / (norm + 1e-6));
    for (const ShardSpace* space : spaces)
      for (const ShardSpace::Segment& seg : space->owned) kernels::scale_inplace(space->gradient(seg), scale);
  }
  ++step_;
  for (size_t k = 0; k < spaces.size(); ++k) {
    ShardSpace& space = *spaces[k];
    for (const ShardSpace::Segment& seg : space.owned) {
      const int64_t n = seg.param->value.numel(), end = seg.offset + seg.numel;
      kernels::adamw_update(seg.param->value.reshape({n}).rows(seg.begin, seg.begin + seg.numel),
                            space.gradient(seg), exp_avg_[k].rows(seg.offset, end),
                            exp_avg_sq_[k].rows(seg.offset, end), hyper(*seg.param, lr));
    }
    if (space.group == nullptr) continue;  // this rank owns the whole space: updated in place
    // Every rank's updated elements to every rank of the group: now, or under the next forward.
    space.stage_values();
    if (shards_->param_gathers_deferred()) {
      space.values_pending = true;
    } else {
      space.gather_values();
    }
  }
  return norm;
}

std::vector<std::pair<std::string, Tensor>> AdamW::state_tensors() const {
  std::vector<std::pair<std::string, Tensor>> out;
  if (!sharded()) {
    size_t i = 0;
    for (const Parameter& p : params_.all()) {
      out.emplace_back(p.name + ".exp_avg", exp_avg_[i]);
      out.emplace_back(p.name + ".exp_avg_sq", exp_avg_sq_[i]);
      ++i;
    }
    return out;
  }
  // Gather each space's shards, then cut the parameters out of the packed whole.
  std::vector<Tensor> avg(params_.all().size()), avg_sq(params_.all().size());
  const std::vector<const ShardSpace*> spaces = std::as_const(*shards_).spaces();
  for (size_t k = 0; k < spaces.size(); ++k) {
    const ShardSpace& space = *spaces[k];
    const Device device = space.params[0]->value.device();
    for (auto [shard, dst] : {std::pair{&exp_avg_[k], &avg}, std::pair{&exp_avg_sq_[k], &avg_sq}}) {
      Tensor whole = *shard;
      if (space.group != nullptr) {
        whole = Tensor::empty({space.group_size() * space.shard}, DType::F32, device);
        space.group->all_gather(*shard, whole);
      }
      int64_t offset = 0;
      for (size_t j = 0; j < space.params.size(); ++j) {
        const Tensor& value = space.params[j]->value;
        (*dst)[space.indices[j]] = whole.rows(offset, offset + value.numel()).clone().reshape(value.shape());
        offset += value.numel();
      }
    }
  }
  size_t i = 0;
  for (const Parameter& p : params_.all()) {
    out.emplace_back(p.name + ".exp_avg", avg[i]);
    out.emplace_back(p.name + ".exp_avg_sq", avg_sq[i]);
    ++i;
  }
  return out;
}

std::vector<MomentRange> AdamW::held_ranges() const {
  std::vector<MomentRange> out;
  if (!sharded()) {
    size_t i = 0;
    for (const Parameter& p : params_.all()) {
      const int64_t n = p.value.numel();
      out.push_back({i, 0, n, exp_avg_[i].reshape({n}), exp_avg_sq_[i].reshape({n})});
      ++i;
    }
    return out;
  }
  const std::vector<const ShardSpace*> spaces = std::as_const(*shards_).spaces();
  for (size_t k = 0; k < spaces.size(); ++k)
    for (const ShardSpace::Segment& seg : spaces[k]->owned) {
      const int64_t end = seg.offset + seg.numel;
      out.push_back({seg.param_index, seg.begin, seg.numel, exp_avg_[k].rows(seg.offset, end),
                     exp_avg_sq_[k].rows(seg.offset, end)});
    }
  return out;
}

std::vector<MomentRange> AdamW::owned_ranges() const {
  if (shards_ == nullptr || sharded()) return held_ranges();
  std::vector<MomentRange> out;
  for (const ShardSpace* space : std::as_const(*shards_).spaces())
    for (const ShardSpace::Segment& seg : space->owned) {
      const int64_t n = seg.param->value.numel(), end = seg.begin + seg.numel;
      out.push_back({seg.param_index, seg.begin, seg.numel,
                     exp_avg_[seg.param_index].reshape({n}).rows(seg.begin, end),
                     exp_avg_sq_[seg.param_index].reshape({n}).rows(seg.begin, end)});
    }
  return out;
}

void AdamW::load_state(const StateReader& read, int64_t steps) {
  AMPIPE_CHECK(steps >= 0) << "optimizer step count " << steps << " is negative";
  const auto& params = params_.all();
  for (const MomentRange& r : held_ranges()) {
    const std::string& name = params[r.param_index].name;
    for (auto [suffix, dst] : {std::pair<const char*, const Tensor*>{".exp_avg", &r.exp_avg},
                               std::pair<const char*, const Tensor*>{".exp_avg_sq", &r.exp_avg_sq}}) {
      Tensor host = Tensor::empty({r.numel});
      read(name + suffix, r.begin, host);
      Tensor view = *dst;
      view.copy_from(host);
    }
  }
  step_ = steps;
}

void AdamW::load_state(const std::vector<std::pair<std::string, Tensor>>& tensors, int64_t steps) {
  std::map<std::string, Tensor> by_name(tensors.begin(), tensors.end());
  for (const Parameter& p : params_.all())
    for (const char* suffix : {".exp_avg", ".exp_avg_sq"}) {
      auto it = by_name.find(p.name + suffix);
      AMPIPE_CHECK(it != by_name.end()) << "optimizer state lacks '" << p.name << suffix << "'";
      AMPIPE_CHECK(it->second.shape() == p.value.shape())
          << "optimizer state '" << p.name << suffix << "' has shape " << shape_string(it->second.shape())
          << ", the parameter has " << shape_string(p.value.shape());
    }
  load_state(
      [&](const std::string& name, int64_t begin, Tensor out) {
        const Tensor& whole = by_name.at(name);
        const Tensor flat =
            (whole.is_contiguous() ? whole : whole.clone()).to(Device::CPU).reshape({whole.numel()});
        out.copy_from(flat.rows(begin, begin + out.numel()));
      },
      steps);
}

}  // namespace ampipe
