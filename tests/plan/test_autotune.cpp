// The autotuner: which candidates it prices (per pipe degree, chunk policy, order and pipeline
// scope), "never worse than not pipelining", and the balanced chunk weight from the cost model.
#include <gtest/gtest.h>

#include <algorithm>

#include "core/error.h"
#include "plan/autotune.h"

namespace ampipe {
namespace {

BlockShape shape_for(int64_t N, int64_t d, int64_t k) {
  BlockShape s;
  s.config.hidden_size = d;
  s.config.num_attention_heads = std::max<int64_t>(1, d / 64);
  s.config.ffn_hidden_size = 4 * d;
  s.config.num_experts = 4;
  s.config.top_k = k;
  s.seq_len = N;
  s.ranks = 2;
  return s;
}

HardwareProfile cpu_profile(LinkProfile link, double task_overhead = 20e-6) {
  HardwareProfile hw;
  hw.name = "cpu";
  hw.source = "test";
  hw.matrix_flops = 100e9;
  hw.attention_efficiency = 0.5;
  hw.attention_backward_efficiency = 0.4;
  hw.memory_bandwidth = 10e9;
  hw.intra_node = link;
  hw.inter_node = link;
  hw.ranks_per_node = 2;
  hw.task_overhead = task_overhead;
  return hw;
}

TEST(Autotune, SlowLink_ChoosesAPipelinedPlan) {
  const BlockShape shape = shape_for(4096, 256, 1);
  const HardwareProfile hw = cpu_profile({12.5e6, 200e-6});
  const std::vector<PlanCandidate> all = evaluate_candidates(shape, hw);
  ASSERT_FALSE(all.empty());
  EXPECT_EQ(all.front().schedule.kind, ScheduleKind::Sequential);
  const PlanCandidate best = choose_plan(all, 0.03);
  EXPECT_EQ(best.schedule.kind, ScheduleKind::AmPipe) << best.describe();
  // The fastest, or one within the near-tie margin with fewer chunks.
  for (const PlanCandidate& c : all) EXPECT_LE(best.prediction.total, 1.02 * c.prediction.total) << c.describe();
  EXPECT_LT(best.prediction.total, 0.85 * all.front().prediction.total);
  // The same through the one-call form.
  EXPECT_EQ(choose_plan(shape, hw).describe(), best.describe());
}

TEST(Autotune, InfinitelyFastLink_ChoosesSequential) {
  const HardwareProfile hw = cpu_profile({1e18, 0}, 50e-6);
  for (int64_t N : {1024, 4096})
    for (int64_t k : {1, 2}) {
      const PlanCandidate best = choose_plan(shape_for(N, 256, k), hw);
      EXPECT_EQ(best.schedule.kind, ScheduleKind::Sequential)
          << "N=" << N << " k=" << k << ": " << best.describe();
    }
  // Also with the gain threshold off: chunking only adds task overheads when nothing is to hide.
  AutotuneOptions o;
  o.min_gain = 0;
  EXPECT_EQ(choose_plan(shape_for(2048, 256, 1), hw, o).schedule.kind, ScheduleKind::Sequential);
}

PlanCandidate fake(ScheduleKind kind, double total) {
  PlanCandidate c;
  c.schedule.kind = kind;
  c.schedule.pipe_degree = kind == ScheduleKind::Sequential ? 1 : 4;
  c.prediction.total = total;
  return c;
}

TEST(Autotune, ChoosePlan_PipelinesOnlyForMoreThanMinGain) {
  const std::vector<PlanCandidate> small_gain = {fake(ScheduleKind::MoePipe, 0.98),
                                                 fake(ScheduleKind::Sequential, 1.0),
                                                 fake(ScheduleKind::AmPipe, 0.975)};
  EXPECT_EQ(choose_plan(small_gain, 0.03).schedule.kind, ScheduleKind::Sequential);
  EXPECT_EQ(choose_plan(small_gain, 0.02).schedule.kind, ScheduleKind::AmPipe);
  const std::vector<PlanCandidate> big_gain = {
      fake(ScheduleKind::Sequential, 1.0), fake(ScheduleKind::MoePipe, 0.9), fake(ScheduleKind::AmPipe, 0.8)};
  EXPECT_EQ(choose_plan(big_gain, 0.03).schedule.kind, ScheduleKind::AmPipe);
  const std::vector<PlanCandidate> slower = {fake(ScheduleKind::Sequential, 1.0),
                                             fake(ScheduleKind::AmPipe, 1.5)};
  EXPECT_EQ(choose_plan(slower, 0.0).schedule.kind, ScheduleKind::Sequential);
  EXPECT_THROW(choose_plan(std::vector<PlanCandidate>{fake(ScheduleKind::AmPipe, 1)}, 0.03), Error);
  // A near tie goes to fewer chunks; a clear win does not.
  PlanCandidate many = fake(ScheduleKind::AmPipe, 0.80), few = fake(ScheduleKind::AmPipe, 0.81);
  many.schedule.pipe_degree = 16;
  few.schedule.pipe_degree = 4;
  const std::vector<PlanCandidate> tie = {fake(ScheduleKind::Sequential, 1.0), many, few};
  EXPECT_EQ(choose_plan(tie, 0.03, 0.02).schedule.pipe_degree, 4);
  EXPECT_EQ(choose_plan(tie, 0.03, 0.0).schedule.pipe_degree, 16);
  few.prediction.total = 0.85;
  EXPECT_EQ(choose_plan({fake(ScheduleKind::Sequential, 1.0), many, few}, 0.03, 0.02).schedule.pipe_degree, 16);
}

TEST(Autotune, Candidates_CoverTheSearchSpaceAndRespectTheMinimumChunk) {
  const HardwareProfile hw = cpu_profile({12.5e6, 200e-6});
  AutotuneOptions o;
  o.pipe_degrees = {4};
  o.min_chunk_positions = 64;
  const std::vector<PlanCandidate> all = evaluate_candidates(shape_for(1024, 256, 1), hw, o);
  // sequential; moe-pipe x 2 orders; ampipe equal x MoE {same, 2, 8} + balanced x {same, 2, 4, 8},
  // each in 2 orders.
  EXPECT_EQ(all.size(), 1u + 2u + 2u * (3u + 4u));
  size_t balanced = 0, separate = 0;
  for (const PlanCandidate& c : all) {
    if (c.schedule.kind != ScheduleKind::AmPipe) continue;
    balanced += c.schedule.chunk_policy == ChunkPolicy::Balanced;
    separate += c.schedule.moe_pipe_degree > 0;
    if (c.schedule.chunk_policy == ChunkPolicy::Balanced) {
      EXPECT_GT(c.schedule.balance_weight, 0);
    }
  }
  EXPECT_EQ(balanced, 8u);
  EXPECT_EQ(separate, 10u);

  // N = 128 with chunks of >= 64 positions: P = 2 only, and no MoE side of 4 chunks.
  o.pipe_degrees = {2, 4, 8, 16};
  for (const PlanCandidate& c : evaluate_candidates(shape_for(128, 64, 1), hw, o)) {
    EXPECT_LE(c.schedule.pipe_degree, 2) << c.describe();
    EXPECT_LE(c.schedule.moe_pipe_degree, 2) << c.describe();
  }
  // Only the schedules asked for (and sequential, the baseline).
  o.schedules = {ScheduleKind::MoePipe};
  const std::vector<PlanCandidate> moe_only = evaluate_candidates(shape_for(1024, 256, 1), hw, o);
  EXPECT_EQ(moe_only.size(), 1u + 4u * 2u);
  for (const PlanCandidate& c : moe_only) EXPECT_NE(c.schedule.kind, ScheduleKind::AmPipe);
  o.schedules = {ScheduleKind::AmPipe, ScheduleKind::MoePipe};
  // Too short to cut at all: sequential alone, and chosen.
  const std::vector<PlanCandidate> short_seq = evaluate_candidates(shape_for(100, 64, 1), hw, o);
  ASSERT_EQ(short_seq.size(), 1u);
  EXPECT_EQ(choose_plan(short_seq, 0.03).schedule.kind, ScheduleKind::Sequential);
}

// Predicted forward + backward compute time of each attention chunk of `bounds`.
std::vector<double> attention_chunk_seconds(const std::vector<int64_t>& bounds, const BlockShape& shape,
                                            const HardwareProfile& hw) {
  std::vector<double> t;
  for (size_t c = 0; c + 1 < bounds.size(); ++c)
    t.push_back(stage_seconds(Stage::AttnChunk, bounds[c], bounds[c + 1], shape, hw) +
                stage_seconds(Stage::AttnChunkBwd, bounds[c], bounds[c + 1], shape, hw));
  return t;
}

double spread(const std::vector<double>& t) {
  return *std::max_element(t.begin(), t.end()) / *std::min_element(t.begin(), t.end());
}

TEST(Autotune, BalancedBoundaries_EqualisePredictedAttentionChunkTimes) {
  const BlockShape shape = shape_for(2048, 256, 1);
  const HardwareProfile hw = cpu_profile({12.5e6, 200e-6}, 0);
  const double w = time_balance_weight(shape, hw, false);
  EXPECT_GT(w, 0);
  EXPECT_GT(time_balance_weight(shape, hw, true), w);  // the MoE side's per-token work adds to w
  const std::vector<int64_t> equal = equal_boundaries(2048, 4), balanced = balanced_boundaries(2048, 4, w);
  EXPECT_NE(balanced, equal);
  EXPECT_GT(balanced[1], equal[1]);  // early chunks see few keys, so they get more positions
  const double equal_spread = spread(attention_chunk_seconds(equal, shape, hw));
  const double balanced_spread = spread(attention_chunk_seconds(balanced, shape, hw));
  EXPECT_GT(equal_spread, 2.0);
  EXPECT_LT(balanced_spread, 1.01) << "equal chunks spread " << equal_spread;

  // The weight reproduces the cost model: with w, t(b, e) is a (e^2 - b^2) + a w (e - b) + overhead.
  const double t1 = stage_seconds(Stage::AttnChunk, 0, 512, shape, hw) +
                    stage_seconds(Stage::AttnChunkBwd, 0, 512, shape, hw);
  const double t2 = stage_seconds(Stage::AttnChunk, 512, 1024, shape, hw) +
                    stage_seconds(Stage::AttnChunkBwd, 512, 1024, shape, hw);
  const double a = (t2 - t1) / (2.0 * 512 * 512);
  EXPECT_NEAR(t1, a * (512.0 * 512 + w * 512), 1e-9 * t1);
}

TEST(Autotune, SeveralBlocks_PricesBothScopesAndChoosesTheFastest) {
  const BlockShape shape = shape_for(4096, 256, 1);
  const HardwareProfile hw = cpu_profile({12.5e6, 200e-6});
  AutotuneOptions o;
  o.pipe_degrees = {4};
  o.num_layers = 4;
  const std::vector<PlanCandidate> all = evaluate_candidates(shape, hw, o);
  o.num_layers = 1;
  const std::vector<PlanCandidate> one_block = evaluate_candidates(shape, hw, o);
  o.num_layers = 4;
  // Sequential once (block scope), every pipelined candidate of one block in both scopes.
  ASSERT_EQ(all.size(), 1 + 2 * (one_block.size() - 1));
  size_t model = 0;
  for (const PlanCandidate& c : all) {
    const bool model_scope = c.scope == PipelineScope::Model;
    model += model_scope;
    EXPECT_EQ(c.describe().ends_with(" model-scope"), model_scope) << c.describe();
    if (c.schedule.kind == ScheduleKind::Sequential) {
      EXPECT_FALSE(model_scope);
    }
    EXPECT_GE(c.prediction.total, c.prediction.overlap_bound - 1e-12) << c.describe();
  }
  EXPECT_EQ(model, one_block.size() - 1);
  // With no near-tie margin the choice is the fastest of all; with the default one, within 2% of it.
  double fastest = all.front().prediction.total;
  for (const PlanCandidate& c : all) fastest = std::min(fastest, c.prediction.total);
  EXPECT_DOUBLE_EQ(choose_plan(all, 0.03, 0.0).prediction.total, fastest);
  const PlanCandidate best = choose_plan(all, 0.03);
  EXPECT_LE(best.prediction.total, 1.02 * fastest) << best.describe();
  EXPECT_EQ(choose_plan(shape, hw, o).describe(), best.describe());
  // On this slow link the wavefront hides the blocks' drains: the fastest is model scope.
  EXPECT_EQ(choose_plan(all, 0.03, 0.0).scope, PipelineScope::Model);
  // The prediction is of the pass: block scope is four blocks one after the other.
  for (size_t i = 0; i < one_block.size(); ++i) {
    const PlanCandidate& block = all[i == 0 ? 0 : 2 * i - 1];
    ASSERT_EQ(block.scope, PipelineScope::Block);
    ASSERT_EQ(block.describe(), one_block[i].describe());
    EXPECT_NEAR(block.prediction.total, 4 * one_block[i].prediction.total, 1e-9 * block.prediction.total);
  }
}

TEST(Autotune, OneBlock_PricesBlockScopeOnly) {
  const HardwareProfile hw = cpu_profile({12.5e6, 200e-6});
  AutotuneOptions o;
  o.pipe_degrees = {4};
  o.scopes = {PipelineScope::Model};
  for (const PlanCandidate& c : evaluate_candidates(shape_for(2048, 256, 1), hw, o))
    EXPECT_EQ(c.scope, PipelineScope::Block) << c.describe();
  // Only the scopes asked for (sequential stays block scope: the baseline).
  o.num_layers = 2;
  for (const PlanCandidate& c : evaluate_candidates(shape_for(2048, 256, 1), hw, o))
    EXPECT_EQ(c.scope,
              c.schedule.kind == ScheduleKind::Sequential ? PipelineScope::Block : PipelineScope::Model)
        << c.describe();
  // Gradient reduction is priced: it lengthens the pass.
  o.scopes = {PipelineScope::Block, PipelineScope::Model};
  const double plain = evaluate_candidates(shape_for(2048, 256, 1), hw, o).front().prediction.total;
  o.reduce_gradients = true;
  EXPECT_GT(evaluate_candidates(shape_for(2048, 256, 1), hw, o).front().prediction.total, plain);
}

TEST(Autotune, ChoosePlan_ATieBetweenScopesGoesToBlockScope) {
  PlanCandidate block = fake(ScheduleKind::AmPipe, 0.80), model = fake(ScheduleKind::AmPipe, 0.80);
  model.scope = PipelineScope::Model;
  EXPECT_EQ(choose_plan({fake(ScheduleKind::Sequential, 1.0), model, block}, 0.03, 0.0).scope,
            PipelineScope::Block);
  model.prediction.total = 0.79;  // within the near tie: still block scope
  EXPECT_EQ(choose_plan({fake(ScheduleKind::Sequential, 1.0), model, block}, 0.03, 0.02).scope,
            PipelineScope::Block);
  EXPECT_EQ(choose_plan({fake(ScheduleKind::Sequential, 1.0), model, block}, 0.03, 0.0).scope,
            PipelineScope::Model);
  model.prediction.total = 0.70;  // a clear win
  EXPECT_EQ(choose_plan({fake(ScheduleKind::Sequential, 1.0), model, block}, 0.03, 0.02).scope,
            PipelineScope::Model);
  // Fewer chunks still come first.
  block.schedule.pipe_degree = 16;
  model.prediction.total = 0.80;
  EXPECT_EQ(choose_plan({fake(ScheduleKind::Sequential, 1.0), block, model}, 0.03, 0.02).scope,
            PipelineScope::Model);
}

TEST(Autotune, RefusesBadOptions) {
  const HardwareProfile hw = cpu_profile({12.5e6, 200e-6});
  AutotuneOptions o;
  o.min_gain = 1.5;
  EXPECT_THROW(evaluate_candidates(shape_for(1024, 256, 1), hw, o), Error);
  o = AutotuneOptions{};
  o.pipe_degrees = {0};
  EXPECT_THROW(evaluate_candidates(shape_for(1024, 256, 1), hw, o), Error);
  o = AutotuneOptions{};
  o.orders.clear();
  EXPECT_THROW(evaluate_candidates(shape_for(1024, 256, 1), hw, o), Error);
  o = AutotuneOptions{};
  o.num_layers = 0;
  EXPECT_THROW(evaluate_candidates(shape_for(1024, 256, 1), hw, o), Error);
  o = AutotuneOptions{};
  o.scopes.clear();
  EXPECT_THROW(evaluate_candidates(shape_for(1024, 256, 1), hw, o), Error);
}

}  // namespace
}  // namespace ampipe
