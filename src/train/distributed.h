// Expert, data and tensor parallelism for training (docs/ARCHITECTURE.md, "Parallel layout").
//
// The world of R ranks is laid out as train/layout.h says (Megatron-Core's folding): attention's
// T x DP and the experts' ETP x EP x EDP. With T = ETP = 1, every rank
// trains on its own micro-batch (data parallel), and expert parallelism of size EP cuts the world
// into R/EP expert groups of consecutive ranks {g*EP, ..., g*EP+EP-1}; rank i of a group holds
// experts [i*E/EP, (i+1)*E/EP). Ranks holding the same experts (same position in their expert
// groups) form an expert-data group of R/EP ranks.
// Gradients: dense ones are summed over the data-parallel group (the world when T = 1) and divided
// by its size DP; expert ones are summed over the expert-data group and scaled by ETP / R. Both give the
// gradient of the global mean loss (see GptMoe::backward): under tensor parallelism the T ranks of a
// group hold the same tokens, so a dense gradient is already the same on each (or, for a shard,
// its own part), while each expert has received all T copies of its tokens (T x the gradient,
// hence 1/R = 1/(T DP)). Under expert tensor parallelism each shard receives T / ETP copies (one
// from each rank of the tensor group that holds that shard), so expert gradients are scaled by
// ETP / R. Under sequence parallelism (layout.sizes().sequence_parallel with T > 1) the ranks of a
// tensor group route different rows, so each expert receives each token once and expert gradients
// are scaled by 1 / DP like dense ones; the gradients of the parameters marked sequence_parallel
// (norms, routers: each rank's from its own rows) are first summed over the tensor group.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "model/parallel.h"
#include "model/parameters.h"
#include "train/layout.h"

namespace ampipe {

// The communicators of one rank, one per axis of its layout. Each is a world.split(group, position)
// of ParallelLayout::place; an axis of size 1 other than the expert ones has none (nullptr).
struct TrainingGroups {
  Communicator* world = nullptr;                    // borrowed
  ParallelLayout layout;                            // what the groups below were made from
  std::unique_ptr<Communicator> expert_group;       // EP ranks that hold all experts together
  std::unique_ptr<Communicator> expert_data_group;  // ranks that hold the same experts (EDP)
  std::unique_ptr<Communicator> tensor_group;       // T ranks that split attention; null when T = 1
  std::unique_ptr<Communicator> data_group;         // DP ranks with the same attention shard; null when T = 1
  std::unique_ptr<Communicator> expert_tensor_group;  // ETP ranks that split each expert; null when ETP = 1
  int expert_parallel_size = 1;

  // The model's groups: routing statistics are summed over the data-parallel group (the ranks of a
  // tensor group see the same tokens, so each token counts once).
  ModelParallel model_parallel() const {
    ModelParallel p{expert_group.get(), data_parallel_group()};
    p.tensor_group = tensor_group.get();
    p.expert_tensor_group = expert_tensor_group.get();
    p.sequence_parallel = sequence_parallel();
    return p;
  }
  // --sequence-parallel with T > 1.
  bool sequence_parallel() const {
    return layout.sizes().sequence_parallel && layout.size(ParallelDim::Tensor) > 1;
  }
  // The group that sums dense gradients: DP (the world when T = 1).
  Communicator* data_parallel_group() const { return data_group ? data_group.get() : world; }
  // What a summed gradient is scaled by (above): 1 / DP for a dense parameter, ETP / R for an expert
  // parameter (1 / DP under sequence parallelism). The one rule of average_gradients and
  // GradientBuckets.
  float gradient_scale(bool expert) const {
    return expert && !sequence_parallel()
               ? static_cast<float>(layout.size(ParallelDim::ExpertTensor)) / static_cast<float>(size())
               : 1.0f / static_cast<float>(data_parallel_group()->size());
  }
  int rank() const { return world->rank(); }
  int size() const { return world->size(); }
};

// Splits the world (collective) with T = ETP = 1. requested_ep 0 = default
// (train/layout.h default_expert_parallel_size); otherwise it must divide both the world size and
// the expert count (refused with a message naming the values).
TrainingGroups make_training_groups(Communicator& world, int64_t requested_ep, int64_t num_experts);
// Splits the world into `layout`'s groups (collective; every rank must pass the same layout, made
// for world.size() ranks, else ampipe::Error naming both sizes).
TrainingGroups make_training_groups(Communicator& world, const ParallelLayout& layout);

// Sums the gradients of the parameters marked sequence_parallel over the tensor group, packed in one
// all-reduce (collective over it; nothing without sequence parallelism or such parameters).
void sum_sequence_parallel_gradients(const std::vector<Parameter*>& params, const TrainingGroups& groups);

// Averages gradients as described above (collective over the tensor (sequence parallelism),
// data-parallel and expert-data groups). No-op on one rank.
void average_gradients(ParameterRegistry& params, const TrainingGroups& groups);

// The same average in buckets, so that it can overlap the backward (--overlap-grad-reduce): one
// bucket per block (the parameters named "blocks.<l>."), one for the rest (embeddings, final norm,
// head). Under sequence parallelism a bucket's sequence_parallel gradients are first summed over
// the tensor group (sum_sequence_parallel_gradients). A bucket's dense gradients are packed into one buffer
// and all-reduced over the data-parallel group in one call (scaled by 1/DP), its expert gradients over the
// expert-data group in another (scaled by gradient_scale(true)); the result equals average_gradients' up to
// the summation order of the reduction itself. reduce_block(l) is collective over the data-parallel and
// expert-data groups: every rank must reduce the same buckets in the same order, which the streamed
// executor's task lists guarantee.
//
// The buckets also define how the model is divided among data-parallel ranks (the distributed
// optimizer's shards, and who writes what in a sharded checkpoint): each bucket's dense parameters,
// flattened in registry order, form one ShardSpace over the data-parallel group (the world at
// T = 1), its expert parameters another over the expert-data group. A space of `total` elements is
// padded to G x shard (G its group's size, shard = ceil(total / G)); rank g of the group owns
// elements [g shard, (g+1) shard). At T = ETP = 1 every element of the whole model is owned by
// exactly one rank of the world; under tensor parallelism a whole parameter has one owner per copy
// (T of them, ETP for the experts' output bias), a shard one.
//
// Sharded (--use-distributed-optimizer): reduce_* reduce-scatter instead. Each space's packed
// gradients are summed over its group and scaled by gradient_scale() into `shard_grad`, this rank's owned
// elements only; the parameters' own `grad` tensors are left unreduced. A space whose group is one
// rank (expert parameters when EP = the world) keeps its gradients in place, scaled. The optimizer
// (train/optimizer.h) updates the owned elements and all-gathers the parameters.
struct ShardSpace {
  // A run of one parameter's flattened elements [begin, begin + numel) that this rank owns, held at
  // [offset, offset + numel) of its shard.
  struct Segment {
    size_t param_index = 0;  // in the registry
    Parameter* param = nullptr;
    int64_t begin = 0, numel = 0, offset = 0;
  };
  std::vector<Parameter*> params;  // registry order
  std::vector<size_t> indices;     // their registry indices
  Communicator* group = nullptr;   // world (dense) or expert-data group (expert); null = one rank
  int64_t total = 0, shard = 0;    // elements
  std::vector<Segment> owned;
  Tensor buffer;      // packed gradients (group size x shard when sharded), allocated once
  Tensor shard_grad;  // sharded, with a group: this rank's reduced gradient, `shard` elements

