// Expert tensor parallelism under sequence parallelism (ETP > 1 with --sequence-parallel): the ranks
// of an expert-tensor group route different rows, so each has received different rows for the
// same local experts. Before the experts' shards run, the group's rows are gathered, expert-major
// (every rank's rows of expert 0, rank by rank, then expert 1's, ...), so each shard sees every
// row of its group once; after them, each rank takes back the sum over the group of its own rows'
// partial outputs (or input gradients). Megatron-Core's MoE dispatcher does the same around its
// experts (an all-gather and a reduce-scatter over the expert-tensor group).
//
// The rows of a rank are grouped by expert (the dispatcher's output, model/moe/experts.h); their
// counts differ between ranks, so the collectives pad every rank's rows to the largest count and
// use the equal-size all_gather and reduce_scatter_sum. Float32 CPU rows.
#pragma once

#include <cstdint>
#include <vector>

#include "comm/communicator.h"
#include "core/tensor.h"

namespace ampipe {

struct ExpertGather {
  int ranks = 1, rank = 0;
  int64_t experts = 0;          // local experts
  std::vector<int64_t> counts;  // [ranks * experts]: rows of expert e from rank r at r * experts + e
  int64_t padded = 1;           // rows of each rank's padded block: its largest row count, at least 1
  // Rows per expert over the group (what the experts' shards run on), and this rank's own total.
  std::vector<int64_t> expert_totals() const;
  int64_t own_rows() const;
  int64_t total_rows() const;  // over the group
};

// Every rank's counts per local expert (collective over the group).
ExpertGather plan_expert_gather(Communicator& group, const std::vector<int64_t>& counts);
// own [own_rows, d] -> the group's rows [sum, d], expert-major (collective).
Tensor gather_expert_rows(Communicator& group, const ExpertGather& plan, const Tensor& own);
// whole [sum, d] expert-major partial rows -> this rank's rows of the sum over the group
// [own_rows, d] (collective).
Tensor reduce_scatter_expert_rows(Communicator& group, const ExpertGather& plan, const Tensor& whole);

}  // namespace ampipe
