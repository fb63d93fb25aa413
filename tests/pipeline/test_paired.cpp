// Paired micro-batches (--overlap-moe-expert-parallel-comm) and delayed weight gradients
// (--delay-wgrad-compute): the merged task lists keep each pass and its dependency rule, and the
// model computes the same bits as the unpaired, undelayed passes.
#include <gtest/gtest.h>

#include <functional>

#include "core/random.h"
#include "model/gpt.h"
#include "pipeline/paired_tasks.h"
#include "pipeline/streamed_block.h"
#include "pipeline/task_order.h"
#include "test_util.h"

namespace ampipe {
namespace {

std::vector<ChunkPlan> paired_plans() {
  return {ChunkPlan{{0, 12}, {0, 12}}, ChunkPlan{{0, 12}, {0, 4, 8, 12}},
          ChunkPlan{{0, 3, 6, 9, 12}, {0, 3, 6, 9, 12}}, ChunkPlan{{0, 1, 7, 8, 12}, {0, 1, 7, 8, 12}},
          ChunkPlan{{0, 2, 5, 12}, {0, 6, 12}}};
}

// Seconds per task: unit, or a slow link (comm 3, compute 1), or a slow link with a heavy backward.
std::vector<double> seconds_of(const std::vector<StageTask>& tasks, int kind) {
  std::vector<double> s;
  for (const StageTask& t : tasks) {
    const bool comm = t.stream() == StreamRole::Comm;
    s.push_back(kind == 0 ? 1.0 : comm ? 3.0 : (kind == 2 && is_backward_stage(t.stage) ? 2.0 : 1.0));
  }
  return s;
}

// The tasks of one pass (by stage) on one stream, in list order, as (stage, chunk, layer).
std::vector<std::tuple<Stage, int, int>> on_stream(const std::vector<StageTask>& tasks, bool backward,
                                                   StreamRole stream) {
  std::vector<std::tuple<Stage, int, int>> out;
  for (const StageTask& t : tasks)
    if (is_backward_stage(t.stage) == backward && t.stream() == stream)
      out.emplace_back(t.stage, t.chunk, t.layer);
  return out;
}

using ::ampipe::testing::ordered_before;

// Every merge keeps each pass's tasks in their own order on each stream, holds every task once, and
// satisfies both passes' dependency rules; the two passes really interleave on both streams.
TEST(PairedTasks, EachPassKeepsItsOrderAndItsRule) {
  int interleaved = 0, merges = 0;
  for (const ChunkPlan& plan : paired_plans())
    for (StageOrder order : {StageOrder::StageMajor, StageOrder::Interleaved})
      for (PipelineScope scope : {PipelineScope::Block, PipelineScope::Model})
        for (int64_t L : {1, 3})
          for (bool delay : {false, true})
            for (int kind = 0; kind < 3; ++kind) {
              PassShape fwd_pass{L, scope}, bwd_pass{L, scope};
              bwd_pass.delay_wgrad = delay;
              const std::vector<StageTask> bwd = backward_tasks(plan, order, bwd_pass),
                                           fwd = forward_tasks(plan, order, fwd_pass);
              const std::vector<StageTask> merged =
                  paired_tasks(bwd, seconds_of(bwd, kind), fwd, seconds_of(fwd, kind));
              SCOPED_TRACE(std::string(pipeline_scope_name(scope)) + " " + stage_order_name(order) + " L=" +
                           std::to_string(L) + (delay ? " delayed" : "") + " costs " + std::to_string(kind));
              ASSERT_EQ(merged.size(), bwd.size() + fwd.size());
              for (StreamRole stream : {StreamRole::Compute, StreamRole::Comm}) {
                EXPECT_EQ(on_stream(merged, true, stream), on_stream(bwd, true, stream));
                EXPECT_EQ(on_stream(merged, false, stream), on_stream(fwd, false, stream));
              }
              EXPECT_NO_THROW(check_paired_task_list(merged, plan, bwd_pass, fwd_pass));
              // Interleaved: somewhere on the compute stream a forward task comes between two backward ones.
              bool seen_bwd = false, fwd_after = false, mixed = false;
              for (const StageTask& t : merged) {
                if (t.stream() != StreamRole::Compute) continue;
                if (is_backward_stage(t.stage)) {
                  mixed = mixed || fwd_after;
                  seen_bwd = true;
                } else if (seen_bwd) {
                  fwd_after = true;
                }
              }
              interleaved += mixed;
              ++merges;
            }
  EXPECT_GT(interleaved, merges / 2);
}

// The paired checker has teeth: removing any wait of a merged list is refused unless another path
// (possibly through the other pass) still orders the two tasks.
TEST(PairedTasks, RemovingAPairingEdgeIsRefused) {
  int needed = 0, redundant = 0;
  for (const ChunkPlan& plan : paired_plans())
    for (PipelineScope scope : {PipelineScope::Block, PipelineScope::Model}) {
      PassShape fwd_pass{2, scope}, bwd_pass{2, scope};
      bwd_pass.delay_wgrad = true;
      const std::vector<StageTask> bwd = backward_tasks(plan, StageOrder::Interleaved, bwd_pass),
                                   fwd = forward_tasks(plan, StageOrder::Interleaved, fwd_pass);
      const std::vector<StageTask> merged = paired_tasks(bwd, seconds_of(bwd, 1), fwd, seconds_of(fwd, 1));
      for (size_t i = 0; i < merged.size(); ++i)
        for (size_t w = 0; w < merged[i].waits.size(); ++w) {
          std::vector<StageTask> cut = merged;
          cut[i].waits.erase(cut[i].waits.begin() + static_cast<std::ptrdiff_t>(w));
          if (ordered_before(cut, i, static_cast<size_t>(merged[i].waits[w]))) {
            ++redundant;
            EXPECT_NO_THROW(check_paired_task_list(cut, plan, bwd_pass, fwd_pass));
            continue;
          }
          ++needed;
          EXPECT_THROW(check_paired_task_list(cut, plan, bwd_pass, fwd_pass), Error)
              << "removing wait " << w << " of paired task " << i << " (" << stage_name(merged[i].stage)
              << " c" << merged[i].chunk << " L" << merged[i].layer << ") went unnoticed";
        }
    }
  EXPECT_GT(needed, 10 * redundant);
}

TEST(PairedTasks, BadInputIsRefused) {
  const ChunkPlan plan{{0, 6, 12}, {0, 6, 12}};
  const std::vector<StageTask> bwd = backward_tasks(plan, StageOrder::StageMajor),
                               fwd = forward_tasks(plan, StageOrder::StageMajor);
  EXPECT_THROW(paired_tasks(bwd, std::vector<double>(bwd.size() - 1, 1.0), fwd, seconds_of(fwd, 0)), Error);
  std::vector<double> negative = seconds_of(fwd, 0);
  negative[2] = -1;
  EXPECT_THROW(paired_tasks(bwd, seconds_of(bwd, 0), fwd, negative), Error);
  // A backward stage listed in the forward pass's place is refused by the rule.
  std::vector<StageTask> merged = paired_tasks(bwd, seconds_of(bwd, 0), fwd, seconds_of(fwd, 0));
  EXPECT_NO_THROW(check_paired_task_list(merged, plan, {}, {}));
  PassShape delayed;
  delayed.delay_wgrad = true;
  EXPECT_THROW(check_paired_task_list(merged, plan, delayed, {}),
               Error);  // the ExpertsWgrad tasks are missing
}

ModelConfig paired_config(int64_t top_k, bool mixtral) {
  ModelConfig c;
  if (mixtral) {
    c.set_family("mixtral");
    c.num_query_groups = 1;
    c.rotary_base = 100;
  }
  c.vocab_size = 19;
  c.max_seq_len = 32;
  c.hidden_size = 16;
  c.num_attention_heads = 2;
  c.num_layers = 3;
  c.num_experts = 4;
  c.ffn_hidden_size = 24;
  c.top_k = top_k;
  c.aux_loss_weight = 0.1;
  return c;
}

struct StepRun {
  std::vector<LossParts> losses;  // per micro-batch
  std::vector<std::vector<float>> grads;
};

// One step of `A` micro-batches with gradient accumulation (scale 1/A): each forward then its
// backward, or (paired) the first forward alone, each backward beside the next forward, the last
// backward alone.
StepRun step(const ModelConfig& config, const BlockExecutor* executor, bool paired, int64_t A = 3,
             int64_t batch = 2, int64_t seq_len = 29) {
  GptMoe model(config);
  model.initialize(3);
  uint64_t seed = 40;  // larger weights than the init so routing and attention are far from uniform
  for (Parameter& p : model.params().all())
    if (p.name.find(".weight") != std::string::npos && p.name.find("ln") == std::string::npos)
      p.value.copy_from(testing::random_tensor(p.value.shape(), seed++, 0.2f));
  model.params().refresh_compute();
  model.set_block_executor(executor);
  Rng rng(9);
  std::vector<Tensor> tokens, targets;
  for (int64_t m = 0; m < A; ++m) {
    std::vector<int32_t> tok(batch * seq_len), tgt(batch * seq_len);
    for (auto& t : tok) t = static_cast<int32_t>(rng.below(config.vocab_size));
    for (auto& t : tgt) t = static_cast<int32_t>(rng.below(config.vocab_size));
    tokens.push_back(Tensor::from_ints({batch * seq_len}, tok));
    targets.push_back(Tensor::from_ints({batch * seq_len}, tgt));
  }
  const double scale = 1.0 / static_cast<double>(A);
  StepRun r;
  std::vector<ForwardState> states(A);
  if (!paired) {
    for (int64_t m = 0; m < A; ++m) {
      r.losses.push_back(model.forward(states[m], tokens[m], targets[m], batch));
      model.backward(states[m], scale);
    }
  } else {
    r.losses.push_back(model.forward(states[0], tokens[0], targets[0], batch));
    for (int64_t m = 0; m + 1 < A; ++m)
      r.losses.push_back(
          model.backward_and_forward(states[m], scale, states[m + 1], tokens[m + 1], targets[m + 1], batch));
    model.backward(states[A - 1], scale);
  }
  for (const Parameter& p : model.params().all()) r.grads.push_back(p.grad.to_vector());
  return r;
}

void expect_bits(const StepRun& a, const StepRun& b, const std::string& what) {
  ASSERT_EQ(a.losses.size(), b.losses.size()) << what;
  for (size_t m = 0; m < a.losses.size(); ++m) {
    EXPECT_EQ(a.losses[m].lm_loss, b.losses[m].lm_loss) << what << " micro-batch " << m;
    EXPECT_EQ(a.losses[m].aux_loss, b.losses[m].aux_loss) << what << " micro-batch " << m;
  }
  ASSERT_EQ(a.grads.size(), b.grads.size()) << what;
  for (size_t i = 0; i < a.grads.size(); ++i) EXPECT_EQ(a.grads[i], b.grads[i]) << what << " gradient " << i;
}

class Paired : public ::testing::TestWithParam<std::tuple<int64_t, bool>> {};

// Paired equals unpaired bit for bit, and delayed weight gradients change nothing either: every
// schedule (sequential, moe-pipe, ampipe with equal, balanced and uneven chunks), both scopes and
// stage orders, bf16 too.
TEST_P(Paired, BitIdenticalToOneMicroBatchAfterTheOther) {
  const auto [top_k, mixtral] = GetParam();
  const ModelConfig config = paired_config(top_k, mixtral);
  std::vector<std::pair<std::string, BlockSchedule>> schedules;
  schedules.emplace_back("sequential", BlockSchedule{});
  BlockSchedule moe_pipe;
  moe_pipe.kind = ScheduleKind::MoePipe;
  moe_pipe.pipe_degree = 3;
  schedules.emplace_back("moe-pipe", moe_pipe);
  BlockSchedule equal;
  equal.kind = ScheduleKind::AmPipe;
  equal.pipe_degree = 4;
  schedules.emplace_back("ampipe equal", equal);
  BlockSchedule balanced = equal;
  balanced.chunk_policy = ChunkPolicy::Balanced;
  balanced.balance_weight = balance_weight(config, true);
  balanced.moe_pipe_degree = 3;
  schedules.emplace_back("ampipe balanced moe=3", balanced);
  BlockSchedule uneven;
  uneven.kind = ScheduleKind::AmPipe;
  uneven.chunk_boundaries = {0, 1, 17, 18, 29};
  schedules.emplace_back("ampipe uneven", uneven);
  for (const auto& [name, schedule] : schedules)
    for (PipelineScope scope : {PipelineScope::Block, PipelineScope::Model})
      for (StageOrder order : {StageOrder::StageMajor, StageOrder::Interleaved}) {
        if (name == "sequential" && (scope == PipelineScope::Model || order == StageOrder::Interleaved))
          continue;
        // Both orders for equal chunks; one per scope for the others (the suite's time).
        if (name != "ampipe equal" && (order == StageOrder::Interleaved) != (scope == PipelineScope::Model))
          continue;
        StreamedBlock plain(schedule, order, nullptr, 0, scope);
        const StepRun reference = step(config, &plain, false);
        const std::string what = name + " " + pipeline_scope_name(scope) + " " + stage_order_name(order);
        expect_bits(step(config, &plain, true), reference, what + " paired");
        StreamedBlock delayed(schedule, order, nullptr, 0, scope);
        delayed.set_delay_wgrad(true);
        expect_bits(step(config, &delayed, false), reference, what + " delayed wgrad");
        // A merge from other seconds (comm slow) orders the passes differently, with the same bits.
        delayed.set_task_seconds(
            [](const StageTask& t, const ChunkPlan&) { return t.stream() == StreamRole::Comm ? 5.0 : 1.0; });
        expect_bits(step(config, &delayed, true), reference, what + " paired, delayed wgrad");
      }
  // bf16: the compute copies are refreshed before the paired passes, not under them.
  ModelConfig bf16 = config;
  bf16.bf16 = true;
  StreamedBlock plain(equal, StageOrder::Interleaved, nullptr, 0, PipelineScope::Model);
  const StepRun reference = step(bf16, &plain, false);
  plain.set_delay_wgrad(true);
  expect_bits(step(bf16, &plain, true), reference, "bf16 paired, delayed wgrad");
  // The executor's default (one pass after the other) too.
  expect_bits(step(config, nullptr, true), step(config, nullptr, false), "sequential executor");
}

INSTANTIATE_TEST_SUITE_P(TopKAndFamily, Paired,
                         ::testing::Combine(::testing::Values(1, 2), ::testing::Bool()),
                         [](const ::testing::TestParamInfo<std::tuple<int64_t, bool>>& param) {
                           return "Top" + std::to_string(std::get<0>(param.param)) +
                                  (std::get<1>(param.param) ? "_Mixtral" : "_Gpt");
                         });

// The split has teeth: a delayed backward leaves the experts' weight gradients untouched (a test
// that never ran the ExpertsWgrad tasks would see zeros), gives the same input gradient, and
// weight_backward then adds exactly the undelayed gradients; a chunk cannot be released before.
TEST(Paired, DelayedWeightGradientsWaitForTheirTask) {
  for (bool mixtral : {false, true}) {
    const ModelConfig config = paired_config(2, mixtral);
    ParameterRegistry now_params, later_params;
    MoeLayer now(config, now_params, "m."), later(config, later_params, "m.");
    for (ParameterRegistry* r : {&now_params, &later_params}) {
      uint64_t seed = 3;
      for (Parameter& p : r->all()) p.value.copy_from(testing::random_tensor(p.value.shape(), seed++, 0.3f));
    }
    const Tensor x = testing::random_tensor({20, config.hidden_size}, 7),
                 dy = testing::random_tensor({20, config.hidden_size}, 8);
    RoutingStats stats_now, stats_later;
    stats_now.reset(config.num_experts);
    stats_later.reset(config.num_experts);
    MoeContext a, b;
    now.forward(a, x, stats_now);
    later.forward(b, x, stats_later);
    for (auto [layer, ctx] : {std::pair{&now, &a}, std::pair{&later, &b}}) {
      layer->begin_backward(*ctx, dy);
      layer->exchange_combine_backward(*ctx);
      layer->run_experts_backward(*ctx, ctx == &b);
      layer->exchange_dispatch_backward(*ctx);
    }
    for (const Parameter& p : later_params.all()) {
      if (!p.is_expert) continue;
      for (float v : p.grad.to_vector()) ASSERT_EQ(v, 0.0f) << p.name << " changed before its ExpertsWgrad";
    }
    EXPECT_THROW(later.finish_backward(b, stats_later, 0.0), Error);  // the gradients are still pending
    later.run_experts_wgrad(b);
    const Tensor dx_now = now.finish_backward(a, stats_now, 0.0),
                 dx_later = later.finish_backward(b, stats_later, 0.0);
    EXPECT_EQ(dx_now.to_vector(), dx_later.to_vector());
    for (size_t i = 0; i < now_params.all().size(); ++i)
      EXPECT_EQ(now_params.all()[i].grad.to_vector(), later_params.all()[i].grad.to_vector())
          << now_params.all()[i].name;
  }
}

// A task that fails inside a paired step reaches the caller naming the task; no hang.
TEST(Paired, AFailingTaskEndsThePairedStep) {
  ModelConfig config = paired_config(1, false);
  BlockSchedule s;
  s.kind = ScheduleKind::AmPipe;
  s.pipe_degree = 3;
  for (const char* label :
       {"experts bwd c0 L1", "a2a dispatch c1 L2", "experts wgrad c2 L0", "ln1+qkv chunk c0 L1"}) {
    StreamedBlock executor(s, StageOrder::Interleaved, nullptr, 0, PipelineScope::Model);
    executor.set_delay_wgrad(true);
    GptMoe model(config);
    model.initialize(1);
    model.set_block_executor(&executor);
    std::vector<int32_t> tok(20, 1);
    ForwardState first, second;
    model.forward(first, Tensor::from_ints({20}, tok), Tensor::from_ints({20}, tok), 1);
    executor.inject_failure(label);
    try {
      model.backward_and_forward(first, 0.5, second, Tensor::from_ints({20}, tok),
                                 Tensor::from_ints({20}, tok), 1);
      ADD_FAILURE() << label << ": no error";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(std::string("task '") + label + "' failed"), std::string::npos)
          << label << ": " << e.what();
    }
  }
}

TEST(Paired, RefusedWithFullRecomputation) {
  ModelConfig config = paired_config(1, false);
  GptMoe model(config);
  model.initialize(1);
  model.set_recompute(recompute_groups("uniform", 1, config.num_layers));
  std::vector<int32_t> tok(16, 2);
  ForwardState first, second;
  model.forward(first, Tensor::from_ints({16}, tok), Tensor::from_ints({16}, tok), 1);
  try {
    model.backward_and_forward(first, 1.0, second, Tensor::from_ints({16}, tok), Tensor::from_ints({16}, tok),
                               1);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--recompute-granularity full"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace ampipe
