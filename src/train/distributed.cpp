#include "train/distributed.h"

#include <algorithm>
#include <sstream>
#include <vector>

#include "kernels/elementwise.h"

namespace ampipe {

TrainingGroups make_training_groups(Communicator& world, int64_t requested_ep, int64_t num_experts) {
  const int64_t R = world.size();
  const int64_t ep = requested_ep > 0 ? requested_ep : default_expert_parallel_size(R, num_experts);
  AMPIPE_CHECK(R % ep == 0) << "--expert-model-parallel-size " << ep << " does not divide the " << R
                            << " ranks; it must divide both the world size and --moe-num-experts " << num_experts;
  AMPIPE_CHECK(num_experts % ep == 0) << "--expert-model-parallel-size " << ep
                                      << " does not divide --moe-num-experts " << num_experts
                                      << "; it must divide both that and the world size " << R;
  ParallelSizes sizes;
  sizes.expert = ep;
  return make_training_groups(world, ParallelLayout(R, sizes));
}

namespace {

// This rank's communicator along `dim` of `layout` (collective over the world).
std::unique_ptr<Communicator> split_along(Communicator& world, const ParallelLayout& layout,
                                          ParallelDim dim) {
  const ParallelLayout::Place p = layout.place(world.rank(), dim);
  return world.split(static_cast<int>(p.group), static_cast<int>(p.index));
}

}  // namespace

TrainingGroups make_training_groups(Communicator& world, const ParallelLayout& layout) {
  AMPIPE_CHECK(layout.world_size() == world.size())
      << "the parallel layout was made for " << layout.world_size() << " rank(s), but the world has "
      << world.size();
  TrainingGroups g;
  g.world = &world;
  g.layout = layout;
  g.expert_parallel_size = static_cast<int>(layout.size(ParallelDim::Expert));
  // The same splits, in the same order, on every rank (the sizes agree): the expert ones always
  // (as before tensor parallelism), the others only where their axis is larger than one rank.
  g.expert_group = split_along(world, layout, ParallelDim::Expert);
  g.expert_data_group = split_along(world, layout, ParallelDim::ExpertData);
  if (layout.size(ParallelDim::Tensor) > 1) {
    g.tensor_group = split_along(world, layout, ParallelDim::Tensor);
    g.data_group = split_along(world, layout, ParallelDim::Data);
  }
  if (layout.size(ParallelDim::ExpertTensor) > 1)
    g.expert_tensor_group = split_along(world, layout, ParallelDim::ExpertTensor);
  return g;
}

void sum_sequence_parallel_gradients(const std::vector<Parameter*>& params, const TrainingGroups& groups) {
  if (!groups.sequence_parallel()) return;
  ShardSpace marked;  // the marked gradients, packed as a space packs its own
  for (Parameter* p : params)
    if (p->sequence_parallel) {
      marked.params.push_back(p);
      marked.total += p->grad.numel();
    }
  if (marked.total == 0) return;
  Tensor packed = Tensor::empty({marked.total}, DType::F32, marked.params[0]->grad.device());
  marked.pack(packed, /*gradients=*/true);
  groups.tensor_group->all_reduce_sum(packed);
  marked.unpack(packed, /*gradients=*/true);
}

void average_gradients(ParameterRegistry& params, const TrainingGroups& groups) {
  const int R = groups.size();
  if (R <= 1) return;
  std::vector<Parameter*> all;
  for (Parameter& p : params.all()) all.push_back(&p);
  sum_sequence_parallel_gradients(all, groups);
  for (Parameter& p : params.all()) {
    Communicator* group = p.is_expert ? groups.expert_data_group.get() : groups.data_parallel_group();
    if (group->size() > 1) group->all_reduce_sum(p.grad);
    kernels::scale_inplace(p.grad, groups.gradient_scale(p.is_expert));
  }
}

namespace {

// Fills in a space's sizes and this rank's owned segments.
void lay_out(ShardSpace& space, Communicator* group) {
  space.group = group;
  space.total = 0;
  for (const Parameter* p : space.params) space.total += p->value.numel();
  const int64_t G = space.group_size();
  space.shard = (space.total + G - 1) / G;
  const int64_t first = space.group_rank() * space.shard, last = std::min(first + space.shard, space.total);
  int64_t at = 0;
  for (size_t k = 0; k < space.params.size(); ++k) {
    Parameter* p = space.params[k];
    const int64_t n = p->value.numel();
    const int64_t b = std::max(first, at), e = std::min(last, at + n);
    if (b < e) space.owned.push_back({space.indices[k], p, b - at, e - b, b - first});
    at += n;
  }
}

}  // namespace

void ShardSpace::pack(Tensor out, bool gradients) const {
  int64_t offset = 0;
  for (const Parameter* p : params) {
    const Tensor& src = gradients ? p->grad : p->value;
    const int64_t n = src.numel();
    out.rows(offset, offset + n).copy_from(src.reshape({n}));
    offset += n;
  }
}

Tensor ShardSpace::gradient(const Segment& seg) const {
  if (group == nullptr)
    return seg.param->grad.reshape({seg.param->grad.numel()}).rows(seg.begin, seg.begin + seg.numel);
  return shard_grad.rows(seg.offset, seg.offset + seg.numel);
}

void ShardSpace::stage_values() {
  for (const Segment& seg : owned) {
    const int64_t n = seg.param->value.numel();
    shard_grad.rows(seg.offset, seg.offset + seg.numel)
        .copy_from(seg.param->value.reshape({n}).rows(seg.begin, seg.begin + seg.numel));
  }
}

void ShardSpace::gather_values() {
  group->all_gather(shard_grad, buffer);
  unpack(buffer, /*gradients=*/false);
}

void ShardSpace::unpack(const Tensor& in, bool gradients) const {
  int64_t offset = 0;
  for (Parameter* p : params) {
    Tensor& dst = gradients ? p->grad : p->value;
    const int64_t n = dst.numel();
    dst.reshape({n}).copy_from(in.rows(offset, offset + n));
    offset += n;
  }
}

GradientBuckets::GradientBuckets(ParameterRegistry& params, const TrainingGroups& groups, int64_t num_layers,
                                 bool sharded)
    : params_(params), groups_(groups), sharded_(sharded), buckets_(static_cast<size_t>(num_layers) + 1) {
  AMPIPE_CHECK(num_layers >= 1) << "gradient buckets need at least one block, got " << num_layers;
  size_t index = 0;
  for (Parameter& p : params.all()) {
    size_t b = buckets_.size() - 1;
    if (p.name.rfind("blocks.", 0) == 0) {
      const size_t dot = p.name.find('.', 7);
      const int64_t l = std::stoll(p.name.substr(7, dot - 7));
      AMPIPE_CHECK(l >= 0 && l < num_layers) << "parameter '" << p.name << "' names a block outside the "
                                              << num_layers << " blocks";
      b = static_cast<size_t>(l);
    }
    ShardSpace& space = p.is_expert ? buckets_[b].expert : buckets_[b].dense;
    space.params.push_back(&p);
    space.indices.push_back(index++);
  }
  Communicator* dense = groups.world != nullptr && groups.data_parallel_group()->size() > 1
                            ? groups.data_parallel_group()
                            : nullptr;
  Communicator* expert_data = groups.expert_data_group && groups.expert_data_group->size() > 1
                                  ? groups.expert_data_group.get()
                                  : nullptr;
  for (Bucket& bucket : buckets_) {
    lay_out(bucket.dense, dense);
    lay_out(bucket.expert, expert_data);
  }
}

std::vector<ShardSpace*> GradientBuckets::spaces() {
  std::vector<ShardSpace*> out;
  for (Bucket& b : buckets_)
    for (ShardSpace* s : {&b.dense, &b.expert})
      if (!s->params.empty()) out.push_back(s);
  return out;
}

std::vector<const ShardSpace*> GradientBuckets::spaces() const {
  std::vector<const ShardSpace*> out;
  for (const Bucket& b : buckets_)
    for (const ShardSpace* s : {&b.dense, &b.expert})
      if (!s->params.empty()) out.push_back(s);
  return out;
}

namespace {

// Packs the gradients into the space's buffer, sums it over its group, and writes grad = sum * scale
// back.
void reduce_packed(ShardSpace& space, float scale) {
  if (space.params.empty()) return;
  if (space.group == nullptr) {
    for (Parameter* p : space.params) kernels::scale_inplace(p->grad, scale);
    return;
  }
  const Device device = space.params[0]->grad.device();
  if (!space.buffer.defined()) space.buffer = Tensor::empty({space.total}, DType::F32, device);
  space.pack(space.buffer, /*gradients=*/true);
  space.group->all_reduce_sum(space.buffer);
  kernels::scale_inplace(space.buffer, scale);
  space.unpack(space.buffer, /*gradients=*/true);
}

// The sharded reduction: this rank's owned elements of the sum, times scale, into shard_grad. A
// space without a group (this rank owns all of it) keeps its gradients where they are, scaled.
void reduce_scattered(ShardSpace& space, float scale) {
  if (space.params.empty()) return;
  if (space.group == nullptr) {
    if (scale != 1.0f)
      for (Parameter* p : space.params) kernels::scale_inplace(p->grad, scale);
    return;
  }
  const Device device = space.params[0]->grad.device();
  const int64_t G = space.group_size();
  if (!space.shard_grad.defined()) space.shard_grad = Tensor::zeros({space.shard}, DType::F32, device);
  if (!space.buffer.defined()) space.buffer = Tensor::zeros({G * space.shard}, DType::F32, device);
  space.pack(space.buffer, /*gradients=*/true);  // the padding stays zero
  space.group->reduce_scatter_sum(space.buffer, space.shard_grad);
  kernels::scale_inplace(space.shard_grad, scale);
}

}  // namespace

void GradientBuckets::reduce(Bucket& bucket) {
  const int R = groups_.world == nullptr ? 1 : groups_.size();
  if (groups_.world != nullptr) sum_sequence_parallel_gradients(bucket.dense.params, groups_);
  const float dense_scale = groups_.world == nullptr ? 1.0f : groups_.gradient_scale(false);
  const float expert_scale = groups_.world == nullptr ? 1.0f : groups_.gradient_scale(true);
  if (sharded_) {
    reduce_scattered(bucket.dense, dense_scale);
    reduce_scattered(bucket.expert, expert_scale);
    return;
  }
  if (R <= 1) return;
  reduce_packed(bucket.dense, dense_scale);
  reduce_packed(bucket.expert, expert_scale);
}

void GradientBuckets::reduce_block(int64_t layer) {
  AMPIPE_CHECK(layer >= 0 && layer + 1 < num_buckets()) << "no block " << layer << " to reduce";
  reduce(buckets_[static_cast<size_t>(layer)]);
}

void GradientBuckets::reduce_rest() { reduce(buckets_.back()); }

void GradientBuckets::reduce_all() {
  for (Bucket& b : buckets_) reduce(b);
}

void GradientBuckets::gather(Bucket& bucket) {
  for (ShardSpace* space : {&bucket.dense, &bucket.expert}) {
    if (!space->values_pending) continue;
    space->gather_values();
    space->values_pending = false;
    for (const Parameter* p : space->params) params_.refresh_compute(*p);
  }
}

void GradientBuckets::gather_block(int64_t layer) {
  AMPIPE_CHECK(layer >= 0 && layer + 1 < num_buckets()) << "no block " << layer << " to gather";
  gather(buckets_[static_cast<size_t>(layer)]);
}

void GradientBuckets::gather_rest() { gather(buckets_.back()); }

void GradientBuckets::gather_all() {
  for (Bucket& b : buckets_) gather(b);
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
