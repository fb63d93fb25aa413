// Tensor and expert tensor parallelism with the ranks as threads of one process
// (tests/thread_communicator.h), so that ThreadSanitizer sees the whole of it: every rank's two
// executor streams (the tensor-parallel all-reduces run as comm-stream tasks beside the next
// chunk's compute) and the collectives between the ranks. The multi-rank MPI tests
// (tests/parallel/mpi_test_tensor_parallel*.cpp) check the same functions against one rank over
// Open MPI, whose threads TSan cannot see; here the results are checked too, against the
// SequentialBlock / one-rank model on the same thread ranks.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "grad_check.h"
#include "model/block.h"
#include "model/gpt.h"
#include "pipeline/streamed_block.h"
#include "test_util.h"
#include "thread_communicator.h"

namespace ampipe {
namespace {

using ::ampipe::testing::expect_gradient_matches;
using ::ampipe::testing::GradientTolerance;
using ::ampipe::testing::random_tensor;
using ::ampipe::testing::run_thread_ranks;
using ::ampipe::testing::to_double;

// Chunked against whole: float32 summation order only (the chunks' GEMMs and all-reduces).
constexpr GradientTolerance kTolerance{1e-4, 4e-5, 2e-3, 0.9999, 2e-3};

ModelConfig config() {
  ModelConfig c;
  c.vocab_size = 64;
  c.max_seq_len = 12;
  c.hidden_size = 32;
  c.num_attention_heads = 4;
  c.num_layers = 2;
  c.num_experts = 4;
  c.ffn_hidden_size = 32;
  c.top_k = 2;
  return c;
}

// Two blocks at T = ETP = 2 on two thread ranks: AMPipe (model scope, 3 chunks, interleaved) and
// moe-pipe (block scope) on each rank's two streams equal SequentialBlock on the same ranks.
TEST(ThreadRanks, TensorParallelBlocksOnTwoStreamsEqualSequential) {
  run_thread_ranks(2, [](Communicator& world) {
    ModelParallel parallel;
    parallel.tensor_group = &world;
    parallel.expert_tensor_group = &world;
    const ModelConfig c = config();
    StandaloneBlock blocks(c, parallel, 2);
    blocks.initialize(3);
    const int64_t B = 2, N = c.max_seq_len;
    const Tensor x = random_tensor({B * N, c.hidden_size}, 4);  // the same on both ranks
    const Tensor dy = random_tensor({B * N, c.hidden_size}, 5, 0.1f);
    auto pass = [&](const BlockExecutor& executor) {
      blocks.params().zero_grad();
      std::vector<BlockContext> ctx(2);
      std::vector<RoutingStats> stats(2);
      for (RoutingStats& s : stats) s.reset(c.num_experts);
      std::vector<std::vector<double>> out;
      out.push_back(to_double(executor.forward_layers(blocks.blocks(), ctx, x, B, N, stats)));
      out.push_back(to_double(executor.backward_layers(blocks.blocks(), ctx, dy, stats, 0.01, {})));
      for (const Parameter& p : blocks.params().all()) out.push_back(to_double(p.grad));
      return out;
    };
    const std::vector<std::vector<double>> want = pass(SequentialBlock{});
    struct Run {
      ScheduleKind kind;
      PipelineScope scope;
      StageOrder order;
    };
    for (const Run& r : {Run{ScheduleKind::AmPipe, PipelineScope::Model, StageOrder::Interleaved},
                         Run{ScheduleKind::MoePipe, PipelineScope::Block, StageOrder::StageMajor}}) {
      BlockSchedule schedule;
      schedule.kind = r.kind;
      schedule.pipe_degree = 3;
      const StreamedBlock streamed(schedule, r.order, nullptr, world.rank(), r.scope);
      const std::vector<std::vector<double>> got = pass(streamed);
      ASSERT_EQ(got.size(), want.size());
      for (size_t i = 0; i < want.size(); ++i)
        expect_gradient_matches(got[i], want[i], kTolerance,
                                schedule.describe() + " output " + std::to_string(i) + " (thread rank " +
                                    std::to_string(world.rank()) + ")");
    }
  });
}

// The whole model at T = ETP = 2 on two thread ranks (vocabulary-parallel embedding and loss, the
// blocks under AMPipe on each rank's streams) against the model on one rank: the loss and the
// gradients of the parameters every rank holds whole. Then with sequence parallelism (each rank
// its strided half of the rows: the attention's gathers and reduce-scatters and the experts' gathers
// as comm-stream tasks), the partial gradients summed over the group as the trainer does.
TEST(ThreadRanks, TensorParallelModelUnderAmPipeEqualsOneRank) {
  const ModelConfig c = config();
  const int64_t B = 2, N = c.max_seq_len;
  std::vector<int32_t> ids(B * N), next(B * N);
  for (int64_t i = 0; i < B * N; ++i) {
    ids[i] = static_cast<int32_t>((i * 7 + 3) % c.vocab_size);
    next[i] = static_cast<int32_t>((i * 11 + 5) % c.vocab_size);
  }
  const Tensor tokens = Tensor::from_ints({B * N}, ids), targets = Tensor::from_ints({B * N}, next);
  GptMoe reference(c);
  reference.initialize(9);
  ForwardState r;
  const double want = reference.forward(r, tokens, targets, B).lm_loss;
  reference.backward(r);
  for (const bool sequence_parallel : {false, true})
    run_thread_ranks(2, [&](Communicator& world) {
      ModelParallel parallel;
      parallel.tensor_group = &world;
      parallel.expert_tensor_group = &world;
      parallel.sequence_parallel = sequence_parallel;
      GptMoe model(c, parallel);
      model.initialize(9);
      BlockSchedule schedule;
      schedule.kind = ScheduleKind::AmPipe;
      schedule.pipe_degree = 3;
      const StreamedBlock streamed(schedule, StageOrder::Interleaved, nullptr, world.rank(),
                                   PipelineScope::Model);
      model.set_block_executor(&streamed);
      ForwardState s;
      const double got = model.forward(s, tokens, targets, B).lm_loss;
      model.backward(s);
      const std::string where = std::string(sequence_parallel ? "sequence parallel, " : "") + "thread rank " +
                                std::to_string(world.rank());
      EXPECT_NEAR(got, want, 2e-6 * (1 + std::abs(want))) << where;
      for (Parameter& p : model.params().all()) {
        if (p.sequence_parallel) world.all_reduce_sum(p.grad);
        if (p.tensor_parallel) continue;  // shards: checked against one rank in the MPI tests
        expect_gradient_matches(to_double(p.grad), to_double(reference.params().get(p.name).grad), kTolerance,
                                p.name + " (" + where + ")");
      }
    });
}

}  // namespace
}  // namespace ampipe
