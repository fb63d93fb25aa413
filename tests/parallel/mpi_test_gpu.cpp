// Ranks on GPUs (2 or 4 under mpirun), their all-to-alls and gradient reductions moved by the backend
// that --distributed-backend names (default mpi here): mpi stages them through host memory over MPI
// (HostStagedCommunicator; several ranks may share one GPU), nccl moves them with NCCL, one rank per
// GPU (comm/nccl_communicator.h; under the GPU emulator, its emulated NCCL). For every schedule,
// k in {1, 2}, GPT and Mixtral, the expert-parallel step on the GPU (loss, logits, every averaged
// gradient) equals the same step on the CPU, which mpi_test_parallel checks against one rank holding
// every expert, with the gradient reduction overlapped with the backward for the pipelined ones
// (model scope). Float32, dropless. Also: which backend --distributed-backend's default picks, and
// the distributed optimizer on the GPU against the plain one.
// Exits 77 (CTest: skipped) on every rank where no GPU can be used, or with nccl where NCCL is not
// built or there are fewer GPUs than ranks, printing the reason.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <map>
#include <numeric>
#include <sstream>

#include "comm/device_communicator.h"
#include "comm/host_staged_communicator.h"
#include "comm/mpi_communicator.h"
#include "comm/nccl_communicator.h"
#include "core/device.h"
#include "model/gpt.h"
#include "parallel/mpi_gtest_main.h"
#include "test_util.h"
#include "parallel/pipe_cases.h"
#include "pipeline/streamed_block.h"
#include "train/distributed.h"
#include "train/optimizer.h"

