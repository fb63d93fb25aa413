// The per-stage cost model: FLOP and byte counts of every stage against hand counts for a tiny
// block, the all-to-all's bytes, calls and intra/inter-node split, and pricing at profile rates.
#include <gtest/gtest.h>

#include "core/error.h"
#include "plan/cost_model.h"

namespace ampipe {
namespace {

// d = 8, h = 2, E = 4, f = 16, k = 2; B = 2 sequences of N = 10; R = 2 ranks.
BlockShape tiny_shape() {
  BlockShape s;
  s.config.hidden_size = 8;
  s.config.num_attention_heads = 2;
  s.config.num_experts = 4;
  s.config.ffn_hidden_size = 16;
  s.config.top_k = 2;
  s.batch = 2;
  s.seq_len = 10;
  s.ranks = 2;
  return s;
}

HardwareProfile simple_profile() {
  HardwareProfile hw;
  hw.name = "test";
  hw.source = "test";
  hw.matrix_flops = 1e9;
  hw.attention_efficiency = 0.5;
  hw.attention_backward_efficiency = 0.25;
  hw.memory_bandwidth = 1e8;
  hw.intra_node = {1e6, 1e-3};
  hw.inter_node = {1e5, 1e-2};
  hw.ranks_per_node = 8;
  hw.bytes_per_element = 4;
  hw.task_overhead = 1e-5;
  return hw;
}

// Causal attention of queries [b, e) of one sequence, counted pair by pair: query i sees i + 1 keys,
// 2d FLOPs for its row of QK^T and 2d for PV per key.
double causal_pairs_flops(int64_t b, int64_t e, int64_t d) {
  double flops = 0;
  for (int64_t i = b; i < e; ++i) flops += double(i + 1) * 4 * double(d);
  return flops;
}

// The Mixtral family prices what it runs: K and V of g = 1 KV head (hd = 4) narrow the QKV GEMMs to
// w = 8 + 2 * 4 = 16 columns; SwiGLU experts run three GEMMs instead of two; no bias passes; rope
// rotates q's 8 and k's 4 columns (read and written).
TEST(CostModel, StageFlops_MixtralFamily_MatchHandCounts) {
  BlockShape s = tiny_shape();
  s.config.set_family("mixtral");
  s.config.num_query_groups = 1;
  const BlockShape gpt = tiny_shape();
  EXPECT_DOUBLE_EQ(stage_work(Stage::AttnBegin, 0, 0, s, 4).gemm_flops, 2.0 * 20 * 8 * 16);
  EXPECT_DOUBLE_EQ(stage_work(Stage::AttnFinishBwd, 0, 0, s, 4).gemm_flops, 4.0 * 20 * 8 * 16);
  // norm 2Td + rope 2T (8 + 4) (no bias): 20 tokens, d = 8.
  EXPECT_DOUBLE_EQ(stage_work(Stage::AttnBegin, 0, 0, s, 1).memory_bytes, 2.0 * 20 * 8 + 2.0 * 20 * 12);
  // The attention core counts query heads: unchanged by grouped-query attention.
  EXPECT_DOUBLE_EQ(stage_work(Stage::AttnChunk, 4, 10, s, 4).attention_forward_flops,
                   stage_work(Stage::AttnChunk, 4, 10, gpt, 4).attention_forward_flops);
  // Chunk [4, 10): 12 tokens, 24 routed rows; SwiGLU = 3 GEMMs of 2 * rows * d * f.
  EXPECT_DOUBLE_EQ(stage_work(Stage::Experts, 4, 10, s, 4).gemm_flops, 3 * 2.0 * 24 * 8 * 16);
  EXPECT_DOUBLE_EQ(stage_work(Stage::ExpertsBwd, 4, 10, s, 4).gemm_flops, 3 * 4.0 * 24 * 8 * 16);
  EXPECT_DOUBLE_EQ(stage_work(Stage::Experts, 4, 10, gpt, 4).gemm_flops, 2 * 2.0 * 24 * 8 * 16);
}

TEST(CostModel, StageFlops_TinyBlock_MatchHandCounts) {
  const BlockShape s = tiny_shape();
  // Whole sequence: T = 20 tokens. QKV: 2 * 20 * 8 * 24.
  EXPECT_DOUBLE_EQ(stage_work(Stage::AttnBegin, 0, 0, s, 4).gemm_flops, 7680);
  EXPECT_DOUBLE_EQ(stage_work(Stage::AttnFinishBwd, 3, 5, s, 4).gemm_flops,
                   2 * 7680);  // whole sequence, dW + dX
  // Chunk [4, 10): T = 12 tokens, 2 * 45 key pairs... per sequence: keys 5 + 6 + ... + 10 = 45.
  const StageWork attn = stage_work(Stage::AttnChunk, 4, 10, s, 4);
  EXPECT_DOUBLE_EQ(attn.attention_forward_flops, 2 * 45 * 4 * 8);
  EXPECT_DOUBLE_EQ(attn.attention_forward_flops, 2 * causal_pairs_flops(4, 10, 8));
  EXPECT_DOUBLE_EQ(attn.gemm_flops, 2 * 12 * 8 * 8);  // projection
  EXPECT_DOUBLE_EQ(attn.attention_backward_flops, 0);
  const StageWork attn_bwd = stage_work(Stage::AttnChunkBwd, 4, 10, s, 4);
  EXPECT_DOUBLE_EQ(attn_bwd.attention_backward_flops, 2.5 * 2880);
  EXPECT_DOUBLE_EQ(attn_bwd.gemm_flops, 2 * 1536);
  // MoE chunk [4, 10): 12 tokens, 24 routed rows.
  EXPECT_DOUBLE_EQ(stage_work(Stage::Route, 4, 10, s, 4).gemm_flops, 2 * 12 * 8 * 4);  // router
  EXPECT_DOUBLE_EQ(stage_work(Stage::RouteBwd, 4, 10, s, 4).gemm_flops, 4 * 12 * 8 * 4);
  EXPECT_DOUBLE_EQ(stage_work(Stage::Experts, 4, 10, s, 4).gemm_flops, 24 * (2 * 8 * 16 + 2 * 16 * 8));
  EXPECT_DOUBLE_EQ(stage_work(Stage::ExpertsBwd, 4, 10, s, 4).gemm_flops, 2 * 12288);
  EXPECT_DOUBLE_EQ(stage_work(Stage::Finish, 4, 10, s, 4).gemm_flops, 0);
  EXPECT_DOUBLE_EQ(stage_work(Stage::Dispatch, 4, 10, s, 4).gemm_flops, 0);
}

TEST(CostModel, AttentionChunks_SumToTheWholeSequence) {
  const BlockShape s = tiny_shape();
  const double whole = stage_work(Stage::AttnChunk, 0, 10, s, 4).attention_forward_flops;
  EXPECT_DOUBLE_EQ(whole, 2 * causal_pairs_flops(0, 10, 8));
  double sum = 0;
  for (auto [b, e] : {std::pair<int64_t, int64_t>{0, 3}, {3, 4}, {4, 9}, {9, 10}})
    sum += stage_work(Stage::AttnChunk, b, e, s, 4).attention_forward_flops;
  EXPECT_DOUBLE_EQ(sum, whole);
  // Later chunks of equal length cost more (they see more keys).
  EXPECT_GT(stage_work(Stage::AttnChunk, 5, 10, s, 4).attention_forward_flops,
            2 * stage_work(Stage::AttnChunk, 0, 5, s, 4).attention_forward_flops);
}

TEST(CostModel, ElementwiseBytes_HandCounts) {
  BlockShape s = tiny_shape();
  // LN1 (2Td) + QKV bias (2 T 3d) over T = 20, d = 8, 4 bytes.
  EXPECT_DOUBLE_EQ(stage_work(Stage::AttnBegin, 0, 10, s, 4).memory_bytes, 8 * 20 * 8 * 4);
  // Bytes scale with bytes_per_element.
  EXPECT_DOUBLE_EQ(stage_work(Stage::AttnBegin, 0, 10, s, 2).memory_bytes, 8 * 20 * 8 * 2);
  // Attention chunk [4, 10), T = 12: bias 2Td + residual 3Td + copy into the token buffer 2Td,
  // plus q and x row gathers 4Td (B = 2).
  EXPECT_DOUBLE_EQ(stage_work(Stage::AttnChunk, 4, 10, s, 4).memory_bytes, 11 * 12 * 8 * 4);
  // The whole sequence is contiguous: no gathers.
  EXPECT_DOUBLE_EQ(stage_work(Stage::AttnChunk, 0, 10, s, 4).memory_bytes, 7 * 20 * 8 * 4);
  // Its backward: bias bwd Td, plus the gather of dh rows and the scatter of dq 4Td.
  EXPECT_DOUBLE_EQ(stage_work(Stage::AttnChunkBwd, 4, 10, s, 4).memory_bytes, 5 * 12 * 8 * 4);
  // Experts: rows = 24; bias + gelu 4 rows f, bias 2 rows d, regroup 4 rows d (R = 2).
  EXPECT_DOUBLE_EQ(stage_work(Stage::Experts, 4, 10, s, 4).memory_bytes, (4 * 24 * 16 + 6 * 24 * 8) * 4);
  s.ranks = 1;  // no regroup without an all-to-all
  EXPECT_DOUBLE_EQ(stage_work(Stage::Experts, 4, 10, s, 4).memory_bytes, (4 * 24 * 16 + 2 * 24 * 8) * 4);
  s.batch = 1;  // one sequence: chunks are views
  EXPECT_DOUBLE_EQ(stage_work(Stage::AttnChunk, 4, 10, s, 4).memory_bytes, 7 * 6 * 8 * 4);
}

TEST(CostModel, AllToAll_BytesAndCalls) {
  BlockShape s = tiny_shape();
  // 24 routed rows x 8 values x 4 bytes, half of them remote on 2 ranks.
  const StageWork dispatch = stage_work(Stage::Dispatch, 4, 10, s, 4);
  EXPECT_DOUBLE_EQ(dispatch.wire_bytes, 24 * 8 * 4 * 0.5);
  EXPECT_EQ(dispatch.collective_calls, 2);  // the counts, then the rows
  for (Stage st : {Stage::Combine, Stage::CombineBwd, Stage::DispatchBwd}) {
    EXPECT_DOUBLE_EQ(stage_work(st, 4, 10, s, 4).wire_bytes, 384) << stage_name(st);
    EXPECT_EQ(stage_work(st, 4, 10, s, 4).collective_calls, 1) << stage_name(st);
  }
  s.remote_fraction = 0.25;
  EXPECT_DOUBLE_EQ(stage_work(Stage::Combine, 4, 10, s, 4).wire_bytes, 192);
  s.ranks = 4;
  s.remote_fraction = -1;  // uniform: 3/4
  EXPECT_DOUBLE_EQ(stage_work(Stage::Combine, 4, 10, s, 4).wire_bytes, 24 * 8 * 4 * 0.75);
  s.ranks = 1;  // nothing crosses a link
  EXPECT_EQ(stage_work(Stage::Dispatch, 4, 10, s, 4).collective_calls, 0);
  EXPECT_DOUBLE_EQ(stage_seconds(Stage::Dispatch, 4, 10, s, simple_profile()),
                   simple_profile().task_overhead);
}

TEST(CostModel, AllToAll_GrowsWithTopKHiddenAndRemoteShare) {
  const HardwareProfile hw = simple_profile();
  const BlockShape base = tiny_shape();
  const double t0 = stage_seconds(Stage::Dispatch, 0, 10, base, hw);
  BlockShape more_k = base;
  more_k.config.top_k = 3;
  BlockShape more_d = base;
  more_d.config.hidden_size = 16;
  BlockShape more_remote = base;
  more_remote.remote_fraction = 0.9;
  EXPECT_GT(stage_seconds(Stage::Dispatch, 0, 10, more_k, hw), t0);
  EXPECT_GT(stage_seconds(Stage::Dispatch, 0, 10, more_d, hw), t0);
  EXPECT_GT(stage_seconds(Stage::Dispatch, 0, 10, more_remote, hw), t0);
  EXPECT_LT(stage_seconds(Stage::Dispatch, 5, 10, base, hw), t0);  // fewer tokens
  // Exactly: overhead + 2 latencies + bytes / bandwidth (2 ranks on one node).
  const double bytes = 2 * 10 * 2 * 8 * 4 * 0.5;
  EXPECT_DOUBLE_EQ(t0, hw.task_overhead + 2 * hw.intra_node.latency + bytes / hw.intra_node.bandwidth);
  EXPECT_DOUBLE_EQ(stage_seconds(Stage::Combine, 0, 10, base, hw),
                   hw.task_overhead + hw.intra_node.latency + bytes / hw.intra_node.bandwidth);
}

TEST(CostModel, AllToAll_SplitsIntraAndInterNode) {
  HardwareProfile hw = simple_profile();
  hw.intra_node = {100, 0};
  hw.inter_node = {10, 0};
  hw.ranks_per_node = 4;
  const double X = 7000;  // remote bytes per rank
  // 8 ranks, 4 per node: 3 of the 7 peers on this node, 4 on others.
  EXPECT_DOUBLE_EQ(all_to_all_seconds(X, 1, 8, hw), std::max(X * 3 / 7 / 100, X * 4 / 7 / 10));
  // A fast inter-node link: the intra-node part is the slower one.
  hw.inter_node = {1e9, 0};
  EXPECT_DOUBLE_EQ(all_to_all_seconds(X, 1, 8, hw), X * 3 / 7 / 100);
  // Every rank on one node: the inter-node figures do not matter.
  hw.inter_node = {1e-3, 5};
  EXPECT_DOUBLE_EQ(all_to_all_seconds(X, 2, 4, hw), X / 100);
  // One rank per node: everything crosses nodes, each call pays the inter-node latency.
  hw.ranks_per_node = 1;
  hw.inter_node = {10, 0.5};
  EXPECT_DOUBLE_EQ(all_to_all_seconds(X, 2, 4, hw), 2 * 0.5 + X / 10);
  EXPECT_DOUBLE_EQ(all_to_all_seconds(X, 2, 1, hw), 0);
}

TEST(CostModel, AllToAll_HostStagingAddsTwoCopiesOfTheBytes) {
  HardwareProfile hw = simple_profile();
  hw.intra_node = {100, 0.5};
  hw.ranks_per_node = 4;
  const double X = 7000;
  const double nccl = all_to_all_seconds(X, 1, 4, hw);  // no staging: the link alone
  EXPECT_DOUBLE_EQ(nccl, 0.5 + X / 100);
  hw.collectives = "mpi";
  hw.host_staging_bandwidth = 50;
  EXPECT_DOUBLE_EQ(all_to_all_seconds(X, 1, 4, hw), nccl + 2 * X / 50);
  EXPECT_DOUBLE_EQ(all_to_all_seconds(X, 1, 1, hw), 0);  // one rank moves nothing
}

TEST(CostModel, StageSeconds_PricesWorkAtProfileRates) {
  const BlockShape s = tiny_shape();
  const HardwareProfile hw = simple_profile();
  const StageWork attn = stage_work(Stage::AttnChunkBwd, 4, 10, s, 4);
  EXPECT_DOUBLE_EQ(stage_seconds(Stage::AttnChunkBwd, 4, 10, s, hw),
                   hw.task_overhead + attn.gemm_flops / 1e9 + attn.attention_backward_flops / (1e9 * 0.25) +
                       attn.memory_bytes / 1e8);
  const StageWork fwd = stage_work(Stage::AttnChunk, 4, 10, s, 4);
  EXPECT_DOUBLE_EQ(stage_seconds(Stage::AttnChunk, 4, 10, s, hw),
                   hw.task_overhead + fwd.gemm_flops / 1e9 + fwd.attention_forward_flops / (1e9 * 0.5) +
                       fwd.memory_bytes / 1e8);
}

// --bf16: every all-to-all moves half the bytes (2 per element, whatever bytes_per_element says),
// the GEMMs run at matrix_flops_bf16 where the profile knows it, and the rest is priced as float32.
TEST(CostModel, Bf16_HalvesTheAllToAllBytesAndPricesGemmsAtTheBf16Rate) {
  BlockShape f32 = tiny_shape(), bf16 = tiny_shape();
  bf16.config.bf16 = true;
  for (Stage st : {Stage::Dispatch, Stage::Combine, Stage::CombineBwd, Stage::DispatchBwd}) {
    EXPECT_DOUBLE_EQ(stage_work(st, 4, 10, bf16, 4).wire_bytes,
                     0.5 * stage_work(st, 4, 10, f32, 4).wire_bytes)
        << stage_name(st);
    EXPECT_EQ(stage_work(st, 4, 10, bf16, 4).collective_calls,
              stage_work(st, 4, 10, f32, 4).collective_calls);
  }
  HardwareProfile hw = simple_profile();
  const StageWork experts = stage_work(Stage::Experts, 4, 10, bf16, 4);
  EXPECT_DOUBLE_EQ(experts.memory_bytes, stage_work(Stage::Experts, 4, 10, f32, 4).memory_bytes);
  // Without a bf16 rate: float32's.
  EXPECT_DOUBLE_EQ(stage_seconds(Stage::Experts, 4, 10, bf16, hw),
                   stage_seconds(Stage::Experts, 4, 10, f32, hw));
  hw.matrix_flops_bf16 = 4e9;
  EXPECT_DOUBLE_EQ(stage_seconds(Stage::Experts, 4, 10, bf16, hw),
                   hw.task_overhead + experts.gemm_flops / 4e9 + experts.memory_bytes / 1e8);
  EXPECT_DOUBLE_EQ(stage_seconds(Stage::Experts, 4, 10, f32, hw),
                   hw.task_overhead + experts.gemm_flops / 1e9 + experts.memory_bytes / 1e8);
  // Attention runs in float32 under --bf16: its core keeps float32's rate.
  const StageWork attn = stage_work(Stage::AttnChunk, 4, 10, bf16, 4);
  EXPECT_DOUBLE_EQ(stage_seconds(Stage::AttnChunk, 4, 10, bf16, hw),
                   hw.task_overhead + attn.gemm_flops / 4e9 + attn.attention_forward_flops / (1e9 * 0.5) +
                       attn.memory_bytes / 1e8);
}

TEST(CostModel, Cache_ElementwiseBytesRunAtCacheBandwidthWhenTheWorkingSetFits) {
  HardwareProfile hw = simple_profile();  // memory_bandwidth 1e8
  // No cache modelled: every byte at memory_bandwidth.
  EXPECT_DOUBLE_EQ(elementwise_seconds(4000, hw), 4000 / 1e8);
  hw.cache_bytes = 1000;
  hw.cache_bandwidth = 1e9;
  // Working set = half the bytes. 2000 bytes: 1000 fit, all at cache speed.
  EXPECT_DOUBLE_EQ(elementwise_seconds(2000, hw), 2000 / 1e9);
  EXPECT_DOUBLE_EQ(elementwise_seconds(500, hw), 500 / 1e9);
  // 4000 bytes: working set twice the cache, half the bytes at each rate.
  EXPECT_DOUBLE_EQ(elementwise_seconds(4000, hw), 2000 / 1e9 + 2000 / 1e8);
  // Far past the cache: nearly all at memory speed.
  EXPECT_NEAR(elementwise_seconds(2e6, hw), 2e6 / 1e8, 2e6 / 1e8 * 1e-3);
  EXPECT_DOUBLE_EQ(elementwise_seconds(0, hw), 0);
  // More bytes never cost less.
  double previous = 0;
  for (double bytes = 100; bytes < 1e5; bytes *= 1.5) {
    EXPECT_GT(elementwise_seconds(bytes, hw), previous) << bytes;
    previous = elementwise_seconds(bytes, hw);
  }
  // A stage: chunks small enough to fit run their elementwise passes faster per byte than the
  // whole sequence, while GEMM time is unchanged.
  BlockShape s = tiny_shape();
  s.batch = 1;
  const StageWork whole = stage_work(Stage::FinishBwd, 0, 10, s, 4),
                  chunk = stage_work(Stage::FinishBwd, 0, 2, s, 4);
  hw.cache_bytes = chunk.memory_bytes / 2;  // the chunk just fits, the whole sequence does not
  EXPECT_DOUBLE_EQ(stage_seconds(Stage::FinishBwd, 0, 2, s, hw), hw.task_overhead + chunk.memory_bytes / 1e9);
  EXPECT_GT(stage_seconds(Stage::FinishBwd, 0, 10, s, hw) - hw.task_overhead,
            whole.memory_bytes / chunk.memory_bytes * (chunk.memory_bytes / 1e9));
  // A cache without a bandwidth is refused.
  hw.cache_bandwidth = 0;
  EXPECT_THROW(stage_seconds(Stage::FinishBwd, 0, 2, s, hw), Error);
}

TEST(CostModel, TaskSeconds_IndexTheRightSideOfThePlan) {
  const BlockShape s = tiny_shape();
  const HardwareProfile hw = simple_profile();
  ChunkPlan plan{{0, 4, 10}, {0, 2, 5, 10}};
  const std::vector<StageTask> tasks = forward_tasks(plan, StageOrder::StageMajor);
  const std::vector<double> t = task_seconds(tasks, plan, s, hw);
  ASSERT_EQ(t.size(), tasks.size());
  for (size_t i = 0; i < tasks.size(); ++i) {
    const StageTask& task = tasks[i];
    int64_t b = 0, e = 10;
    if (task.chunk >= 0) {
      const auto& bounds = is_attention_stage(task.stage) ? plan.attention : plan.moe;
      b = bounds[task.chunk];
      e = bounds[task.chunk + 1];
    }
    EXPECT_DOUBLE_EQ(t[i], stage_seconds(task.stage, b, e, s, hw)) << i;
  }
  StageTask bad{Stage::Experts, 3, {}};
  EXPECT_THROW(stage_seconds(bad, plan, s, hw), Error);
}

TEST(CostModel, RefusesBadShapesAndProfiles) {
  BlockShape s = tiny_shape();
  s.ranks = 3;  // 4 experts on 3 ranks
  EXPECT_THROW(stage_work(Stage::Experts, 0, 10, s, 4), Error);
  s = tiny_shape();
  EXPECT_THROW(stage_work(Stage::AttnChunk, 4, 11, s, 4), Error);
  EXPECT_THROW(stage_work(Stage::AttnChunk, 4, 4, s, 4), Error);
  HardwareProfile hw = simple_profile();
  hw.matrix_flops = 0;
  EXPECT_THROW(stage_seconds(Stage::Experts, 0, 10, s, hw), Error);
}

}  // namespace
}  // namespace ampipe
