#include "train/distributed.h"

#include <sstream>
#include <vector>

#include "kernels/elementwise.h"

namespace ampipe {

int64_t default_expert_parallel_size(int64_t world_size, int64_t num_experts) {
  for (int64_t ep = world_size; ep >= 1; --ep)
    if (world_size % ep == 0 && num_experts % ep == 0) return ep;
  return 1;
}

TrainingGroups make_training_groups(Communicator& world, int64_t requested_ep, int64_t num_experts) {
  const int64_t R = world.size();
  const int64_t ep = requested_ep > 0 ? requested_ep : default_expert_parallel_size(R, num_experts);
  AMPIPE_CHECK(R % ep == 0) << "--expert-model-parallel-size " << ep << " does not divide the " << R
                            << " ranks; it must divide both the world size and --moe-num-experts " << num_experts;
  AMPIPE_CHECK(num_experts % ep == 0) << "--expert-model-parallel-size " << ep
                                      << " does not divide --moe-num-experts " << num_experts
                                      << "; it must divide both that and the world size " << R;
  TrainingGroups g;
  g.world = &world;
  g.expert_parallel_size = static_cast<int>(ep);
  const int rank = world.rank();
  g.expert_group = world.split(rank / static_cast<int>(ep), rank);
  g.expert_data_group = world.split(rank % static_cast<int>(ep), rank);
  return g;
}

void average_gradients(ParameterRegistry& params, const TrainingGroups& groups) {
  const int R = groups.size();
  if (R <= 1) return;
  const float scale = 1.0f / static_cast<float>(R);
  for (Parameter& p : params.all()) {
    Communicator* group = p.is_expert ? groups.expert_data_group.get() : groups.world;
    if (group->size() > 1) group->all_reduce_sum(p.grad);
    kernels::scale_inplace(p.grad, scale);
  }
}

GradientBuckets::GradientBuckets(ParameterRegistry& params, const TrainingGroups& groups, int64_t num_layers)
    : groups_(groups), buckets_(static_cast<size_t>(num_layers) + 1) {
  AMPIPE_CHECK(num_layers >= 1) << "gradient buckets need at least one block, got " << num_layers;
  for (Parameter& p : params.all()) {
    size_t b = buckets_.size() - 1;
    if (p.name.rfind("blocks.", 0) == 0) {
      const size_t dot = p.name.find('.', 7);
      const int64_t l = std::stoll(p.name.substr(7, dot - 7));
      AMPIPE_CHECK(l >= 0 && l < num_layers) << "parameter '" << p.name << "' names a block outside the "
                                              << num_layers << " blocks";
      b = static_cast<size_t>(l);
    }
    (p.is_expert ? buckets_[b].expert : buckets_[b].dense).push_back(&p);
  }
}

namespace {

int64_t total_elements(const std::vector<Parameter*>& params) {
  int64_t n = 0;
  for (const Parameter* p : params) n += p->grad.numel();
  return n;
}

// Packs the gradients into `buffer`, sums it over `group`, and writes grad = sum * scale back.
void reduce_packed(const std::vector<Parameter*>& params, Tensor& buffer, Communicator* group, float scale) {
  if (params.empty()) return;
  if (group == nullptr || group->size() <= 1) {
    for (Parameter* p : params) kernels::scale_inplace(p->grad, scale);
    return;
  }
  if (!buffer.defined()) buffer = Tensor::empty({total_elements(params)}, DType::F32, params[0]->grad.device());
  int64_t offset = 0;
  for (Parameter* p : params) {
    const int64_t n = p->grad.numel();
    buffer.rows(offset, offset + n).copy_from(p->grad.reshape({n}));
    offset += n;
  }
  group->all_reduce_sum(buffer);
  kernels::scale_inplace(buffer, scale);
  offset = 0;
  for (Parameter* p : params) {
    const int64_t n = p->grad.numel();
    p->grad.reshape({n}).copy_from(buffer.rows(offset, offset + n));
    offset += n;
  }
}

}  // namespace

void GradientBuckets::reduce(Bucket& bucket) {
  const int R = groups_.size();
  if (R <= 1) return;
  const float scale = 1.0f / static_cast<float>(R);
  reduce_packed(bucket.dense, bucket.dense_buffer, groups_.world, scale);
  reduce_packed(bucket.expert, bucket.expert_buffer, groups_.expert_data_group.get(), scale);
}

void GradientBuckets::reduce_block(int64_t layer) {
  AMPIPE_CHECK(layer >= 0 && layer + 1 < num_buckets()) << "no block " << layer << " to reduce";
  reduce(buckets_[static_cast<size_t>(layer)]);
}

void GradientBuckets::reduce_rest() { reduce(buckets_.back()); }

void GradientBuckets::reduce_all() {
  for (Bucket& b : buckets_) reduce(b);
}

void check_same_configuration(Communicator& world, const std::string& description) {
  if (world.size() <= 1) return;
  std::string reference = description;
  world.broadcast_bytes(reference, 0);
  int64_t mismatch = reference == description ? 0 : 1;
  std::string differences;
  if (mismatch) {
    std::istringstream mine(description), theirs(reference);
    std::string a, b;
    while (true) {
      const bool more_a = static_cast<bool>(std::getline(mine, a));
      const bool more_b = static_cast<bool>(std::getline(theirs, b));
      if (!more_a && !more_b) break;
      if (a != b) differences += (differences.empty() ? "" : "; ") + (more_a ? a : "(none)") + " vs rank 0's " + (more_b ? b : "(none)");
      a.clear();
      b.clear();
    }
  }
  int64_t any = mismatch;
  world.all_reduce_max(any);
  AMPIPE_CHECK(any == 0) << (mismatch ? "rank " + std::to_string(world.rank()) + " was started with a different configuration: " + differences
                                      : std::string("another rank was started with a different configuration than rank ") +
                                            std::to_string(world.rank()))
                         << " (every rank must get the same flags)";
}

}  // namespace ampipe
