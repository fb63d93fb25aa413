// Tensor parallelism in the planner (issue 26): what the cost model divides by T and ETP, the bytes
// of the TP collectives (ring all-reduce against all-gather + reduce-scatter, bf16), the lists with
// TP collectives on the comm stream (and without them unchanged), the profile's tensor link, the
// refusals of `ampipe plan`'s flags, and the executor's refusal of a list it cannot run.
#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

#include "cli_util.h"
#include "core/error.h"
#include "pipeline/task_list.h"
#include "plan/cost_model.h"
#include "plan/profile.h"
#include "plan/simulator.h"

namespace ampipe {
namespace {

// d = 64, 8 heads, 4 query groups, f = 128, E = 4, k = 2, N = 256, R = 2.
BlockShape shape(int64_t T = 1, bool sp = false, int64_t etp = 1) {
  BlockShape s;
  s.config.hidden_size = 64;
  s.config.num_attention_heads = 8;
  s.config.num_query_groups = 4;
  s.config.ffn_hidden_size = 128;
  s.config.num_experts = 4;
  s.config.top_k = 2;
  s.config.max_seq_len = 256;
  s.config.vocab_size = 256;
  s.seq_len = 256;
  s.ranks = 2;
  s.tensor_parallel = T;
  s.sequence_parallel = sp;
  s.expert_tensor_parallel = etp;
  return s;
}

HardwareProfile profile() {
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
  return hw;
}

StageWork work(Stage stage, const BlockShape& s, int64_t begin = 0, int64_t end = 128) {
  return stage_work(stage, begin, end, s, 4);
}

TEST(TensorParallelCost, TwoRanksHalveAttentionButNotTheMoeSideWithoutSequenceParallelism) {
  for (Stage st : {Stage::AttnBegin, Stage::AttnChunk, Stage::AttnChunkBwd, Stage::AttnFinishBwd}) {
    const StageWork one = work(st, shape(1)), two = work(st, shape(2));
    EXPECT_DOUBLE_EQ(two.gemm_flops, one.gemm_flops / 2) << stage_name(st);
    EXPECT_DOUBLE_EQ(two.attention_forward_flops, one.attention_forward_flops / 2) << stage_name(st);
    EXPECT_DOUBLE_EQ(two.attention_backward_flops, one.attention_backward_flops / 2) << stage_name(st);
  }
  // The norms and residuals stay whole without sequence parallelism, and are halved with it.
  EXPECT_DOUBLE_EQ(work(Stage::Route, shape(2)).memory_bytes, work(Stage::Route, shape(1)).memory_bytes);
  EXPECT_DOUBLE_EQ(work(Stage::Route, shape(2, true)).memory_bytes,
                   work(Stage::Route, shape(1)).memory_bytes / 2);
  EXPECT_DOUBLE_EQ(work(Stage::Dispatch, shape(2)).wire_bytes, work(Stage::Dispatch, shape(1)).wire_bytes);
  EXPECT_DOUBLE_EQ(work(Stage::Dispatch, shape(2, true)).wire_bytes,
                   work(Stage::Dispatch, shape(1)).wire_bytes / 2);
  // Expert TP halves each expert's GEMMs over the same rows (without sequence parallelism).
  EXPECT_DOUBLE_EQ(work(Stage::Experts, shape(2, false, 2)).gemm_flops,
                   work(Stage::Experts, shape(1)).gemm_flops / 2);
}

TEST(TensorParallelCost, OneRankPricesExactlyAsBefore) {
  // Sequence parallelism counts only with T > 1; at T = 1 no stage has TP bytes.
  const HardwareProfile hw = profile();
  for (int s = 0; s <= static_cast<int>(Stage::ExpertsWgrad); ++s) {
    const Stage st = static_cast<Stage>(s);
    if (st == Stage::GradReduce || st == Stage::ParamGather) continue;
    EXPECT_EQ(stage_seconds(st, 64, 192, shape(1, true), hw), stage_seconds(st, 64, 192, shape(1), hw))
        << stage_name(st);
    EXPECT_EQ(work(st, shape(1)).tensor_calls, 0) << stage_name(st);
  }
}

TEST(TensorParallelCost, AllReduceSendsWhatAllGatherAndReduceScatterSendTogether) {
  // [128 rows, 64] of float32 over T = 4: an all-reduce sends 2 * 3/4 of the buffer, an all-gather
  // or a reduce-scatter 3/4.
  const double buffer = 128.0 * 64 * 4;
  EXPECT_DOUBLE_EQ(work(Stage::TpAttnReduce, shape(4)).tensor_wire_bytes, 2 * 0.75 * buffer);
  EXPECT_DOUBLE_EQ(work(Stage::TpAttnReduce, shape(4, true)).tensor_wire_bytes, 0.75 * buffer);
  EXPECT_DOUBLE_EQ(work(Stage::TpAttnGather, shape(4, true)).tensor_wire_bytes, 0.75 * buffer);
  EXPECT_EQ(work(Stage::TpAttnReduce, shape(4)).tensor_calls, 1);
  // bf16 halves them, as it does the all-to-alls.
  BlockShape bf16 = shape(4);
  bf16.config.bf16 = true;
  EXPECT_DOUBLE_EQ(work(Stage::TpAttnReduce, bf16).tensor_wire_bytes, 0.75 * buffer);
  // Priced on the tensor link, which defaults to intra_node.
  HardwareProfile hw = profile();
  const double on_intra = stage_seconds(Stage::TpAttnReduce, 0, 128, shape(4), hw);
  EXPECT_DOUBLE_EQ(on_intra, 1e-3 + 2 * 0.75 * buffer / 1e6);
  hw.tensor_link = {4e6, 1e-4};
  EXPECT_DOUBLE_EQ(stage_seconds(Stage::TpAttnReduce, 0, 128, shape(4), hw), 1e-4 + 2 * 0.75 * buffer / 4e6);
}

TEST(TensorParallelCost, BadSizesAndLayoutsAreRefusedNamingTheNumbers) {
  auto message = [](const std::function<void()>& f) {
    try {
      f();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message([] { shape(3).validate(); }).find("does not divide the 8 attention heads"),
            std::string::npos);
  EXPECT_NE(message([] { shape(8).validate(); }).find("4 query groups"), std::string::npos);
  EXPECT_NE(message([] { shape(1, false, 3).validate(); }).find("FFN width 128"), std::string::npos);
  HardwareProfile hw = profile();
  hw.ranks_per_node = 2;
  EXPECT_NE(message([&] { check_layout(shape(4), hw); }).find("2 ranks per node"), std::string::npos);
  EXPECT_NE(message([&] { check_layout(shape(2, true, 4), profile()); }).find("world of 4 ranks"),
            std::string::npos);
}

TEST(TensorParallelLists, WithoutTensorParallelismTheListsAreUnchanged) {
  const ChunkPlan plan{{0, 64, 128, 256}, {0, 128, 256}};
  PassShape plain{2, PipelineScope::Model, true, true, true};
  PassShape sp_alone = plain;
  sp_alone.sequence_parallel = true;  // counts only with T > 1
  for (StageOrder order : {StageOrder::StageMajor, StageOrder::Interleaved}) {
    const std::vector<StageTask> f = forward_tasks(plan, order, plain),
                                 g = forward_tasks(plan, order, sp_alone);
    const std::vector<StageTask> b = backward_tasks(plan, order, plain),
                                 c = backward_tasks(plan, order, sp_alone);
    ASSERT_EQ(f.size(), g.size());
    ASSERT_EQ(b.size(), c.size());
    for (size_t i = 0; i < f.size(); ++i) EXPECT_TRUE(f[i].stage == g[i].stage && f[i].waits == g[i].waits);
    for (size_t i = 0; i < b.size(); ++i) EXPECT_TRUE(b[i].stage == c[i].stage && b[i].waits == c[i].waits);
    for (const StageTask& t : f) EXPECT_FALSE(is_tensor_parallel_stage(t.stage));
  }
}

// The TP collectives of a list, in order: what every rank issues on its comm stream.
std::vector<std::string> tp_sequence(const std::vector<StageTask>& tasks) {
  std::vector<std::string> out;
  for (const StageTask& t : tasks)
    if (is_tensor_parallel_stage(t.stage))
      out.push_back(std::string(stage_name(t.stage)) + " " + std::to_string(t.chunk) + " L" +
                    std::to_string(t.layer));
  return out;
}

TEST(TensorParallelLists, EveryLayoutPassesTheRuleWithItsCollectivesOnTheCommStream) {
  const ChunkPlan plan{{0, 64, 128, 256}, {0, 96, 256}};
  for (PipelineScope scope : {PipelineScope::Block, PipelineScope::Model})
    for (StageOrder order : {StageOrder::StageMajor, StageOrder::Interleaved})
      for (bool sp : {false, true})
        for (int64_t etp : {1, 2}) {
          PassShape pass{2, scope, true, false, true};
          pass.tensor_parallel = 2;
          pass.sequence_parallel = sp;
          pass.expert_tensor_parallel = etp;
          const std::vector<StageTask> f = forward_tasks(plan, order, pass),
                                       b = backward_tasks(plan, order, pass);
          EXPECT_NO_THROW(check_task_list(f, plan, pass, false));
          EXPECT_NO_THROW(check_task_list(b, plan, pass, true));
          int tp = 0;
          for (const std::vector<StageTask>* list : {&f, &b})
            for (const StageTask& t : *list)
              if (is_tensor_parallel_stage(t.stage)) {
                ++tp;
                EXPECT_EQ(t.stream(), StreamRole::Comm);
              }
          // Per block of 3 attention and 2 MoE chunks; the whole-sequence ones once in block scope.
          const bool model = scope == PipelineScope::Model;
          const int expert = etp > 1 ? 2 * (sp ? 2 : 1) : 0;
          const int forward = 3 + (sp ? (model ? 3 : 1) : 0) + expert;
          const int backward = (model ? 3 : 1) + (sp ? 3 : 0) + expert;
          EXPECT_EQ(tp, 2 * (forward + backward))
              << pipeline_scope_name(scope) << " sp " << sp << " etp " << etp;
          // The same list on every rank: building it again gives the same collectives in the same order.
          EXPECT_EQ(tp_sequence(forward_tasks(plan, order, pass)), tp_sequence(f));
          EXPECT_EQ(tp_sequence(backward_tasks(plan, order, pass)), tp_sequence(b));
        }
}

TEST(TensorParallelLists, TheRuleCatchesARouteBeforeItsAllReduce) {
  const ChunkPlan plan{{0, 128, 256}, {0, 128, 256}};
  PassShape pass;
  pass.tensor_parallel = 2;
  std::vector<StageTask> f = forward_tasks(plan, StageOrder::StageMajor, pass);
  ASSERT_NO_THROW(check_task_list(f, plan, pass, false));
  for (StageTask& t : f)
    if (t.stage == Stage::Route) t.waits.clear();  // the route no longer waits for the all-reduce
  EXPECT_THROW(check_task_list(f, plan, pass, false), Error);
}

TEST(TensorParallelPlan, PredictionCountsTheCollectivesAndTheLinkMatters) {
  HardwareProfile hw = profile();
  const PassPrediction none =
      predict_pass(BlockSchedule{}, StageOrder::StageMajor, shape(1), hw, PassShape{});
  EXPECT_EQ(none.tensor_parallel_seconds, 0);
  const PassPrediction slow =
      predict_pass(BlockSchedule{}, StageOrder::StageMajor, shape(2), hw, PassShape{});
  hw.tensor_link = {1e9, 1e-6};
  const PassPrediction fast =
      predict_pass(BlockSchedule{}, StageOrder::StageMajor, shape(2), hw, PassShape{});
  EXPECT_GT(slow.tensor_parallel_seconds, 0);
  EXPECT_LT(fast.tensor_parallel_seconds, slow.tensor_parallel_seconds);
  EXPECT_LT(fast.total, slow.total);
}

TEST(TensorParallelProfile, TheTensorLinkIsOptionalValidatedAndRoundTrips) {
  HardwareProfile hw = profile();
  EXPECT_EQ(profile_to_json(hw).find("tensor_link"), std::string::npos);
  hw.tensor_link = {3.6e11, 1e-5};
  const HardwareProfile back = parse_profile(profile_to_json(hw), "round trip");
  EXPECT_EQ(back.tensor_link.bandwidth, 3.6e11);
  EXPECT_EQ(back.tensor_link.latency, 1e-5);
  hw.tensor_link = {-1, 1e-5};
  EXPECT_THROW(hw.validate("test"), Error);
}

TEST(TensorParallelPlan, TheFlagsAreRefusedBeforeAnyWorkNamingTheNumbers) {
  const std::string base =
      "plan --hardware h100-8gpu-400gbit --seq-length 1024 --hidden-size 512 --num-attention-heads 8 "
      "--ffn-hidden-size 1536 --moe-num-experts 8 --ranks 8 ";
  testing::RunResult r = testing::run_ampipe(base + "--tensor-model-parallel-size 3");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("3 does not divide the 8 attention heads"), std::string::npos) << r.output;
  r = testing::run_ampipe(base +
                          "--model-family mixtral --group-query-attention --num-query-groups 2 "
                          "--tensor-model-parallel-size 4");
  EXPECT_NE(r.output.find("2 query groups"), std::string::npos) << r.output;
  r = testing::run_ampipe(base + "--expert-tensor-parallel-size 5");
  EXPECT_NE(r.output.find("FFN width 1536"), std::string::npos) << r.output;
  r = testing::run_ampipe(base + "--tensor-model-parallel-size 16 --num-attention-heads 16");
  EXPECT_NE(r.output.find("8 ranks per node"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("schedule"), std::string::npos) << r.output;  // refused before any table
  r = testing::run_ampipe(base + "--tensor-model-parallel-size 2 --sequence-parallel");
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("T=2, sequence parallel"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("TP collectives of the choice"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace ampipe