  // Sharded, after an update with deferred gathers (--overlap-param-gather): this rank's updated
  // elements wait in shard_grad for gather_values().
  bool values_pending = false;

  // A segment's reduced gradient (sharded): its run of shard_grad, or of the parameter's own grad
  // when the space has no group.
  Tensor gradient(const Segment& seg) const;
  // Sharded, with a group: copies this rank's updated elements into shard_grad (the gradient is
  // spent); then gather_values() all-gathers every rank's into `buffer` and unpacks them into the
  // parameters (collective over the group). shard_grad's padding, and so the buffer's, stays zero
  // (the reduce-scatter summed zero padding there), which the next reduce-scatter relies on.
  void stage_values();
  void gather_values();
  int group_size() const { return group == nullptr ? 1 : group->size(); }
  int group_rank() const { return group == nullptr ? 0 : group->rank(); }
  // Packs the parameters' values (or gradients) into `out` (>= total elements; padding untouched).
  void pack(Tensor out, bool gradients) const;
  // The reverse: every parameter's value (or gradient) from `in`.
  void unpack(const Tensor& in, bool gradients) const;
};

class GradientBuckets {
 public:
  // Borrows both; the registry must outlive this and keep its parameters. Under tensor parallelism
  // each rank's dense spaces are its own (its shards, its copy of the whole parameters), sharded over
  // its data-parallel group.
  GradientBuckets(ParameterRegistry& params, const TrainingGroups& groups, int64_t num_layers,
                  bool sharded = false);
  void reduce_block(int64_t layer);
  void reduce_rest();
  void reduce_all();  // every block, then the rest

  // --overlap-param-gather (sharded only): the optimizer leaves its updated elements pending
  // instead of all-gathering them, and the next forward gathers each block's (gather_block, the
  // hook of GptMoe::forward) under the previous block's work. gather_block(l), gather_rest() and
  // gather_all() all-gather whatever of their buckets is pending (collective over the data-parallel
  // groups, in the same order on every rank; nothing when nothing is pending) and refresh those
  // parameters' bf16 copies. Anything else that reads the parameters (evaluation, a save, the end of
  // training) must call gather_all() first.
  void defer_param_gathers(bool defer) { defer_gathers_ = defer; }
  bool param_gathers_deferred() const { return defer_gathers_; }
  void gather_block(int64_t layer);
  void gather_rest();
  void gather_all();

  int64_t num_buckets() const { return static_cast<int64_t>(buckets_.size()); }
  bool sharded() const { return sharded_; }
  Communicator* world() const { return groups_.world; }
  // Every space (each bucket's dense, then expert; empty ones left out), in bucket order.
  std::vector<ShardSpace*> spaces();
  std::vector<const ShardSpace*> spaces() const;

 private:
  struct Bucket {
    ShardSpace dense, expert;
  };
  ParameterRegistry& params_;
  const TrainingGroups& groups_;
  bool sharded_;
  bool defer_gathers_ = false;
  std::vector<Bucket> buckets_;  // blocks 0..L-1, then the rest
  void reduce(Bucket& bucket);
  void gather(Bucket& bucket);
};

// Refuses (on every rank, with the differing lines named) a configuration that is not the same on
// every rank. `description`: one "key=value" per line. Collective over the world.
void check_same_configuration(Communicator& world, const std::string& description);

}  // namespace ampipe
