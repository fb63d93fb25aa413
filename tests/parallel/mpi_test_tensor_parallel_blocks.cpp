// Tensor-parallel blocks under the pipelined executors, on 2 and 4 ranks under mpirun: two blocks
// whose attention (and, with ETP = T, experts) is split over the world, run by AMPipe (block and
// model scope, both stage orders), moe-pipe and sequential on the streams, against SequentialBlock;
// and the same with sequence parallelism (each rank its strided rows) against the whole rows.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "grad_check.h"
#include "model/block.h"
#include "model/sequence_parallel.h"
#include "parallel/mpi_gtest_main.h"
#include "parallel/tensor_parallel_attention.h"
#include "pipeline/streamed_block.h"
#include "test_util.h"

namespace ampipe {
namespace {

std::unique_ptr<Communicator> g_world;

using ::ampipe::testing::attention_config;
using ::ampipe::testing::expect_gradient_matches;
using ::ampipe::testing::kAttentionTolerance;
using ::ampipe::testing::kBatch;
using ::ampipe::testing::kSeq;
using ::ampipe::testing::Named;
using ::ampipe::testing::random_tensor;
using ::ampipe::testing::to_double;

const SequentialBlock kSequential;

// Every pipelined schedule the executors run, each as a StreamedBlock on this rank: AMPipe in block
// scope and in model scope (both stage orders), moe-pipe, and sequential on the streams; `check`
// runs under a trace naming the case.
void for_each_pipelined_schedule(const std::string& what,
                                 const std::function<void(const BlockExecutor&)>& check) {
  struct Run {
    ScheduleKind kind;
    PipelineScope scope;
    StageOrder order;
  };
  for (const Run& r : {Run{ScheduleKind::AmPipe, PipelineScope::Block, StageOrder::Interleaved},
                       Run{ScheduleKind::AmPipe, PipelineScope::Model, StageOrder::StageMajor},
                       Run{ScheduleKind::AmPipe, PipelineScope::Model, StageOrder::Interleaved},
                       Run{ScheduleKind::MoePipe, PipelineScope::Block, StageOrder::StageMajor},
                       Run{ScheduleKind::Sequential, PipelineScope::Block, StageOrder::StageMajor}}) {
    BlockSchedule schedule;
    schedule.kind = r.kind;
    schedule.pipe_degree = r.kind == ScheduleKind::Sequential ? 1 : 3;
    SCOPED_TRACE(what + ", " + schedule.describe() + ", " + pipeline_scope_name(r.scope) + " scope, " +
                 stage_order_name(r.order));
    check(StreamedBlock(schedule, r.order, nullptr, g_world->rank(), r.scope));
  }
}

// One forward and backward pass over the two blocks: the output, the input gradient and every
// parameter gradient, by name. `between` (optional) sees the routing statistics between the passes.
Named block_pass(StandaloneBlock& blocks, const BlockExecutor& executor, const Tensor& x, const Tensor& dy,
                 int64_t seq, const std::function<void(std::vector<RoutingStats>&)>& between = {}) {
  blocks.params().zero_grad();
  std::vector<BlockContext> ctx(2);
  std::vector<RoutingStats> stats(2);
  for (RoutingStats& s : stats) s.reset(blocks.blocks()[0].moe.router().num_experts());
  Named out;
  out.emplace_back("y", executor.forward_layers(blocks.blocks(), ctx, x, kBatch, seq, stats));
  if (between) between(stats);
  out.emplace_back("dx", executor.backward_layers(blocks.blocks(), ctx, dy, stats, 0.01, {}));
  for (const Parameter& p : blocks.params().all()) out.emplace_back(p.name, p.grad.clone());
  return out;
}

// Every named tensor of `got` against `want`'s, within the attention tolerance.
void expect_all_match(const Named& got, const Named& want, const std::string& suffix) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i)
    expect_gradient_matches(to_double(got[i].second), to_double(want[i].second), kAttentionTolerance,
                            want[i].first + suffix);
}

// A pass over two tensor-parallel blocks (both families, and GPT with its experts split over the group
// too, B = 2 sequences) run by the pipelined executors, whose attention all-reduces are comm-stream
// tasks (TpAttnReduce after each attention chunk, TpAttnReduceBwd after each QKV backward; with ETP,
// TpExpertsReduce and TpExpertsReduceBwd around each MoE chunk's experts), against SequentialBlock:
// the output, the input gradient and every parameter gradient (this rank's shards), within the
// attention tolerance (the chunks' GEMMs sum in another order), for AMPipe and moe-pipe in block
// and model scope and both stage orders. The executors run the same collectives in one list order
// on every rank, so a mismatch would hang or fail on the first.
TEST(TensorParallelAttention, PipelinedSchedulesRunItLikeSequentialBlock) {
  for (int k = 0; k < 3; ++k) {
    const bool mixtral = k == 1, etp = k == 2;  // the third: GPT with the experts split too (ETP = T)
    const ModelConfig c = attention_config(mixtral, false);
    ModelParallel parallel{nullptr, nullptr, g_world.get()};
    if (etp) parallel.expert_tensor_group = g_world.get();
    StandaloneBlock blocks(c, parallel, 2);
    blocks.initialize(800);
    const Tensor x = random_tensor({kBatch * kSeq, c.hidden_size}, 801);
    const Tensor dy = random_tensor({kBatch * kSeq, c.hidden_size}, 802, 1.0f / std::sqrt(float{kSeq}));
    auto pass = [&](const BlockExecutor& executor) { return block_pass(blocks, executor, x, dy, kSeq); };
    const Named want = pass(SequentialBlock{});
    for_each_pipelined_schedule(
        mixtral ? "mixtral"
        : etp   ? "gpt with ETP = T"
                : "gpt",
        [&](const BlockExecutor& streamed) { expect_all_match(pass(streamed), want, ""); });
  }
}

