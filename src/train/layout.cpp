#include "train/layout.h"

#include <sstream>

#include "core/error.h"
#include "plan/cost_model.h"

namespace ampipe {

const char* parallel_dim_name(ParallelDim dim) {
  switch (dim) {
    case ParallelDim::Tensor:
      return "tp";
    case ParallelDim::Data:
      return "dp";
    case ParallelDim::ExpertTensor:
      return "etp";
    case ParallelDim::Expert:
      return "ep";
    case ParallelDim::ExpertData:
      return "edp";
  }
  return "?";
}

ParallelLayout::ParallelLayout(int64_t world_size, const ParallelSizes& sizes)
    : world_size_(world_size), sizes_(sizes) {
  const int64_t W = world_size, T = sizes.tensor, ETP = sizes.expert_tensor, EP = sizes.expert;
  AMPIPE_CHECK(W >= 1) << "the world must hold at least 1 rank, got " << W;
  AMPIPE_CHECK(T >= 1) << "--tensor-model-parallel-size must be at least 1, got " << T;
  AMPIPE_CHECK(ETP >= 1) << "--expert-tensor-parallel-size must be at least 1, got " << ETP;
  AMPIPE_CHECK(EP >= 1) << "--expert-model-parallel-size must be at least 1, got " << EP;
  AMPIPE_CHECK(W % T == 0) << "--tensor-model-parallel-size " << T << " does not divide the " << W
                           << " ranks of the world (attention's layout is T x DP ranks)";
  std::ostringstream experts;  // the product, named by its flags
  if (ETP > 1) experts << "--expert-tensor-parallel-size " << ETP << " x ";
  experts << "--expert-model-parallel-size " << EP;
  if (ETP > 1) experts << " = " << ETP * EP;
  AMPIPE_CHECK(W % (ETP * EP) == 0) << experts.str() << " does not divide the " << W
                                    << " ranks of the world (the experts' layout is ETP x EP x EDP ranks)";
}

int64_t ParallelLayout::size(ParallelDim dim) const {
  switch (dim) {
    case ParallelDim::Tensor:
      return sizes_.tensor;
    case ParallelDim::Data:
      return world_size_ / sizes_.tensor;
    case ParallelDim::ExpertTensor:
      return sizes_.expert_tensor;
    case ParallelDim::Expert:
      return sizes_.expert;
    case ParallelDim::ExpertData:
      return world_size_ / (sizes_.expert_tensor * sizes_.expert);
  }
  return 1;
}

ParallelLayout::Place ParallelLayout::place(int64_t rank, ParallelDim dim) const {
  AMPIPE_CHECK(rank >= 0 && rank < world_size_)
      << "rank " << rank << " is outside the world of " << world_size_ << " ranks";
  const int64_t T = sizes_.tensor, ETP = sizes_.expert_tensor, EP = sizes_.expert;
  switch (dim) {
    case ParallelDim::Tensor:  // rank = t + T d: the group is d
      return {rank / T, rank % T};
    case ParallelDim::Data:  // the group is t
      return {rank % T, rank / T};
    case ParallelDim::ExpertTensor:  // rank = e + ETP (x + EP y): the group is (x, y)
      return {rank / ETP, rank % ETP};
    case ParallelDim::Expert:  // the group is (e, y)
      return {rank % ETP + ETP * (rank / (ETP * EP)), (rank / ETP) % EP};
    case ParallelDim::ExpertData:  // the group is (e, x)
      return {rank % (ETP * EP), rank / (ETP * EP)};
  }
  return {};
}

std::vector<std::vector<int64_t>> ParallelLayout::groups(ParallelDim dim) const {
  std::vector<std::vector<int64_t>> out(static_cast<size_t>(group_count(dim)),
                                        std::vector<int64_t>(static_cast<size_t>(size(dim))));
  for (int64_t rank = 0; rank < world_size_; ++rank) {
    const Place p = place(rank, dim);
    out[static_cast<size_t>(p.group)][static_cast<size_t>(p.index)] = rank;
  }
  return out;
}

std::string ParallelLayout::describe() const {
  std::ostringstream s;
  s << "parallel layout of " << world_size_ << " rank(s): attention tensor " << sizes_.tensor << " x data "
    << size(ParallelDim::Data)
    << (sizes_.sequence_parallel && sizes_.tensor > 1 ? " (sequence parallel)" : "")
    << "; experts expert-tensor " << sizes_.expert_tensor << " x expert " << sizes_.expert
    << " x expert-data " << size(ParallelDim::ExpertData);
  for (ParallelDim dim : {ParallelDim::Tensor, ParallelDim::Data, ParallelDim::ExpertTensor,
                          ParallelDim::Expert, ParallelDim::ExpertData}) {
    s << "\n  " << parallel_dim_name(dim) << " groups:";
    if (size(dim) == 1) {
      s << " each rank alone";
      continue;
    }
    for (const std::vector<int64_t>& group : groups(dim)) {
      s << " [";
      for (size_t i = 0; i < group.size(); ++i) s << (i ? " " : "") << group[i];
      s << "]";
    }
  }
  return s.str();
}

int64_t default_expert_parallel_size(int64_t world_size, int64_t num_experts, int64_t expert_tensor) {
  const int64_t ranks =
      expert_tensor >= 1 && world_size % expert_tensor == 0 ? world_size / expert_tensor : 1;
  for (int64_t ep = ranks; ep >= 1; --ep)
    if (ranks % ep == 0 && num_experts % ep == 0) return ep;
  return 1;
}

void check_layout_fits_model(const ParallelLayout& layout, const ModelConfig& config) {
  const ParallelSizes& s = layout.sizes();
  check_tensor_parallel_sizes(config, s.tensor, s.sequence_parallel, s.expert_tensor);
  AMPIPE_CHECK(config.num_experts % s.expert == 0)
      << "--expert-model-parallel-size " << s.expert << " does not divide --moe-num-experts "
      << config.num_experts << "; every rank of an expert-parallel group holds experts / EP of them";
}

ParallelLayout make_layout(int64_t world_size, ParallelSizes sizes, const ModelConfig& config) {
  if (sizes.expert == 0)
    sizes.expert = default_expert_parallel_size(world_size, config.num_experts, sizes.expert_tensor);
  ParallelLayout layout(world_size, sizes);
  check_layout_fits_model(layout, config);
  return layout;
}

namespace {

// `flag` `value` (with `also`, the other flags that go with it) refused unless 1.
void refuse_unless_one(const char* flag, int64_t value, const std::string& also) {
  AMPIPE_CHECK(value >= 1) << flag << " must be at least 1, got " << value;
  AMPIPE_CHECK(value == 1)
      << flag << " " << value << also
      << ": this command does not run it yet (only 1, the default; `ampipe train`, `eval`, `sample` "
         "and `bench` run it); `ampipe plan "
      << flag << " " << value << also << "` prices it (docs/USAGE.md, \"Tensor parallelism\")";
}

}  // namespace

void require_runnable_sizes(const ParallelSizes& sizes, bool runs_tensor_parallel) {
  if (runs_tensor_parallel) {
    AMPIPE_CHECK(sizes.tensor >= 1) << "--tensor-model-parallel-size must be at least 1, got "
                                    << sizes.tensor;
    AMPIPE_CHECK(sizes.expert_tensor >= 1)
        << "--expert-tensor-parallel-size must be at least 1, got " << sizes.expert_tensor;

    return;
  }
  refuse_unless_one("--tensor-model-parallel-size", sizes.tensor,
                    sizes.sequence_parallel ? " --sequence-parallel" : "");
  refuse_unless_one("--expert-tensor-parallel-size", sizes.expert_tensor, "");
}

std::string ignored_sequence_parallel_note(const ParallelSizes& sizes) {
  if (!sizes.sequence_parallel || sizes.tensor > 1) return "";
  return "note: --sequence-parallel is ignored at --tensor-model-parallel-size 1 (as in Megatron-LM)";
}

}  // namespace ampipe
