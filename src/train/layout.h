// The folded parallel layout (docs/ARCHITECTURE.md, "Parallel layout"): Megatron-Core's "MoE
// parallel folding" of one world of W ranks into two independent views of the same ranks.
//
//   attention  W = T x DP            rank = t + T * d
//   experts    W = ETP x EP x EDP    rank = e + ETP * (x + EP * y)
//
// t: position in the tensor-parallel (TP) group, d: in the data-parallel (DP) group; e: in the
// expert-tensor-parallel (ETP) group, x: in the expert-parallel (EP) group, y: in the expert-data
// (EDP) group. The first size varies fastest (Megatron-Core's rank order without pipeline and
// context parallelism), so each TP and ETP group is consecutive ranks, EP peers are ETP ranks apart
// and EDP peers ETP x EP apart. With T = ETP = 1 this is the layout train/distributed.h has always
// made: EP groups of consecutive ranks, EDP groups of the ranks holding the same experts.
//
// Which collective runs on which group: tensor-parallel collectives of attention on TP, of the
// experts on ETP; the MoE all-to-alls on EP; gradient reduction on DP (dense parameters) and EDP
// (expert parameters). This header only computes and checks the groups; train/distributed.h makes
// them communicators. Pure functions and values: no communication, safe from any thread.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"

namespace ampipe {

// The sizes a command line asks for (Megatron-LM's flags).
struct ParallelSizes {
  int64_t tensor = 1;              // T, --tensor-model-parallel-size
  bool sequence_parallel = false;  // --sequence-parallel (counts only with T > 1)
  int64_t expert_tensor = 1;       // ETP, --expert-tensor-parallel-size
  int64_t expert = 1;              // EP, --expert-model-parallel-size; 0 = make_layout's default
};

// One axis of the layout.
enum class ParallelDim { Tensor, Data, ExpertTensor, Expert, ExpertData };
// "tp", "dp", "etp", "ep", "edp".
const char* parallel_dim_name(ParallelDim dim);

class ParallelLayout {
 public:
  ParallelLayout() = default;  // one rank, every size 1
  // Throws ampipe::Error naming the flags and numbers when a size is below 1, when T does not
  // divide W, or when ETP x EP does not divide W. sizes.expert must be given (>= 1) here.
  ParallelLayout(int64_t world_size, const ParallelSizes& sizes);

  int64_t world_size() const { return world_size_; }
  const ParallelSizes& sizes() const { return sizes_; }
  // The size of each group along `dim` (T, DP = W / T, ETP, EP, EDP = W / (ETP x EP)).
  int64_t size(ParallelDim dim) const;
  // Groups along `dim`: W / size(dim) of them.
  int64_t group_count(ParallelDim dim) const { return world_size_ / size(dim); }

  // Where `rank` (in [0, W)) sits along `dim`: which group (in [0, group_count), the colour of
  // Communicator::split) and its position in that group (in [0, size), the key).
  struct Place {
    int64_t group = 0, index = 0;
  };
  Place place(int64_t rank, ParallelDim dim) const;
  // The world ranks of every group along `dim`, groups in colour order, each in position order.
  std::vector<std::vector<int64_t>> groups(ParallelDim dim) const;

  // The layout in a few lines, for the start-up log: the sizes, then one line per axis listing its
  // groups ("tp groups: [0 1] [2 3]"), or "each rank alone" for an axis of size 1.
  std::string describe() const;

 private:
  int64_t world_size_ = 1;
  ParallelSizes sizes_;
};

// The default EP when --expert-model-parallel-size is left out: the largest divisor of the
// ranks left after ETP (W / ETP) that also divides the expert count.
int64_t default_expert_parallel_size(int64_t world_size, int64_t num_experts, int64_t expert_tensor = 1);

// The sizes against the model, before any work (throws ampipe::Error naming the flags and numbers):
// the planner's own checks (plan/cost_model.h check_tensor_parallel_sizes: T divides the heads and
// the query groups, ETP the FFN width and, without sequence parallelism, T), and EP dividing the
// experts.
void check_layout_fits_model(const ParallelLayout& layout, const ModelConfig& config);

// The layout of `world_size` ranks for `sizes` (sizes.expert 0: the default above), checked against
// the world and then the model. Throws ampipe::Error as the two checks above.
ParallelLayout make_layout(int64_t world_size, ParallelSizes sizes, const ModelConfig& config);

// Refuses what a command cannot run yet (ampipe::Error naming the flag and its value, saying that
// `ampipe plan` prices it): T > 1 and ETP > 1 unless `runs_tensor_parallel` (the model's tensor,
// sequence and expert tensor parallelism; the layout's checks then hold ETP to dividing T without
// sequence parallelism).
// Every model-running command calls it before any work. --sequence-parallel at T = 1 passes
// (Megatron-LM ignores it there too).
void require_runnable_sizes(const ParallelSizes& sizes, bool runs_tensor_parallel = false);
// The one-line note a command prints when --sequence-parallel is given at T = 1 ("" otherwise).
std::string ignored_sequence_parallel_note(const ParallelSizes& sizes);

}  // namespace ampipe