// Sequence parallelism (model/sequence_parallel.h): the same two blocks with each rank holding its
// strided 1/T of the rows, under SequentialBlock and every pipelined schedule (the gathers and
// reduce-scatters as comm-stream tasks: TpAttnGather, TpAttnReduce, TpAttnGatherBwd,
// TpAttnReduceBwd), against the whole rows under SequentialBlock without it: this rank's rows of the
// output and input gradient, and every gradient once the partial ones are summed over the group as
// the trainer does (the norms' and the router's, marked sequence_parallel, and the experts', which
// each rank now feeds with its own tokens only). With the experts split over the group too (ETP = T)
// the experts gather the group's rows (TpExpertsGather, TpExpertsGatherBwd) and reduce-scatter.
TEST(SequenceParallel, BlocksOnEachRanksRowsEqualTheWholeRows) {
  const int T = g_world->size(), rank = g_world->rank();
  const int64_t local_seq = kSeq / T;
  for (int k = 0; k < 3; ++k) {
    const bool mixtral = k == 1, etp = k == 2;  // the third: GPT with the experts split too (ETP = T)
    const ModelConfig c = attention_config(mixtral, false);
    ModelParallel whole_rows{nullptr, nullptr, g_world.get()};
    if (etp) whole_rows.expert_tensor_group = g_world.get();
    ModelParallel split_rows = whole_rows;
    split_rows.sequence_parallel = true;
    StandaloneBlock reference(c, whole_rows, 2), blocks(c, split_rows, 2);
    reference.initialize(810);
    blocks.initialize(810);
    const Tensor x = random_tensor({kBatch * kSeq, c.hidden_size}, 811);
    const Tensor dy = random_tensor({kBatch * kSeq, c.hidden_size}, 812, 1.0f / std::sqrt(float{kSeq}));
    auto pass = [&](StandaloneBlock& b, const BlockExecutor& executor, const Tensor& in, const Tensor& grad,
                    int64_t seq) {
      if (&b != &blocks) return block_pass(b, executor, in, grad, seq);
      // The aux loss reads statistics over all tokens: the whole rows' there, the group's sum here.
      Named out = block_pass(b, executor, in, grad, seq, [](std::vector<RoutingStats>& stats) {
        for (RoutingStats& s : stats) {
          for (size_t e = 0; e < s.routed_counts.size(); ++e) {
            g_world->all_reduce_sum(s.routed_counts[e]);
            g_world->all_reduce_sum(s.prob_sums[e]);
          }
          g_world->all_reduce_sum(s.tokens);
        }
      });
      // The partial gradients summed over the group, as the trainer does.
      size_t i = 2;
      for (const Parameter& p : b.params().all()) {
        if (p.sequence_parallel || (p.is_expert && !etp)) g_world->all_reduce_sum(out[i].second);
        ++i;
      }
      return out;
    };
    Named want = pass(reference, SequentialBlock{}, x, dy, kSeq);
    want[0].second = sequence_slice(want[0].second, rank, T);  // this rank's rows of y and dx
    want[1].second = sequence_slice(want[1].second, rank, T);
    const Tensor local_x = sequence_slice(x, rank, T), local_dy = sequence_slice(dy, rank, T);
    int marked = 0;
    for (const Parameter& p : blocks.params().all()) marked += p.sequence_parallel ? 1 : 0;
    EXPECT_EQ(marked, mixtral ? 2 * 3 : 2 * 5)
        << "ln1, ln2 (weight and bias in GPT) and the router, per block";
    expect_all_match(pass(blocks, kSequential, local_x, local_dy, local_seq), want, " (SequentialBlock)");
    for_each_pipelined_schedule(mixtral ? "mixtral"
                                : etp   ? "gpt with ETP = T"
                                        : "gpt",
                                [&](const BlockExecutor& streamed) {
                                  expect_all_match(pass(blocks, streamed, local_x, local_dy, local_seq), want,
                                                   "");
                                });
  }
}

}  // namespace
}  // namespace ampipe

int main(int argc, char** argv) {
  return ampipe::testing::run_mpi_tests(argc, argv, ampipe::g_world, "mpi_test_tensor_parallel_blocks");
}
