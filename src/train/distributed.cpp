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
