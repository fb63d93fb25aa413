// The two-stream simulator on hand-built task lists with known makespans, and predict_block /
// predict_pass on the real task lists of the schedules (one block, and passes over several blocks in
// both pipeline scopes, with and without gradient reduction).
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>

#include "core/error.h"
#include "core/trace.h"
#include "plan/simulator.h"

namespace ampipe {
namespace {

// Stage kinds only pick the stream here: Experts runs on compute, Dispatch on comm.
StageTask compute(std::vector<int> waits = {}) { return StageTask{Stage::Experts, 0, std::move(waits)}; }
StageTask comm(std::vector<int> waits = {}) { return StageTask{Stage::Dispatch, 0, std::move(waits)}; }

TEST(Simulator, SerialChain_MakespanIsTheSum) {
  // compute 1 -> comm 2 -> compute 3, each waiting for the one before.
  const Simulation s = simulate({compute(), comm({0}), compute({1})}, {1, 2, 3});
  EXPECT_DOUBLE_EQ(s.makespan, 6);
  EXPECT_DOUBLE_EQ(s.compute_busy, 4);
  EXPECT_DOUBLE_EQ(s.comm_busy, 2);
  EXPECT_EQ(s.start, (std::vector<double>{0, 1, 3}));
  EXPECT_EQ(s.end, (std::vector<double>{1, 3, 6}));
}

TEST(Simulator, IndependentStreams_OverlapPerfectly) {
  // compute 3 then 1; comm 2 with no edges: the streams run side by side.
  const Simulation s = simulate({compute(), comm(), compute()}, {3, 2, 1});
  EXPECT_DOUBLE_EQ(s.makespan, 4);
  EXPECT_DOUBLE_EQ(s.start[1], 0);
  EXPECT_DOUBLE_EQ(s.end[1], 2);
  EXPECT_DOUBLE_EQ(s.start[2], 3);  // in order on its stream
}

TEST(Simulator, WaitsAcrossStreams_TwoChunkPipeline) {
  // 0 attention c0 (2), 1 a2a c0 (3) after 0, 2 attention c1 (2), 3 a2a c1 (3) after 2,
  // 4 experts c0 (1) after 1, 5 experts c1 (1) after 3.
  //   compute: A0 [0,2) A1 [2,4) idle E0 [5,6) idle E1 [8,9)
  //   comm:          D0 [2,5) D1 [5,8)
  const Simulation s =
      simulate({compute(), comm({0}), compute(), comm({2}), compute({1}), compute({3})}, {2, 3, 2, 3, 1, 1});
  EXPECT_EQ(s.start, (std::vector<double>{0, 2, 2, 5, 5, 8}));
  EXPECT_EQ(s.end, (std::vector<double>{2, 5, 4, 8, 6, 9}));
  EXPECT_DOUBLE_EQ(s.makespan, 9);
  EXPECT_DOUBLE_EQ(s.compute_busy, 6);
  EXPECT_DOUBLE_EQ(s.comm_busy, 6);
}

TEST(Simulator, OverlapSlowdown_SlowsComputeOnlyWhileCommRuns) {
  // compute 4 beside comm 2, slowdown 2: half speed for 2 s (1 s of work), then 3 s at full speed.
  Simulation s = simulate({compute(), comm()}, {4, 2}, 2.0);
  EXPECT_DOUBLE_EQ(s.end[0], 5);
  EXPECT_DOUBLE_EQ(s.end[1], 2);
  EXPECT_DOUBLE_EQ(s.compute_busy, 5);
  // comm starting mid-task: compute 1, then comm 2 (after it) beside compute 4 (no edge):
  // the 4 s task runs slowed over [1, 3) (1 s of work) and ends at 3 + 3 = 6.
  s = simulate({compute(), comm({0}), compute()}, {1, 2, 4}, 2.0);
  EXPECT_DOUBLE_EQ(s.start[2], 1);
  EXPECT_DOUBLE_EQ(s.end[2], 6);
  EXPECT_DOUBLE_EQ(s.makespan, 6);
  // Comm longer than compute: compute 1 beside comm 10 at slowdown 3 ends at 3.
  s = simulate({compute(), comm()}, {1, 10}, 3.0);
  EXPECT_DOUBLE_EQ(s.end[0], 3);
  EXPECT_DOUBLE_EQ(s.makespan, 10);
  // No slowdown without overlap: a serial chain keeps its sum.
  s = simulate({compute(), comm({0}), compute({1})}, {1, 2, 3}, 4.0);
  EXPECT_DOUBLE_EQ(s.makespan, 6);
}

TEST(Simulator, CommOverlapSlowdown_SlowsCommOnlyWhileComputeRuns) {
  // comm 2 beside compute 4, comm slowdown 4: comm does 1 s of work over [0, 4), then 1 s alone.
  Simulation s = simulate({compute(), comm()}, {4, 2}, 1.0, 4.0);
  EXPECT_DOUBLE_EQ(s.end[0], 4);
  EXPECT_DOUBLE_EQ(s.end[1], 5);
  EXPECT_DOUBLE_EQ(s.makespan, 5);
  EXPECT_DOUBLE_EQ(s.comm_busy, 5);
  // Both slowed at once: compute 4 at slowdown 2, comm 2 at slowdown 4. Over [0, 8) comm does 2 s
  // of work and compute 4 s: both end at 8.
  s = simulate({compute(), comm()}, {4, 2}, 2.0, 4.0);
  EXPECT_DOUBLE_EQ(s.end[0], 8);
  EXPECT_DOUBLE_EQ(s.end[1], 8);
  // Rates change when either stream starts or ends a task: compute 1, comm 3 (no edge), compute 2
  // waiting for the comm. Over [0, 1) comm does 0.5 s (slowdown 2); then 2.5 s alone to 3.5; then
  // the second compute task runs alone to 5.5.
  s = simulate({compute(), comm(), compute({1})}, {1, 3, 2}, 1.0, 2.0);
  EXPECT_DOUBLE_EQ(s.end[1], 3.5);
  EXPECT_DOUBLE_EQ(s.start[2], 3.5);
  EXPECT_DOUBLE_EQ(s.makespan, 5.5);
  // A comm task that starts mid-compute: comm 1 waits for compute task 0 (1 s), then runs beside
  // compute task 2 (2 s, no edge, [1, 3)) at slowdown 3: 2/3 s of work, then 1/3 s alone.
  s = simulate({compute(), comm({0}), compute()}, {1, 1, 2}, 1.0, 3.0);
  EXPECT_DOUBLE_EQ(s.end[2], 3);
  EXPECT_NEAR(s.end[1], 3 + 1.0 / 3, 1e-12);
  // No slowdown without overlap: a serial chain keeps its sum.
  s = simulate({compute(), comm({0}), compute({1})}, {1, 2, 3}, 5.0, 50.0);
  EXPECT_DOUBLE_EQ(s.makespan, 6);
}

TEST(Simulator, ZeroLengthTasks) {
  const Simulation s = simulate({compute(), comm({0}), compute({1}), comm({2})}, {0, 0, 2, 0});
  EXPECT_DOUBLE_EQ(s.makespan, 2);
  EXPECT_DOUBLE_EQ(s.start[3], 2);
  EXPECT_DOUBLE_EQ(simulate({}, {}).makespan, 0);
}

TEST(Simulator, RefusesBadLists) {
  EXPECT_THROW(simulate({compute()}, {1, 2}), Error);                         // sizes differ
  EXPECT_THROW(simulate({compute(), comm({1})}, {1, 1}), Error);              // waits for itself
  EXPECT_THROW(simulate({compute({1}), comm()}, {1, 1}), Error);              // waits for a later task
  EXPECT_THROW(simulate({compute()}, {-1}), Error);                           // negative time
  EXPECT_THROW(simulate({compute(), comm()}, {1, 1}, 0.5), Error);            // slowdown < 1
  EXPECT_THROW(simulate({compute(), comm()}, {1, 1}, 1.0, 0.5), Error);       // comm slowdown < 1
  EXPECT_THROW(simulate({compute(), comm()}, {1, 1}, 1.0, INFINITY), Error);  // not finite
}

BlockShape shape_for(int64_t N, int64_t d, int64_t k) {
  BlockShape s;
  s.config.hidden_size = d;
  s.config.num_attention_heads = d / 64;
  s.config.ffn_hidden_size = 4 * d;
  s.config.num_experts = 4;
  s.config.top_k = k;
  s.seq_len = N;
  s.ranks = 2;
  return s;
}

// One CPU core behind a 200 Mbit/s link shared by two ranks (docs/BENCHMARKS.md).
HardwareProfile cpu_profile(double link_bytes_per_s) {
  HardwareProfile hw;
  hw.name = "cpu";
  hw.source = "test";
  hw.matrix_flops = 100e9;
  hw.attention_efficiency = 0.5;
  hw.attention_backward_efficiency = 0.4;
  hw.memory_bandwidth = 10e9;
  hw.intra_node = {link_bytes_per_s, 200e-6};
  hw.inter_node = hw.intra_node;
  hw.ranks_per_node = 2;
  hw.task_overhead = 20e-6;
  hw.overlap_slowdown = 1.1;
  return hw;
}

TEST(PredictBlock, Sequential_TotalIsTheSumOfItsStageTimes) {
  const BlockShape shape = shape_for(1024, 256, 2);
  const HardwareProfile hw = cpu_profile(12.5e6);
  const BlockSchedule seq;
  const ChunkPlan plan = seq.plan(shape.seq_len);
  const auto fwd = forward_tasks(plan, StageOrder::StageMajor),
             bwd = backward_tasks(plan, StageOrder::StageMajor);
  const std::vector<double> tf = task_seconds(fwd, plan, shape, hw), tb = task_seconds(bwd, plan, shape, hw);
  const double sum_f = std::accumulate(tf.begin(), tf.end(), 0.0),
               sum_b = std::accumulate(tb.begin(), tb.end(), 0.0);
  const BlockPrediction p = predict_block(seq, StageOrder::StageMajor, shape, hw);
  EXPECT_NEAR(p.forward, sum_f, 1e-12);
  EXPECT_NEAR(p.backward, sum_b, 1e-12);
  EXPECT_NEAR(p.total, sum_f + sum_b, 1e-12);
  EXPECT_NEAR(p.compute_busy + p.comm_busy, p.total, 1e-12);  // nothing overlaps
  // The comm stream carries exactly the four all-to-all stages.
  double comm = 0;
  for (size_t i = 0; i < fwd.size(); ++i)
    if (fwd[i].stream() == StreamRole::Comm) comm += tf[i];
  for (size_t i = 0; i < bwd.size(); ++i)
    if (bwd[i].stream() == StreamRole::Comm) comm += tb[i];
  EXPECT_NEAR(p.comm_busy, comm, 1e-12);
  EXPECT_GT(comm, 0);
}

TEST(PredictBlock, SlowLink_AmPipeBeatsSequentialAndMoePipe) {
  const BlockShape shape = shape_for(4096, 256, 1);
  const HardwareProfile hw = cpu_profile(12.5e6);
  const double sequential = predict_block(BlockSchedule{}, StageOrder::StageMajor, shape, hw).total;
  auto best_of_orders = [&](ScheduleKind kind) {
    BlockSchedule s;
    s.kind = kind;
    s.pipe_degree = 4;
    return std::min(predict_block(s, StageOrder::StageMajor, shape, hw).total,
                    predict_block(s, StageOrder::Interleaved, shape, hw).total);
  };
  const double ampipe = best_of_orders(ScheduleKind::AmPipe),
               moe_pipe = best_of_orders(ScheduleKind::MoePipe);
  EXPECT_LT(ampipe, 0.85 * sequential) << "ampipe " << ampipe << " s, sequential " << sequential << " s";
  EXPECT_LT(ampipe, moe_pipe) << "ampipe " << ampipe << " s, moe-pipe " << moe_pipe << " s";
  EXPECT_LT(moe_pipe, sequential);
  // Pipelining overlaps but never removes work: busy time >= the sequential stage sums' share.
  BlockSchedule a;
  a.kind = ScheduleKind::AmPipe;
  a.pipe_degree = 4;
  const BlockPrediction p = predict_block(a, StageOrder::StageMajor, shape, hw);
  EXPECT_GE(p.total, std::max(p.compute_busy, p.comm_busy) - 1e-12);
  EXPECT_LT(p.total, p.compute_busy + p.comm_busy);
}

TEST(PredictBlock, CommOverlapSlowdown_HurtsPipelinesNotSequential) {
  const BlockShape shape = shape_for(2048, 256, 1);
  HardwareProfile hw = cpu_profile(1e9);
  BlockSchedule a;
  a.kind = ScheduleKind::AmPipe;
  a.pipe_degree = 4;
  const double seq = predict_block(BlockSchedule{}, StageOrder::StageMajor, shape, hw).total;
  const double pipelined = predict_block(a, StageOrder::StageMajor, shape, hw).total;
  hw.comm_overlap_slowdown = 100;
  // Sequential never overlaps its streams: unchanged.
  EXPECT_NEAR(predict_block(BlockSchedule{}, StageOrder::StageMajor, shape, hw).total, seq, 1e-12);
  EXPECT_GT(predict_block(a, StageOrder::StageMajor, shape, hw).total, pipelined);
  hw.comm_overlap_slowdown = 0.5;
  EXPECT_THROW(predict_block(a, StageOrder::StageMajor, shape, hw), Error);
}

TEST(PredictBlock, WritesAPredictedTimeline) {
  const BlockShape shape = shape_for(1024, 256, 1);
  const HardwareProfile hw = cpu_profile(12.5e6);
  BlockSchedule s;
  s.kind = ScheduleKind::AmPipe;
  s.pipe_degree = 2;
  TraceRecorder trace;
  const BlockPrediction p = predict_block(s, StageOrder::Interleaved, shape, hw, &trace, 1);
  const ChunkPlan plan = s.plan(1024);
  const size_t tasks = forward_tasks(plan, StageOrder::Interleaved).size() +
                       backward_tasks(plan, StageOrder::Interleaved).size();
  const std::vector<TraceSlice> slices = trace.slices();
  ASSERT_EQ(slices.size(), tasks);
  double last_end = 0;
  for (const TraceSlice& sl : slices) {
    EXPECT_EQ(sl.rank, 1);
    EXPECT_TRUE(sl.track == "compute" || sl.track == "comm") << sl.track;
    last_end = std::max(last_end, sl.start_us + sl.duration_us);
  }
  EXPECT_NEAR(last_end, p.total * 1e6, 1e-3);
  EXPECT_EQ(slices.front().name, "ln1+qkv");
  EXPECT_EQ(slices[1].name, "attention c0");
}

BlockSchedule ampipe_schedule(int64_t P) {
  BlockSchedule s;
  s.kind = ScheduleKind::AmPipe;
  s.pipe_degree = P;
  return s;
}

std::vector<BlockSchedule> some_schedules() {
  BlockSchedule moe;
  moe.kind = ScheduleKind::MoePipe;
  moe.pipe_degree = 4;
  BlockSchedule balanced = ampipe_schedule(4);
  balanced.chunk_policy = ChunkPolicy::Balanced;
  balanced.balance_weight = 300;
  balanced.moe_pipe_degree = 8;
  return {BlockSchedule{}, moe, ampipe_schedule(4), balanced};
}

TEST(SimulatePass, OneBlockInBlockScopeIsPredictBlock) {
  const BlockShape shape = shape_for(2048, 256, 2);
  const HardwareProfile hw = cpu_profile(12.5e6);
  for (const BlockSchedule& s : some_schedules())
    for (StageOrder order : {StageOrder::StageMajor, StageOrder::Interleaved}) {
      const BlockPrediction b = predict_block(s, order, shape, hw);
      const PassPrediction p = predict_pass(s, order, shape, hw, PassShape{});
      EXPECT_DOUBLE_EQ(p.forward, b.forward) << s.describe();
      EXPECT_DOUBLE_EQ(p.backward, b.backward) << s.describe();
      EXPECT_DOUBLE_EQ(p.total, b.total) << s.describe();
      EXPECT_DOUBLE_EQ(p.compute_busy, b.compute_busy) << s.describe();
      EXPECT_DOUBLE_EQ(p.comm_busy, b.comm_busy) << s.describe();
      EXPECT_DOUBLE_EQ(p.forward_compute_busy + p.backward_compute_busy, p.compute_busy);
      EXPECT_DOUBLE_EQ(p.forward_comm_busy + p.backward_comm_busy, p.comm_busy);
      EXPECT_DOUBLE_EQ(p.overlap_bound, std::max(p.forward_compute_busy, p.forward_comm_busy) +
                                            std::max(p.backward_compute_busy, p.backward_comm_busy));
      EXPECT_LE(p.overlap_bound, p.total + 1e-12) << s.describe();
    }
}

TEST(SimulatePass, BlockScopeRunsTheBlocksOneAfterTheOther) {
  // Block scope drains every block before the next starts: L blocks take L times one block.
  const BlockShape shape = shape_for(2048, 256, 1);
  const HardwareProfile hw = cpu_profile(12.5e6);
  for (const BlockSchedule& s : some_schedules()) {
    const BlockPrediction one = predict_block(s, StageOrder::Interleaved, shape, hw);
    const PassPrediction four =
        predict_pass(s, StageOrder::Interleaved, shape, hw, PassShape{4, PipelineScope::Block, false});
    EXPECT_NEAR(four.forward, 4 * one.forward, 1e-9 * one.forward) << s.describe();
    EXPECT_NEAR(four.backward, 4 * one.backward, 1e-9 * one.backward) << s.describe();
    EXPECT_NEAR(four.comm_busy, 4 * one.comm_busy, 1e-9 * one.comm_busy) << s.describe();
  }
  EXPECT_THROW(predict_pass(ampipe_schedule(4), StageOrder::StageMajor, shape, hw, PassShape{0}), Error);
}

TEST(SimulatePass, SlowLink_ModelScopeBeatsBlockScope) {
  // The wavefront hides block l's last all-to-alls behind block l+1's first attention chunks, which
  // block scope cannot: it drains every block.
  const BlockShape shape = shape_for(4096, 256, 1);
  const HardwareProfile hw = cpu_profile(12.5e6);
  const BlockSchedule a = ampipe_schedule(4);
  for (StageOrder order : {StageOrder::StageMajor, StageOrder::Interleaved}) {
    const PassPrediction block = predict_pass(a, order, shape, hw, PassShape{4, PipelineScope::Block, false});
    const PassPrediction model = predict_pass(a, order, shape, hw, PassShape{4, PipelineScope::Model, false});
    EXPECT_LT(model.total, block.total) << stage_order_name(order);
    EXPECT_LT(model.forward, block.forward) << stage_order_name(order);
    // Overlap never removes work: each list takes at least its busier stream.
    EXPECT_GE(model.forward, std::max(model.forward_compute_busy, model.forward_comm_busy) - 1e-12);
    EXPECT_GE(model.backward, std::max(model.backward_compute_busy, model.backward_comm_busy) - 1e-12);
    EXPECT_GE(model.total, model.overlap_bound - 1e-12);
    EXPECT_LE(model.overlap_bound, block.total);
  }
}

TEST(SimulatePass, GradReduceAddsExactlyOneReductionPerBlockToTheCommStream) {
  BlockShape shape = shape_for(2048, 256, 1);
  shape.data_ranks = 4;  // two expert groups: dense and expert gradients are both reduced
  HardwareProfile hw = cpu_profile(12.5e6);
  hw.comm_overlap_slowdown = 1;  // comm busy time is then the sum of the comm tasks' times
  const double reduce = grad_reduce_seconds(shape, hw);
  ASSERT_GT(reduce, hw.task_overhead);
  for (const BlockSchedule& s : some_schedules())
    for (PipelineScope scope : {PipelineScope::Block, PipelineScope::Model}) {
      const PassPrediction without =
          predict_pass(s, StageOrder::StageMajor, shape, hw, PassShape{4, scope, false});
      const PassPrediction with =
          predict_pass(s, StageOrder::StageMajor, shape, hw, PassShape{4, scope, true});
      EXPECT_NEAR(with.comm_busy - without.comm_busy, 4 * reduce, 1e-9 * reduce) << s.describe();
      EXPECT_NEAR(with.backward_comm_busy - without.backward_comm_busy, 4 * reduce, 1e-9 * reduce);
      EXPECT_DOUBLE_EQ(with.forward, without.forward) << s.describe();  // the forward has none
      EXPECT_GE(with.backward, without.backward - 1e-12) << s.describe();
      // The reductions of the upper blocks overlap the lower blocks' backward.
      EXPECT_LT(with.backward, without.backward + 4 * reduce) << s.describe();
    }
}

// The distributed optimizer: its reduce-scatter sends half an all-reduce's bytes; the all-gather
// (--overlap-param-gather) adds one ParamGather per block to the forward's comm stream only.
TEST(SimulatePass, ShardedOptimizerHalvesTheReductionAndGathersInTheForward) {
  BlockShape shape = shape_for(2048, 256, 1);
  shape.data_ranks = 4;
  HardwareProfile hw = cpu_profile(12.5e6);
  hw.comm_overlap_slowdown = 1;
  const double all_reduce = grad_reduce_seconds(shape, hw);
  shape.sharded_optimizer = true;
  const double reduce_scatter = grad_reduce_seconds(shape, hw);
  const double gather = param_gather_seconds(shape, hw);
  EXPECT_LT(reduce_scatter, all_reduce);
  EXPECT_GT(reduce_scatter, 0.45 * all_reduce);  // the wire half, and the same scaling pass
  EXPECT_GT(gather, hw.task_overhead);
  for (PipelineScope scope : {PipelineScope::Block, PipelineScope::Model}) {
    const PassPrediction without =
        predict_pass(ampipe_schedule(4), StageOrder::StageMajor, shape, hw, PassShape{4, scope, true, false});
    const PassPrediction with =
        predict_pass(ampipe_schedule(4), StageOrder::StageMajor, shape, hw, PassShape{4, scope, true, true});
    EXPECT_NEAR(with.forward_comm_busy - without.forward_comm_busy, 4 * gather, 1e-9 * gather);
    EXPECT_DOUBLE_EQ(with.backward_comm_busy, without.backward_comm_busy);
    EXPECT_GE(with.forward, without.forward - 1e-12);
  }
}

TEST(SimulatePass, TracesEveryBlock) {
  const BlockShape shape = shape_for(1024, 256, 1);
  const HardwareProfile hw = cpu_profile(12.5e6);
  const PassShape pass{3, PipelineScope::Model, true};
  TraceRecorder trace;
  const PassPrediction p = predict_pass(ampipe_schedule(2), StageOrder::Interleaved, shape, hw, pass, &trace);
  const ChunkPlan plan = ampipe_schedule(2).plan(1024);
  const size_t tasks = forward_tasks(plan, StageOrder::Interleaved, pass).size() +
                       backward_tasks(plan, StageOrder::Interleaved, pass).size();
  const std::vector<TraceSlice> slices = trace.slices();
  ASSERT_EQ(slices.size(), tasks);
  double last_end = 0;
  size_t reductions = 0;
  for (const TraceSlice& sl : slices) {
    last_end = std::max(last_end, sl.start_us + sl.duration_us);
    reductions += sl.name.rfind("grad reduce", 0) == 0;
  }
  EXPECT_NEAR(last_end, p.total * 1e6, 1e-3);
  EXPECT_EQ(reductions, 3u);
  EXPECT_EQ(slices.front().name, "ln1+qkv chunk c0 L0");
}

// A step of micro-batches: unpaired it is the passes one after the other; paired (a forward
// bound by the link beside a backward bound by compute) it is shorter and nearer its step bound;
// delayed weight gradients move the same work into ExpertsWgrad tasks.
TEST(PredictStep, PairingOverlapsTheForwardsLinkWithTheBackwardsCompute) {
  const BlockShape shape = shape_for(4096, 512, 1);
  // 200 Mbit/s shared by two ranks, compute as calibrated here (profiles/cpu-2rank-200mbit.json):
  // the forward is link-bound, the backward compute-bound.
  HardwareProfile hw = cpu_profile(25e6 / 2);
  hw.attention_efficiency = 0.84;
  hw.attention_backward_efficiency = 0.94;
  hw.memory_bandwidth = 16.8e9;
  for (PipelineScope scope : {PipelineScope::Block, PipelineScope::Model}) {
    const PassShape pass{4, scope};
    const BlockSchedule s = ampipe_schedule(4);
    const PassPrediction one = predict_pass(s, StageOrder::StageMajor, shape, hw, pass);
    const StepPrediction single = predict_step(s, StageOrder::StageMajor, shape, hw, pass, 1, false);
    EXPECT_NEAR(single.total, one.total, 1e-12);
    const StepPrediction plain = predict_step(s, StageOrder::StageMajor, shape, hw, pass, 4, false);
    EXPECT_NEAR(plain.total, 4 * one.total, 1e-9);
    EXPECT_NEAR(plain.compute_busy, 4 * one.compute_busy, 1e-9);
    const StepPrediction paired = predict_step(s, StageOrder::StageMajor, shape, hw, pass, 4, true);
    EXPECT_LT(paired.total, 0.97 * plain.total) << pipeline_scope_name(scope);
    EXPECT_GE(paired.total, paired.step_bound * (1 - 1e-12));
    EXPECT_GT(paired.step_bound / paired.total, plain.step_bound / plain.total);
    // The same work (the overlap slowdown aside): the busy times barely move.
    EXPECT_NEAR(paired.comm_busy, plain.comm_busy, 0.05 * plain.comm_busy);
    PassShape delayed = pass;
    delayed.delay_wgrad = true;
    const StepPrediction later = predict_step(s, StageOrder::StageMajor, shape, hw, delayed, 4, true);
    EXPECT_NEAR(later.compute_busy, paired.compute_busy, 0.05 * paired.compute_busy);
    EXPECT_LE(later.total, paired.total * 1.02);
  }
  EXPECT_THROW(predict_step(ampipe_schedule(2), StageOrder::StageMajor, shape, hw, {}, 1, true), Error);
  EXPECT_THROW(predict_step(ampipe_schedule(2), StageOrder::StageMajor, shape, hw, {}, 0, false), Error);
}

// Delayed weight gradients split ExpertsBwd's price: the two tasks cost what the one did.
TEST(CostModel, DelayedWeightGradientsSplitTheExpertsBackward) {
  BlockShape shape = shape_for(1024, 256, 2);
  const HardwareProfile hw = cpu_profile(12.5e6);
  const double whole = stage_seconds(Stage::ExpertsBwd, 0, 512, shape, hw);
  shape.delay_wgrad = true;
  const double input = stage_seconds(Stage::ExpertsBwd, 0, 512, shape, hw);
  const double weight = stage_seconds(Stage::ExpertsWgrad, 0, 512, shape, hw);
  EXPECT_NEAR(input + weight, whole + hw.task_overhead, 1e-12);
  EXPECT_GT(weight, 0.3 * whole);
  EXPECT_GT(input, 0.3 * whole);
}

}  // namespace
}  // namespace ampipe