namespace ampipe {
namespace {

std::unique_ptr<Communicator> g_world;
DistributedBackend g_backend = DistributedBackend::Mpi;  // --distributed-backend

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

// One step on `device` (its groups over `world`), the gradients averaged over the world: after the
// backward for sequential, overlapped with it (GradientBuckets on the comm stream, model scope) for
// the pipelined schedules.
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
  if (executor == nullptr) {
    model.backward(state);
    average_gradients(model.params(), groups);
  } else {
    GradientBuckets buckets(model.params(), groups, config.num_layers);
    int64_t reduced = 0;
    model.backward(state, 1.0, [&](int64_t l) {
      ++reduced;
      buckets.reduce_block(l);
    });
    buckets.reduce_rest();
    EXPECT_EQ(reduced, config.num_layers) << "each block's bucket is reduced once, during the backward";
  }
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

TEST_P(GpuRanks, TheStepOnTheGpuEqualsTheCpu) {
  const GpuCase c = GetParam();
  const ModelConfig config = pipe_model(c.mixtral, c.top_k, 0.0);
  const RankRun& want = cpu_reference(config);
  std::unique_ptr<Communicator> holder;
  Communicator& gpu_world = communicator_for_device(*g_world, Device::CUDA, g_backend, holder);
  if (g_world->size() > 1) {
    EXPECT_EQ(gpu_world.backend(), g_backend == DistributedBackend::Nccl ? "nccl" : "mpi+host-staged");
  }
  const RankRun got = run_step(config, gpu_world, Device::CUDA, c);
  {
    SCOPED_TRACE("rank " + std::to_string(g_world->rank()) + ", " + gpu_case_name(c));
    expect_same_on_this_rank(got, want);
  }
  expect_no_rank_failed(*g_world);
}

INSTANTIATE_TEST_SUITE_P(Schedules, GpuRanks, ::testing::ValuesIn(gpu_cases()), gpu_test_name);

// A bfloat16 all-to-all of GPU buffers through the chosen backend (NCCL or host staging).
TEST(DeviceCommunicator, BfloatAllToAllOfGpuBuffers) {
  std::unique_ptr<Communicator> holder;
  Communicator& comm = communicator_for_device(*g_world, Device::CUDA, g_backend, holder);
  const int n = comm.size(), r = comm.rank();
  Tensor send = Tensor::empty({2 * n}, DType::BF16);
  for (int p = 0; p < 2 * n; ++p) send.rows(p, p + 1).fill(static_cast<float>(r * 64 + p));
  Tensor recv = Tensor::zeros({2 * n}, DType::BF16, Device::CUDA);
  const std::vector<int64_t> two(static_cast<size_t>(n), 2);
  comm.all_to_all_v(send.to(Device::CUDA), two, recv, two);
  const std::vector<float> got = recv.to_vector();
  for (int p = 0; p < n; ++p) {
    EXPECT_EQ(got[2 * p], static_cast<float>(p * 64 + 2 * r)) << "from rank " << p;
    EXPECT_EQ(got[2 * p + 1], static_cast<float>(p * 64 + 2 * r + 1)) << "from rank " << p;
  }
  expect_no_rank_failed(*g_world);
}

// Every NCCL call on GPU buffers, on however many ranks run (one included: how a one-GPU machine
// runs NCCL at all), where NCCL is built and every rank has its own GPU: all_to_all_v with uneven
// counts (a zero and the rank's own block), all_reduce_sum, broadcast from the last rank, all_gather.
TEST(NcclCommunicator, EveryCallMovesGpuBuffers) {
  auto* mpi = dynamic_cast<MpiCommunicator*>(g_world.get());
  if (!nccl_unavailable_reason().empty() || mpi == nullptr) {
    GTEST_SKIP() << (mpi == nullptr ? std::string("not under mpirun") : nccl_unavailable_reason());
  }
  const std::string shared = shared_gpu_ranks(*g_world);
  if (!shared.empty()) GTEST_SKIP() << shared;
  const std::unique_ptr<Communicator> nccl = make_nccl_communicator(*mpi);
  const int n = nccl->size(), r = nccl->rank();
  // Rank r sends p + 1 floats (value 100 r + p) to rank p, none to the next rank up.
  std::vector<int64_t> send_counts(n), recv_counts(n);
  std::vector<float> send_values;
  for (int p = 0; p < n; ++p) {
    send_counts[p] = (n > 1 && p == (r + 1) % n) ? 0 : p + 1;
    for (int64_t i = 0; i < send_counts[p]; ++i) send_values.push_back(100.0f * r + p);
  }
  for (int p = 0; p < n; ++p) recv_counts[p] = (n > 1 && r == (p + 1) % n) ? 0 : r + 1;
  const int64_t recv_total = std::accumulate(recv_counts.begin(), recv_counts.end(), int64_t{0});
  Tensor recv = Tensor::zeros({recv_total + 1}, DType::F32, Device::CUDA);  // one past the counts: untouched
  recv.rows(recv_total, recv_total + 1).fill(-7.0f);
  nccl->all_to_all_v(Tensor::from({static_cast<int64_t>(send_values.size())}, send_values).to(Device::CUDA),
                     send_counts, recv, recv_counts);
  std::vector<float> want;
  for (int p = 0; p < n; ++p)
    for (int64_t i = 0; i < recv_counts[p]; ++i) want.push_back(100.0f * p + r);
  want.push_back(-7.0f);
  EXPECT_EQ(recv.to_vector(), want);
  Tensor sum = Tensor::from({3}, {1.0f * r, 2.0f, -1.0f}).to(Device::CUDA);
  nccl->all_reduce_sum(sum);
  EXPECT_EQ(sum.to_vector(), (std::vector<float>{n * (n - 1) / 2.0f, 2.0f * n, -1.0f * n}));
  Tensor b = Tensor::from({2}, {1.0f * r, 5.0f}).to(Device::CUDA);
  nccl->broadcast(b, n - 1);
  EXPECT_EQ(b.to_vector(), (std::vector<float>{n - 1.0f, 5.0f}));
  Tensor all = Tensor::zeros({2 * n}, DType::F32, Device::CUDA);
  nccl->all_gather(Tensor::from({2}, {1.0f * r, -1.0f * r}).to(Device::CUDA), all);
  const std::vector<float> gathered = all.to_vector();
  for (int p = 0; p < n; ++p) {
    EXPECT_EQ(gathered[2 * p], 1.0f * p);
    EXPECT_EQ(gathered[2 * p + 1], -1.0f * p);
  }
  // reduce_scatter_sum: block p of rank r holds (r, p); rank p receives the sum over r of its block.
  std::vector<float> blocks;
  for (int p = 0; p < n; ++p) {
    blocks.push_back(1.0f * r);
    blocks.push_back(10.0f * p);
  }
  Tensor mine = Tensor::zeros({2}, DType::F32, Device::CUDA);
  nccl->reduce_scatter_sum(Tensor::from({2 * n}, blocks).to(Device::CUDA), mine);
  EXPECT_EQ(mine.to_vector(), (std::vector<float>{n * (n - 1) / 2.0f, 10.0f * r * n}));
  expect_no_rank_failed(*g_world);
}

// The distributed optimizer on the GPU, through the chosen backend (its reduce-scatters and
// all-gathers of GPU buffers), its all-gathers deferred into the next forward (model scope, every
// reduction and gather on the comm stream): 3 steps give the same parameters, bit for bit, as the
// plain optimizer on the GPU.
TEST(DistributedOptimizerOnTheGpu, EqualsThePlainOptimizerBitForBit) {
  std::unique_ptr<Communicator> holder;
  Communicator& gpu_world = communicator_for_device(*g_world, Device::CUDA, g_backend, holder);
  const ModelConfig config = pipe_model(true, 2, 0.0);
  const TrainingGroups groups = make_training_groups(gpu_world, 1, config.num_experts);
  auto train = [&](bool distributed) {
    GptMoe model(config, groups.model_parallel(), Device::CUDA);
    model.initialize(11);
    set_pipe_parameters(model);
    const PipeConfig& s = pipe_configs()[3];
    const StreamedBlock executor(schedule_of(s, config), s.order, nullptr, 0, PipelineScope::Model, Device::CUDA);
    model.set_block_executor(&executor);
    GradientBuckets buckets(model.params(), groups, config.num_layers, distributed);
    buckets.defer_param_gathers(distributed);
    AdamW optimizer(model.params(), AdamWConfig{}, groups.expert_group.get(), &buckets);
    for (int step = 0; step < 3; ++step) {
      ForwardState state;
      RankRun r;
      buckets.gather_rest();
      forward_rank_batch(model, 7 + 31 * static_cast<uint64_t>(step), groups.rank(), state, r,
                         [&](int64_t l) { buckets.gather_block(l); });
      model.backward(state, 1.0, [&](int64_t l) { buckets.reduce_block(l); });
      buckets.reduce_rest();
      optimizer.step(1e-2);
    }
    buckets.gather_all();
    std::vector<std::vector<float>> values;
    for (const Parameter& p : model.params().all()) values.push_back(p.value.to_vector());
    return values;
  };
  const auto plain = train(false), sharded = train(true);
  int64_t differing = 0;
  for (size_t i = 0; i < plain.size(); ++i)
    for (size_t k = 0; k < plain[i].size(); ++k) differing += plain[i][k] != sharded[i][k];
  EXPECT_EQ(differing, 0) << "rank " << g_world->rank();
  expect_no_rank_failed(*g_world);
}

// --distributed-backend's default: NCCL where it is built and every rank has its own GPU, else host
// staging; nccl named where ranks share a GPU fails on every rank, naming them; nccl on the CPU fails.
TEST(DeviceCommunicator, TheDefaultPicksNcclOnlyWhereEveryRankHasItsOwnGpu) {
  if (g_world->size() == 1) GTEST_SKIP() << "one rank: no communicator is made";
  std::unique_ptr<Communicator> holder;
  Communicator& chosen = communicator_for_device(*g_world, Device::CUDA, DistributedBackend::Default, holder);
  const bool nccl = nccl_unavailable_reason().empty();
  const std::string shared = nccl ? shared_gpu_ranks(*g_world) : "";
  EXPECT_EQ(chosen.backend(), nccl && shared.empty() ? "nccl" : "mpi+host-staged") << shared;
  if (nccl && !shared.empty()) {
    std::unique_ptr<Communicator> other;
    const std::string e = testing::error_of(
        [&] { communicator_for_device(*g_world, Device::CUDA, DistributedBackend::Nccl, other); });
    EXPECT_NE(e.find("--distributed-backend nccl cannot be used: ranks "), std::string::npos) << e;
    EXPECT_NE(e.find(" both use GPU "), std::string::npos) << e;
  }
  std::unique_ptr<Communicator> cpu;
  const std::string e = testing::error_of(
      [&] { communicator_for_device(*g_world, Device::CPU, DistributedBackend::Nccl, cpu); });
  EXPECT_NE(e.find("needs --device cuda"), std::string::npos) << e;
  expect_no_rank_failed(*g_world);
}

}  // namespace
}  // namespace ampipe

