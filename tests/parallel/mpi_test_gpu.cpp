// Several ranks on one GPU (2 under mpirun), their all-to-all and gradient reductions staged through
// host memory over MPI (HostStagedCommunicator): for every schedule, k in {1, 2}, GPT and Mixtral,
// the expert-parallel step on the GPU (loss, logits, every averaged gradient) equals the same step on
// the CPU, which mpi_test_parallel checks against one rank holding every expert. Float32, dropless.
// Exits 77 (CTest: skipped) on every rank where no GPU can be used, printing the reason.
#include <gtest/gtest.h>

#include <cstdio>
#include <map>
#include <sstream>

#include "comm/host_staged_communicator.h"
#include "core/device.h"
#include "model/gpt.h"
#include "parallel/mpi_gtest_main.h"
#include "parallel/pipe_cases.h"
#include "pipeline/streamed_block.h"
#include "train/distributed.h"

namespace ampipe {
namespace {

std::unique_ptr<Communicator> g_world;

using namespace ::ampipe::testing;  // NOLINT: the shared pipeline cases (parallel/pipe_cases.h)

struct GpuCase {
  bool mixtral;
  int64_t top_k;
  int config;  // into pipe_configs(), or -1 for sequential
};

std::vector<GpuCase> gpu_cases() {
  std::vector<GpuCase> cases;
  for (bool mixtral : {false, true})
    for (int64_t k : {1, 2})
      for (int s = -1; s < static_cast<int>(pipe_configs().size()); ++s) cases.push_back({mixtral, k, s});
  return cases;
}

std::string gpu_case_name(const GpuCase& c) {
  return std::string(c.mixtral ? "Mixtral" : "Gpt") + "_Top" + std::to_string(c.top_k) + "_" +
         (c.config < 0 ? std::string("Sequential") : std::string(pipe_configs()[c.config].name));
}
std::string gpu_test_name(const ::testing::TestParamInfo<GpuCase>& info) { return gpu_case_name(info.param); }
void PrintTo(const GpuCase& c, std::ostream* out) { *out << gpu_case_name(c); }

// One step on `device` (its groups over `world`), the gradients averaged over the world.
RankRun run_step(const ModelConfig& config, Communicator& world, Device device, const GpuCase& c) {
  const TrainingGroups groups = make_training_groups(world, 0, config.num_experts);
  GptMoe model(config, groups.model_parallel(), device);
  model.initialize(11);
  set_pipe_parameters(model);
  std::unique_ptr<StreamedBlock> executor;
  if (c.config >= 0) {
    const PipeConfig& s = pipe_configs()[c.config];
    executor = std::make_unique<StreamedBlock>(schedule_of(s, config), s.order, nullptr, 0, PipelineScope::Model,
                                               device);
    model.set_block_executor(executor.get());
  }
  ForwardState state;
  RankRun r;
  forward_rank_batch(model, 7, groups.rank(), state, r);
  model.backward(state);
  average_gradients(model.params(), groups);
  collect_gradients(model, r);
  return r;
}

const RankRun& cpu_reference(const ModelConfig& config) {
  static std::map<std::string, RankRun> cache;
  std::ostringstream key;
  key << config.family << " k=" << config.top_k;
  auto it = cache.find(key.str());
  if (it == cache.end()) it = cache.emplace(key.str(), run_step(config, *g_world, Device::CPU, {false, 1, -1})).first;
  return it->second;
}

class GpuRanks : public ::testing::TestWithParam<GpuCase> {};

TEST_P(GpuRanks, TheStepOnTheGpuThroughHostStagingEqualsTheCpu) {
  const GpuCase c = GetParam();
  const ModelConfig config = pipe_model(c.mixtral, c.top_k, 0.0);
  const RankRun& want = cpu_reference(config);
  std::unique_ptr<Communicator> staged;
  Communicator& gpu_world = for_device(*g_world, Device::CUDA, staged);
  EXPECT_EQ(gpu_world.backend().find("+host-staged") != std::string::npos, g_world->size() > 1);
  const RankRun got = run_step(config, gpu_world, Device::CUDA, c);
  {
    SCOPED_TRACE("rank " + std::to_string(g_world->rank()) + ", " + gpu_case_name(c));
    expect_same_on_this_rank(got, want);
  }
  expect_no_rank_failed(*g_world);
}

INSTANTIATE_TEST_SUITE_P(Schedules, GpuRanks, ::testing::ValuesIn(gpu_cases()), gpu_test_name);

}  // namespace
}  // namespace ampipe

int main(int argc, char** argv) {
  const std::string reason = ampipe::cuda_unavailable_reason();
  if (!reason.empty()) {
    // Skipped on every rank alike (no rank reaches MPI, so none waits for another).
    std::printf("mpi_test_gpu: skipped: %s\n", reason.c_str());
    return 77;
  }
  ampipe::use_local_cuda_device();
  return ampipe::testing::run_mpi_tests(argc, argv, ampipe::g_world, "mpi_test_gpu");
}