// Why this run must be skipped ("" when it can run): no GPU; with nccl, no NCCL or fewer GPUs than
// ranks. The same answer on every rank (no rank reaches MPI, so none waits for another).
std::string skip_reason() {
  std::string reason = ampipe::cuda_unavailable_reason();
  if (!reason.empty() || ampipe::g_backend != ampipe::DistributedBackend::Nccl) return reason;
  reason = ampipe::nccl_unavailable_reason();
  const char* ranks = std::getenv("OMPI_COMM_WORLD_SIZE");
  const int n = ranks != nullptr ? std::atoi(ranks) : 1;
  if (reason.empty() && ampipe::cuda_device_count() < n) {
    reason = "--distributed-backend nccl takes one GPU per rank: " + std::to_string(n) + " ranks, " +
             std::to_string(ampipe::cuda_device_count()) + " GPU(s)";
  }
  return reason;
}

int main(int argc, char** argv) {
  // --distributed-backend=nccl|mpi (ours; the rest goes to GoogleTest).
  int kept = 1;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.rfind("--distributed-backend=", 0) == 0) {
      ampipe::g_backend = ampipe::parse_distributed_backend(arg.substr(22));
    } else {
      argv[kept++] = argv[i];
    }
  }
  argc = kept;
  const std::string reason = skip_reason();
  if (!reason.empty()) {
    std::printf("mpi_test_gpu: skipped: %s\n", reason.c_str());
    return 77;
  }
  ampipe::use_local_cuda_device();
  return ampipe::testing::run_mpi_tests(argc, argv, ampipe::g_world, "mpi_test_gpu");
}
