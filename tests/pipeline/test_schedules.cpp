// Every schedule computes the sequential block: loss, outputs and every gradient, for any pipe
// degree and chunk boundaries (dropless routing), top-1 and top-2, in both model families.
#include <gtest/gtest.h>

#include <functional>
#include <map>
#include <sstream>

#include "core/random.h"
#include "model/gpt.h"
#include "pipeline/streamed_block.h"
#include "pipeline/task_order.h"
#include "test_util.h"

namespace ampipe {
namespace {

ModelConfig config_for(int64_t top_k, bool mixtral = false) {
  ModelConfig c;
  if (mixtral) {
    c.set_family("mixtral");  // rope, RMSNorm, SwiGLU, no biases, untied head, normalised gates
    c.num_query_groups = 1;   // grouped-query attention: both query heads share one KV head
    c.rotary_base = 100;
  }
  c.vocab_size = 17;
  c.max_seq_len = 40;
  c.hidden_size = 16;
  c.num_attention_heads = 2;
  c.num_layers = 2;
  c.num_experts = 4;
  c.ffn_hidden_size = 24;
  c.top_k = top_k;
  c.aux_loss_weight = 0.1;
  return c;
}

struct ModelRun {
  LossParts loss;
  std::vector<float> logits;
  std::vector<std::vector<float>> grads;
};

ModelRun run(const ModelConfig& config, const BlockExecutor* executor, int64_t batch, int64_t seq_len,
            const std::function<void(int64_t)>& block_done = {}, std::vector<RecomputeGroup> recompute = {}) {
  GptMoe model(config);
  model.set_recompute(std::move(recompute));
  model.initialize(11);
  uint64_t seed = 70;  // larger weights than the init so routing and attention are far from uniform
  for (Parameter& p : model.params().all())
    if (p.name.find(".weight") != std::string::npos && p.name.find("ln") == std::string::npos)
      p.value.copy_from(testing::random_tensor(p.value.shape(), seed++, 0.2f));
  model.set_block_executor(executor);
  Rng rng(5);
  std::vector<int32_t> tok(batch * seq_len), tgt(batch * seq_len);
  for (auto& t : tok) t = static_cast<int32_t>(rng.below(config.vocab_size));
  for (auto& t : tgt) t = static_cast<int32_t>(rng.below(config.vocab_size));
  ForwardState state;
  ModelRun r;
  r.loss = model.forward(state, Tensor::from_ints({batch * seq_len}, tok), Tensor::from_ints({batch * seq_len}, tgt),
                         batch);
  r.logits = state.logits.to_vector();
  model.backward(state, 1.0, block_done);
  for (const Parameter& p : model.params().all()) r.grads.push_back(p.grad.to_vector());
  return r;
}

// How far a schedule may be from the sequential block: float32 reassociation (chunked GEMMs and
// reductions sum in another order) by default.
struct Tolerance {
  double loss = 1e-5, logits = 1e-4, grad_atol = 2e-5, grad_rtol = 2e-3;
};

void expect_same(const ModelRun& a, const ModelRun& b, const std::string& what, const Tolerance& tol = {}) {
  SCOPED_TRACE(what);
  EXPECT_NEAR(a.loss.lm_loss, b.loss.lm_loss, tol.loss);
  EXPECT_NEAR(a.loss.aux_loss, b.loss.aux_loss, tol.loss);
  testing::expect_close(std::vector<double>(a.logits.begin(), a.logits.end()),
                        std::vector<double>(b.logits.begin(), b.logits.end()), tol.logits, tol.logits,
                        "logits");
  ASSERT_EQ(a.grads.size(), b.grads.size());
  for (size_t i = 0; i < a.grads.size(); ++i)
    testing::expect_close(std::vector<double>(a.grads[i].begin(), a.grads[i].end()),
                          std::vector<double>(b.grads[i].begin(), b.grads[i].end()), tol.grad_atol,
                          tol.grad_rtol, ("gradient " + std::to_string(i)).c_str());
}

class Schedules : public ::testing::TestWithParam<std::tuple<int64_t, bool>> {};

TEST_P(Schedules, PipelinedEqualsSequential_Dropless) {
  const auto [top_k, mixtral] = GetParam();
  const ModelConfig config = config_for(top_k, mixtral);
  for (int64_t batch : {1, 2}) {
    const int64_t N = 37;
    const ModelRun reference = run(config, nullptr, batch, N);
    // Every schedule and pipe degree, both stage orders of the two-stream executor.
    for (StageOrder order : {StageOrder::StageMajor, StageOrder::Interleaved}) {
      for (ScheduleKind kind : {ScheduleKind::Sequential, ScheduleKind::MoePipe, ScheduleKind::AmPipe}) {
        for (int64_t P : {1, 2, 3, 4, 8}) {
          BlockSchedule s;
          s.kind = kind;
          s.pipe_degree = P;
          StreamedBlock executor(s, order);
          expect_same(run(config, &executor, batch, N), reference,
                      std::string(stage_order_name(order)) + " " + schedule_name(kind) + " P=" + std::to_string(P) +
                          " B=" + std::to_string(batch));
        }
      }
    }
    // Uneven boundaries, including a one-position chunk.
    BlockSchedule uneven;
    uneven.kind = ScheduleKind::AmPipe;
    uneven.chunk_boundaries = {0, 1, 20, 21, 37};
    StreamedBlock executor(uneven, StageOrder::Interleaved);
    expect_same(run(config, &executor, batch, N), reference, "ampipe uneven B=" + std::to_string(batch));
    // Balanced attention chunks, and a MoE side cut on its own behind the token buffer (more,
    // fewer, and as many chunks as the attention side, boundaries falling inside attention chunks).
    for (StageOrder order : {StageOrder::StageMajor, StageOrder::Interleaved}) {
      for (int64_t moe_p : {0, 1, 2, 3, 5}) {
        for (ChunkPolicy policy : {ChunkPolicy::Equal, ChunkPolicy::Balanced}) {
          BlockSchedule s;
          s.kind = ScheduleKind::AmPipe;
          s.pipe_degree = 4;
          s.chunk_policy = policy;
          s.balance_weight = balance_weight(config, moe_p == 0);
          s.moe_pipe_degree = moe_p;
          StreamedBlock split(s, order);
          expect_same(run(config, &split, batch, N), reference,
                      std::string(stage_order_name(order)) + " " + s.describe() + " B=" + std::to_string(batch));
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(TopKAndFamily, Schedules, ::testing::Combine(::testing::Values(1, 2), ::testing::Bool()),
                         [](const ::testing::TestParamInfo<std::tuple<int64_t, bool>>& param) {
                           return "Top" + std::to_string(std::get<0>(param.param)) +
                                  (std::get<1>(param.param) ? "_Mixtral" : "_Gpt");
                         });

// The whole pass as one list: model scope (chunks flowing across blocks) and block scope over
// several blocks equal the sequential model, with and without the per-block gradient hook.
TEST_P(Schedules, WholePassEqualsSequential_BothScopes) {
  const auto [top_k, mixtral] = GetParam();
  for (int64_t L : {1, 2, 3}) {
    ModelConfig config = config_for(top_k, mixtral);
    config.num_layers = L;
    for (int64_t batch : {1, 2}) {
      const int64_t N = 37;
      const ModelRun reference = run(config, nullptr, batch, N);
      std::vector<BlockSchedule> schedules;
      for (int64_t P : {1, 2, 3, 4}) {
        BlockSchedule s;
        s.kind = ScheduleKind::AmPipe;
        s.pipe_degree = P;
        schedules.push_back(s);
      }
      BlockSchedule s;
      s.kind = ScheduleKind::AmPipe;
      s.chunk_boundaries = {0, 1, 20, 21, 37};  // uneven, a one-position chunk
      schedules.push_back(s);
      s = BlockSchedule{};
      s.kind = ScheduleKind::AmPipe;
      s.pipe_degree = 3;
      s.chunk_policy = ChunkPolicy::Balanced;
      s.balance_weight = balance_weight(config, false);
      s.moe_pipe_degree = 2;  // the MoE side cut differently, boundaries inside attention chunks
      schedules.push_back(s);
      s.moe_pipe_degree = 5;
      schedules.push_back(s);
      s = BlockSchedule{};
      s.kind = ScheduleKind::MoePipe;
      s.pipe_degree = 3;
      schedules.push_back(s);
      for (const BlockSchedule& schedule : schedules)
        for (StageOrder order : {StageOrder::StageMajor, StageOrder::Interleaved})
          for (PipelineScope scope : {PipelineScope::Block, PipelineScope::Model})
            for (bool hook : {false, true}) {
              const std::string what = std::string(pipeline_scope_name(scope)) + " scope " + schedule.describe() +
                                       " " + stage_order_name(order) + " L=" + std::to_string(L) +
                                       " B=" + std::to_string(batch) + (hook ? " with the gradient hook" : "");
              StreamedBlock executor(schedule, order, nullptr, 0, scope);
              std::vector<int64_t> done;
              const ModelRun r =
                  run(config, &executor, batch, N, hook ? std::function<void(int64_t)>([&](int64_t l) { done.push_back(l); })
                                                        : std::function<void(int64_t)>());
              expect_same(r, reference, what);
              if (hook) {
                std::vector<int64_t> expected;
                for (int64_t l = L - 1; l >= 0; --l) expected.push_back(l);
                EXPECT_EQ(done, expected) << what;
              }
            }
    }
  }
}

// --bf16: every schedule still computes the sequential block. Rounding to bf16 is per element, so
// chunking alone changes nothing; what differs is float32 reassociation upstream (as above), which
// can move a value across a bf16 rounding boundary: that operand element then differs by one bf16
// ulp (2^-7 relative) instead of ~1e-7. Hence tolerances ~10x float32's (here, on this machine, even
// float32's pass; another GEMM kernel, e.g. oneDNN on AVX512-BF16, sums in other orders), far below what a
// wrong chunk, a lost row or a stale gradient produces (O(1) relative).
TEST_P(Schedules, PipelinedEqualsSequential_Bf16) {
  const auto [top_k, mixtral] = GetParam();
  ModelConfig config = config_for(top_k, mixtral);
  config.bf16 = true;
  const int64_t N = 37, batch = 2;
  Tolerance tol;
  tol.loss = 1e-4;
  tol.logits = 1e-3;
  tol.grad_atol = 2e-4;
  tol.grad_rtol = 2e-2;
  const ModelRun reference = run(config, nullptr, batch, N);
  ModelConfig f32 = config;
  f32.bf16 = false;
  const ModelRun float32 = run(f32, nullptr, batch, N);
  EXPECT_GT(std::abs(float32.loss.lm_loss - reference.loss.lm_loss), 1e-7) << "nothing ran in bf16";
  std::vector<BlockSchedule> schedules;
  for (int64_t P : {2, 3}) {
    BlockSchedule s;
    s.kind = ScheduleKind::AmPipe;
    s.pipe_degree = P;
    schedules.push_back(s);
    s.kind = ScheduleKind::MoePipe;
    schedules.push_back(s);
  }
  BlockSchedule s;
  s.kind = ScheduleKind::AmPipe;
  s.chunk_boundaries = {0, 1, 20, 21, 37};
  schedules.push_back(s);
  s = BlockSchedule{};
  s.kind = ScheduleKind::AmPipe;
  s.pipe_degree = 3;
  s.chunk_policy = ChunkPolicy::Balanced;
  s.balance_weight = balance_weight(config, false);
  s.moe_pipe_degree = 2;
  schedules.push_back(s);
  for (const BlockSchedule& schedule : schedules)
    for (StageOrder order : {StageOrder::StageMajor, StageOrder::Interleaved})
      for (PipelineScope scope : {PipelineScope::Block, PipelineScope::Model}) {
        StreamedBlock executor(schedule, order, nullptr, 0, scope);
        expect_same(run(config, &executor, batch, N), reference,
                    std::string("bf16 ") + pipeline_scope_name(scope) + " scope " + schedule.describe() +
                        " " + stage_order_name(order),
                    tol);
      }
}

// Activation recomputation: every method, with every kind of executor in both scopes, gives the
// loss, logits and every gradient of the run that keeps its activations, bit for bit (the second
// forward repeats the same kernels on the same values, so routing and activations are the same),
// and the gradient hook still sees each block once, last first.
TEST_P(Schedules, RecomputationIsBitIdentical) {
  const auto [top_k, mixtral] = GetParam();
  ModelConfig config = config_for(top_k, mixtral);
  config.num_layers = 3;
  const int64_t N = 37, batch = 2;
  BlockSchedule ampipe;
  ampipe.kind = ScheduleKind::AmPipe;
  ampipe.pipe_degree = 3;
  BlockSchedule moe_pipe;
  moe_pipe.kind = ScheduleKind::MoePipe;
  moe_pipe.pipe_degree = 2;
  std::vector<std::pair<std::string, std::unique_ptr<StreamedBlock>>> executors;
  executors.emplace_back("sequential", nullptr);
  for (PipelineScope scope : {PipelineScope::Block, PipelineScope::Model}) {
    executors.emplace_back(std::string("ampipe ") + pipeline_scope_name(scope),
                           std::make_unique<StreamedBlock>(ampipe, StageOrder::Interleaved, nullptr, 0, scope));
    executors.emplace_back(std::string("moe-pipe ") + pipeline_scope_name(scope),
                           std::make_unique<StreamedBlock>(moe_pipe, StageOrder::StageMajor, nullptr, 0, scope));
  }
  for (const auto& [name, executor] : executors) {
    const ModelRun reference = run(config, executor.get(), batch, N);
    for (const auto& [method, n] : std::vector<std::pair<std::string, int64_t>>{
             {"uniform", 1}, {"uniform", 2}, {"uniform", 3}, {"block", 1}, {"block", 2}}) {
      const std::string what = name + " --recompute-method " + method + " --recompute-num-layers " + std::to_string(n);
      std::vector<int64_t> done;
      const ModelRun r = run(config, executor.get(), batch, N, [&](int64_t l) { done.push_back(l); },
                             recompute_groups(method, n, config.num_layers));
      EXPECT_EQ(r.loss.lm_loss, reference.loss.lm_loss) << what;
      EXPECT_EQ(r.loss.aux_loss, reference.loss.aux_loss) << what;
      EXPECT_EQ(r.logits, reference.logits) << what;
      ASSERT_EQ(r.grads.size(), reference.grads.size());
      for (size_t i = 0; i < r.grads.size(); ++i) EXPECT_EQ(r.grads[i], reference.grads[i]) << what << " gradient " << i;
      EXPECT_EQ(done, (std::vector<int64_t>{2, 1, 0})) << what;
    }
    // Selective recomputation (each block recomputes its normed attention input and its experts'
    // activation output), alone and with full, in float32 and in bf16 (against bf16 keeping).
    for (bool bf16 : {false, true}) {
      ModelConfig base = config;
      base.bf16 = bf16;
      const ModelRun keep = bf16 ? run(base, executor.get(), batch, N) : reference;
      ModelConfig selective = base;
      selective.selective_recompute = true;
      for (bool with_full : {false, true}) {
        const std::string what = name + (bf16 ? " bf16" : "") + " selective" + (with_full ? " + full uniform 1" : "");
        const ModelRun r = run(selective, executor.get(), batch, N, {},
                               with_full ? recompute_groups("uniform", 1, 3) : std::vector<RecomputeGroup>{});
        EXPECT_EQ(r.loss.lm_loss, keep.loss.lm_loss) << what;
        EXPECT_EQ(r.logits, keep.logits) << what;
        ASSERT_EQ(r.grads.size(), keep.grads.size());
        for (size_t i = 0; i < r.grads.size(); ++i) EXPECT_EQ(r.grads[i], keep.grads[i]) << what << " gradient " << i;
      }
    }
  }
}

TEST(Recompute, GroupsOfEachMethodAndRefusals) {
  auto groups = [](const std::string& m, int64_t n, int64_t L) {
    std::ostringstream s;
    for (const RecomputeGroup& g : recompute_groups(m, n, L))
      s << "[" << g.begin << "," << g.end << (g.recompute ? ")r " : ") ");
    return s.str();
  };
  EXPECT_EQ(groups("", 1, 4), "[0,4) ");
  EXPECT_EQ(groups("uniform", 1, 3), "[0,1)r [1,2)r [2,3)r ");
  EXPECT_EQ(groups("uniform", 3, 7), "[0,3)r [3,6)r [6,7)r ");
  EXPECT_EQ(groups("block", 2, 5), "[0,1)r [1,2)r [2,5) ");
  EXPECT_EQ(groups("block", 3, 3), "[0,1)r [1,2)r [2,3)r ");
  EXPECT_NE(testing::error_of([&] { recompute_groups("full", 1, 3); }).find("--recompute-method 'full'"),
            std::string::npos);
  EXPECT_NE(testing::error_of([&] { recompute_groups("uniform", 4, 3); }).find("--recompute-num-layers 4 is not in [1, 3]"),
            std::string::npos);
}

// The gradient hook of block l runs once every gradient of block l is final: what it reads then
// equals the gradients after the whole backward.
TEST(StreamedBlock, TheGradientHookSeesFinalGradients) {
  ModelConfig config = config_for(2);
  config.num_layers = 3;
  for (PipelineScope scope : {PipelineScope::Block, PipelineScope::Model}) {
    BlockSchedule s;
    s.kind = ScheduleKind::AmPipe;
    s.pipe_degree = 4;
    StreamedBlock executor(s, StageOrder::Interleaved, nullptr, 0, scope);
    GptMoe model(config);
    model.initialize(3);
    model.set_block_executor(&executor);
    std::map<std::string, std::vector<float>> seen;
    auto hook = [&](int64_t l) {
      const std::string prefix = "blocks." + std::to_string(l) + ".";
      for (const Parameter& p : model.params().all())
        if (p.name.rfind(prefix, 0) == 0) seen[p.name] = p.grad.to_vector();
    };
    Rng rng(9);
    std::vector<int32_t> tok(2 * 33);
    for (auto& t : tok) t = static_cast<int32_t>(rng.below(config.vocab_size));
    ForwardState state;
    model.forward(state, Tensor::from_ints({66}, tok), Tensor::from_ints({66}, tok), 2);
    model.backward(state, 1.0, hook);
    size_t block_params = 0;
    for (const Parameter& p : model.params().all()) {
      if (p.name.rfind("blocks.", 0) != 0) continue;
      ++block_params;
      ASSERT_TRUE(seen.count(p.name)) << p.name;
      EXPECT_EQ(seen[p.name], p.grad.to_vector()) << p.name << " changed after its block's hook ran ("
                                                  << pipeline_scope_name(scope) << " scope)";
    }
    EXPECT_EQ(seen.size(), block_params);
  }
}

// A failing task anywhere in a pass (either scope, either direction) reaches the caller.
TEST(StreamedBlock, AFailingTaskOfAPassReachesTheCaller) {
  ModelConfig config = config_for(1);
  config.num_layers = 3;
  BlockSchedule s;
  s.kind = ScheduleKind::AmPipe;
  s.pipe_degree = 3;
  for (PipelineScope scope : {PipelineScope::Block, PipelineScope::Model}) {
    for (const char* label : {"ln1+qkv chunk c1 L2", "a2a combine c2 L1", "experts bwd c0 L0", "qkv+ln1 bwd chunk c2 L1",
                              "grad reduce L1", "ln1+qkv L1", "qkv+ln1 bwd L0"}) {
      const std::string what = std::string(pipeline_scope_name(scope)) + " scope, failing '" + label + "'";
      const bool chunked = std::string(label).find("chunk") != std::string::npos;
      const bool whole = !chunked && std::string(label).find("qkv") != std::string::npos;
      if ((scope == PipelineScope::Block && chunked) || (scope == PipelineScope::Model && whole)) continue;
      StreamedBlock executor(s, StageOrder::StageMajor, nullptr, 0, scope);
      executor.inject_failure(label);
      GptMoe model(config);
      model.initialize(1);
      model.set_block_executor(&executor);
      std::vector<int32_t> tok(20, 1);
      ForwardState state;
      try {
        model.forward(state, Tensor::from_ints({20}, tok), Tensor::from_ints({20}, tok), 1);
        model.backward(state, 1.0, [](int64_t) {});
        ADD_FAILURE() << what << ": no error";
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(std::string("task '") + label + "' failed"), std::string::npos)
            << what << ": " << e.what();
      }
    }
  }
}

// A failing stage inside the two-stream executor reaches the caller instead of hanging.
TEST(StreamedBlock, AnErrorInAStageReachesTheCaller) {
  ModelConfig config = config_for(1);
  GptMoe model(config);
  model.initialize(1);
  BlockSchedule s;
  s.kind = ScheduleKind::AmPipe;
  s.chunk_boundaries = {0, 5, 50};  // past the sequence of 20: refused inside the executor
  StreamedBlock executor(s, StageOrder::StageMajor);
  model.set_block_executor(&executor);
  ForwardState state;
  std::vector<int32_t> tok(20, 1);
  EXPECT_THROW(model.forward(state, Tensor::from_ints({20}, tok), Tensor::from_ints({20}, tok), 1), Error);
}

TEST(Schedule, EqualBoundariesSpreadTheRemainder) {
  BlockSchedule s;
  s.kind = ScheduleKind::AmPipe;
  s.pipe_degree = 4;
  EXPECT_EQ(s.boundaries(10), (std::vector<int64_t>{0, 3, 6, 8, 10}));
  s.pipe_degree = 20;
  EXPECT_EQ(s.boundaries(3), (std::vector<int64_t>{0, 1, 2, 3}));
  s.kind = ScheduleKind::Sequential;
  EXPECT_EQ(s.boundaries(10), (std::vector<int64_t>{0, 10}));
}

TEST(Schedule, BadInputIsRefused) {
  EXPECT_THROW(parse_schedule("pipedream"), Error);
  EXPECT_THROW(parse_chunk_boundaries("0,5,x"), Error);
  // Noticed while writing tests/fuzz/fuzz_schedule.cpp: a trailing comma, an empty item or a leading
  // space were accepted silently.
  EXPECT_THROW(parse_chunk_boundaries("0,5,"), Error);
  EXPECT_THROW(parse_chunk_boundaries("0,,5"), Error);
  EXPECT_THROW(parse_chunk_boundaries("0, 5"), Error);
  BlockSchedule s;
  s.kind = ScheduleKind::AmPipe;
  s.chunk_boundaries = {0, 5, 5, 10};
  EXPECT_THROW(s.validate(), Error);
  s.chunk_boundaries = {0, 5, 9};
  EXPECT_THROW(s.boundaries(10), Error);
  s.chunk_boundaries = {};
  s.pipe_degree = 0;
  EXPECT_THROW(s.validate(), Error);
  EXPECT_EQ(parse_chunk_boundaries("0,512,2048"), (std::vector<int64_t>{0, 512, 2048}));
  EXPECT_EQ(parse_schedule("moe_pipe"), ScheduleKind::MoePipe);
  EXPECT_THROW(parse_chunk_policy("even"), Error);
  EXPECT_THROW(parse_stage_order("random"), Error);
  s.moe_pipe_degree = -1;
  s.pipe_degree = 2;
  EXPECT_THROW(s.validate(), Error);
}

TEST(Schedule, BalancedBoundariesEqualiseChunkCost) {
  const double w = 100;
  const auto b = balanced_boundaries(1000, 4, w);
  ASSERT_EQ(b.size(), 5u);
  EXPECT_EQ(b.front(), 0);
  EXPECT_EQ(b.back(), 1000);
  auto cost = [&](size_t c) { return double(b[c + 1]) * b[c + 1] - double(b[c]) * b[c] + w * (b[c + 1] - b[c]); };
  for (size_t c = 0; c < 4; ++c) EXPECT_NEAR(cost(c) / cost(0), 1.0, 0.01) << "chunk " << c;
  // Causal attention makes later chunks costlier: balanced chunks shrink along the sequence.
  for (size_t c = 1; c < 4; ++c) EXPECT_LT(b[c + 1] - b[c], b[c] - b[c - 1]);
  // A huge per-token weight gives (nearly) equal chunks; every chunk keeps at least one position.
  EXPECT_EQ(balanced_boundaries(1000, 4, 1e12), (std::vector<int64_t>{0, 250, 500, 750, 1000}));
  EXPECT_EQ(balanced_boundaries(3, 3, 0), (std::vector<int64_t>{0, 1, 2, 3}));
}

TEST(Schedule, PlansCutBothSides) {
  BlockSchedule s;
  s.kind = ScheduleKind::MoePipe;
  s.pipe_degree = 3;
  EXPECT_EQ(s.plan(9), (ChunkPlan{{0, 9}, {0, 3, 6, 9}}));
  s.kind = ScheduleKind::Sequential;
  EXPECT_EQ(s.plan(9), (ChunkPlan{{0, 9}, {0, 9}}));
  s.kind = ScheduleKind::AmPipe;
  EXPECT_EQ(s.plan(9), (ChunkPlan{{0, 3, 6, 9}, {0, 3, 6, 9}}));
  s.moe_pipe_degree = 2;
  EXPECT_EQ(s.plan(9), (ChunkPlan{{0, 3, 6, 9}, {0, 5, 9}}));
}

std::string describe(const std::vector<StageTask>& tasks) {
  std::ostringstream out;
  for (size_t i = 0; i < tasks.size(); ++i) {
    if (i) out << " | ";
    out << stage_name(tasks[i].stage);
    if (tasks[i].chunk >= 0) out << tasks[i].chunk;
    for (int w : tasks[i].waits) out << "<" << w;
  }
  return out.str();
}

TEST(TaskList, AmPipeStageMajorAndInterleavedOrders) {
  const ChunkPlan p{{0, 2, 4, 6}, {0, 2, 4, 6}};
  EXPECT_EQ(describe(forward_tasks(p, StageOrder::StageMajor)),
            "ln1+qkv | attention0 | route0 | a2a dispatch0<2 | attention1 | route1 | a2a dispatch1<5 | "
            "attention2 | route2 | a2a dispatch2<8 | experts0<3 | a2a combine0<10 | experts1<6 | "
            "a2a combine1<12 | experts2<9 | a2a combine2<14 | combine0<11 | combine1<13 | combine2<15");
  EXPECT_EQ(describe(forward_tasks(p, StageOrder::Interleaved)),
            "ln1+qkv | attention0 | route0 | a2a dispatch0<2 | attention1 | route1 | a2a dispatch1<5 | "
            "experts0<3 | a2a combine0<7 | attention2 | route2 | a2a dispatch2<10 | experts1<6 | "
            "a2a combine1<12 | combine0<8 | experts2<11 | a2a combine2<15 | combine1<13 | combine2<16");
  EXPECT_EQ(describe(backward_tasks(p, StageOrder::StageMajor)),
            "combine bwd2 | a2a combine bwd2<0 | combine bwd1 | a2a combine bwd1<2 | combine bwd0 | "
            "a2a combine bwd0<4 | experts bwd2<1 | a2a dispatch bwd2<6 | experts bwd1<3 | a2a dispatch bwd1<8 | "
            "experts bwd0<5 | a2a dispatch bwd0<10 | route bwd2<7 | attention bwd2 | route bwd1<9 | "
            "attention bwd1 | route bwd0<11 | attention bwd0 | qkv+ln1 bwd");
  EXPECT_EQ(describe(backward_tasks(p, StageOrder::Interleaved)),
            "combine bwd2 | a2a combine bwd2<0 | combine bwd1 | a2a combine bwd1<2 | experts bwd2<1 | "
            "a2a dispatch bwd2<4 | combine bwd0 | a2a combine bwd0<6 | experts bwd1<3 | a2a dispatch bwd1<8 | "
            "route bwd2<5 | attention bwd2 | experts bwd0<7 | a2a dispatch bwd0<12 | route bwd1<9 | "
            "attention bwd1 | route bwd0<13 | attention bwd0 | qkv+ln1 bwd");
}

TEST(TaskList, TheMoeSideRoutesOnceItsPositionsAreReady) {
  // Attention chunks [0,2) [2,5) [5,6); MoE chunks [0,3) [3,6): MoE 0 needs attention 1, MoE 1 needs 2.
  const ChunkPlan p{{0, 2, 5, 6}, {0, 3, 6}};
  EXPECT_EQ(describe(forward_tasks(p, StageOrder::StageMajor)),
            "ln1+qkv | attention0 | attention1 | route0 | a2a dispatch0<3 | attention2 | route1 | "
            "a2a dispatch1<6 | experts0<4 | a2a combine0<8 | experts1<7 | a2a combine1<10 | combine0<9 | "
            "combine1<11");
  // Backward takes MoE 1 first: attention 2 needs only MoE 1's gradient, attention 1 spans both MoE
  // chunks and attention 0 needs MoE 0.
  EXPECT_EQ(describe(backward_tasks(p, StageOrder::StageMajor)),
            "combine bwd1 | a2a combine bwd1<0 | combine bwd0 | a2a combine bwd0<2 | experts bwd1<1 | "
            "a2a dispatch bwd1<4 | experts bwd0<3 | a2a dispatch bwd0<6 | route bwd1<5 | attention bwd2 | "
            "route bwd0<7 | attention bwd1 | attention bwd0 | qkv+ln1 bwd");
  EXPECT_THROW(forward_tasks(ChunkPlan{{0, 2, 6}, {0, 3, 5}}, StageOrder::StageMajor), Error);
}

std::vector<ChunkPlan> plans_to_check() {
  return {ChunkPlan{{0, 12}, {0, 12}},          ChunkPlan{{0, 12}, {0, 4, 8, 12}},
          ChunkPlan{{0, 3, 6, 9, 12}, {0, 3, 6, 9, 12}}, ChunkPlan{{0, 1, 7, 8, 12}, {0, 1, 7, 8, 12}},
          ChunkPlan{{0, 2, 5, 12}, {0, 6, 12}},  ChunkPlan{{0, 6, 12}, {0, 2, 5, 7, 12}},
          ChunkPlan{{0, 4, 8, 12}, {0, 3, 6, 9, 12}}};
}

// Every list the builders make satisfies the dependency rule of task_list.h, in both scopes, with
// and without gradient reduction and parameter gathering, for 1 to 4 blocks.
TEST(TaskList, EveryPassListSatisfiesTheDependencyRule) {
  for (const ChunkPlan& plan : plans_to_check())
    for (StageOrder order : {StageOrder::StageMajor, StageOrder::Interleaved})
      for (PipelineScope scope : {PipelineScope::Block, PipelineScope::Model})
        for (int64_t L : {1, 2, 3, 4})
          for (int extras = 0; extras < 3; ++extras) {
            // none; gradient reduction and parameter gathering; and delayed weight gradients too
            const PassShape pass{L, scope, extras >= 1, extras >= 1, extras == 2};
            SCOPED_TRACE(std::string(pipeline_scope_name(scope)) + " " + stage_order_name(order) + " L=" +
                         std::to_string(L) + " A=" + std::to_string(plan.attention.size() - 1) +
                         " M=" + std::to_string(plan.moe.size() - 1));
            EXPECT_NO_THROW(check_task_list(forward_tasks(plan, order, pass), plan, pass, false));
            EXPECT_NO_THROW(check_task_list(backward_tasks(plan, order, pass), plan, pass, true));
          }
}

using ::ampipe::testing::ordered_before;

// The checker has teeth: removing any one wait of a pass's list is refused unless another path
// still orders the two tasks (a redundant edge: a later task of the same stream waits for a later
// task of the other), and moving a block's task ahead of the block it depends on is refused.
TEST(TaskList, RemovingAnyNeededEdgeBreaksTheDependencyRule) {
  int needed = 0, redundant = 0;
  for (const ChunkPlan& plan : plans_to_check())
    for (StageOrder order : {StageOrder::StageMajor, StageOrder::Interleaved})
      for (PipelineScope scope : {PipelineScope::Block, PipelineScope::Model})
        for (int backward_kind = 0; backward_kind < 3; ++backward_kind) {
          // forward; backward; backward with delayed weight gradients (--delay-wgrad-compute)
          const bool backward = backward_kind > 0;
          const PassShape pass{3, scope, true, true, backward_kind == 2};
          const std::vector<StageTask> tasks =
              backward ? backward_tasks(plan, order, pass) : forward_tasks(plan, order, pass);
          for (size_t i = 0; i < tasks.size(); ++i)
            for (size_t w = 0; w < tasks[i].waits.size(); ++w) {
              std::vector<StageTask> cut = tasks;
              cut[i].waits.erase(cut[i].waits.begin() + static_cast<std::ptrdiff_t>(w));
              if (ordered_before(cut, i, static_cast<size_t>(tasks[i].waits[w]))) {
                ++redundant;
                EXPECT_NO_THROW(check_task_list(cut, plan, pass, backward));
                continue;
              }
              ++needed;
              EXPECT_THROW(check_task_list(cut, plan, pass, backward), Error)
                  << "removing wait " << w << " of task " << i << " (" << stage_name(tasks[i].stage) << " c"
                  << tasks[i].chunk << " L" << tasks[i].layer << ") went unnoticed";
            }
          // The first task of block 1 (forward) or block 1's first task (backward) moved to the front.
          for (size_t i = 0; i < tasks.size(); ++i) {
            if (tasks[i].layer != 1 || tasks[i].stream() != StreamRole::Compute) continue;
            std::vector<StageTask> moved;
            moved.push_back(tasks[i]);
            moved.back().waits.clear();
            for (size_t j = 0; j < tasks.size(); ++j) {
              if (j == i) continue;
              StageTask t = tasks[j];
              for (int& wt : t.waits) wt = wt < static_cast<int>(i) ? wt + 1 : wt;
              moved.push_back(t);
            }
            EXPECT_THROW(check_task_list(moved, plan, pass, backward), Error)
                << "block 1's " << stage_name(tasks[i].stage) << " first went unnoticed";
            break;
          }
        }
  EXPECT_GT(needed, 10 * redundant);  // almost every edge carries a dependency of its own
}

// Model scope is a wavefront: block 1 starts before block 0 has finished (forward), and block 0's
// backward before block 1's has; block scope never mixes blocks.
TEST(TaskList, ModelScopeInterleavesBlocksAndBlockScopeDoesNot) {
  const ChunkPlan plan{{0, 3, 6, 9, 12}, {0, 3, 6, 9, 12}};
  for (PipelineScope scope : {PipelineScope::Block, PipelineScope::Model}) {
    const PassShape pass{3, scope, false};
    for (bool backward : {false, true}) {
      const auto tasks = backward ? backward_tasks(plan, StageOrder::StageMajor, pass)
                                  : forward_tasks(plan, StageOrder::StageMajor, pass);
      int switches = 0;
      for (size_t i = 1; i < tasks.size(); ++i) switches += tasks[i].layer != tasks[i - 1].layer;
      if (scope == PipelineScope::Block) EXPECT_EQ(switches, 2) << (backward ? "backward" : "forward");
      else EXPECT_GT(switches, 6) << (backward ? "backward" : "forward");
    }
  }
  // Forward, model scope, 2 blocks of 2 chunks: block 1's chunk 0 runs once block 0's chunk 0 is
  // finished, while block 0's last chunk is still in its all-to-all.
  const PassShape model{2, PipelineScope::Model, false};
  EXPECT_EQ(describe(forward_tasks(ChunkPlan{{0, 2, 4}, {0, 2, 4}}, StageOrder::StageMajor, model)),
            "ln1+qkv chunk0 | attention0 | route0 | a2a dispatch0<2 | ln1+qkv chunk1 | attention1 | route1 | "
            "a2a dispatch1<6 | experts0<3 | a2a combine0<8 | experts1<7 | a2a combine1<10 | combine0<9 | "
            "ln1+qkv chunk0 | attention0 | route0 | a2a dispatch0<15 | combine1<11 | ln1+qkv chunk1 | attention1 | "
            "route1 | a2a dispatch1<20 | experts0<16 | a2a combine0<22 | experts1<21 | a2a combine1<24 | "
            "combine0<23 | combine1<25");
}

// --overlap-param-gather: block 0's parameters first, block l+1's just before block l's first
// dispatch (under block l's attention), each block's first compute task waiting for its own.
TEST(TaskList, ParameterGathersGoAheadOfTheirBlocks) {
  const PassShape model{2, PipelineScope::Model, false, true};
  EXPECT_EQ(
      describe(forward_tasks(ChunkPlan{{0, 2, 4}, {0, 2, 4}}, StageOrder::StageMajor, model)),
      "param gather | ln1+qkv chunk0<0 | attention0 | route0 | param gather | a2a dispatch0<3 | ln1+qkv "
      "chunk1 | "
      "attention1 | route1 | a2a dispatch1<8 | experts0<5 | a2a combine0<10 | experts1<9 | a2a combine1<12 | "
      "combine0<11 | ln1+qkv chunk0<4 | attention0 | route0 | a2a dispatch0<17 | combine1<13 | ln1+qkv "
      "chunk1 | "
      "attention1 | route1 | a2a dispatch1<22 | experts0<18 | a2a combine0<24 | experts1<23 | a2a "
      "combine1<26 | "
      "combine0<25 | combine1<27");
  const PassShape block{2, PipelineScope::Block, false, true};
  EXPECT_EQ(
      describe(forward_tasks(ChunkPlan{{0, 4}, {0, 4}}, StageOrder::StageMajor, block)),
      "param gather | ln1+qkv<0 | attention0 | route0 | param gather | a2a dispatch0<3 | experts0<5 | "
      "a2a combine0<6 | combine0<7 | ln1+qkv<4 | attention0 | route0 | a2a dispatch0<11 | experts0<12 | "
      "a2a combine0<13 | combine0<14");
  // Block 1's gather moved to the end of the list (and its wait dropped): block 1 may then run
  // before its parameters arrive, which the rule refuses.
  const ChunkPlan one{{0, 4}, {0, 4}};
  std::vector<StageTask> tasks = forward_tasks(one, StageOrder::StageMajor, block), late;
  int gather = -1;
  for (size_t i = 0; i < tasks.size(); ++i)
    if (tasks[i].stage == Stage::ParamGather && tasks[i].layer == 1) gather = static_cast<int>(i);
  ASSERT_GE(gather, 0);
  for (size_t i = 0; i < tasks.size(); ++i) {
    if (static_cast<int>(i) == gather) continue;
    StageTask t = tasks[i];
    std::vector<int> waits;
    for (int w : t.waits)
      if (w != gather) waits.push_back(w > gather ? w - 1 : w);
    t.waits = waits;
    late.push_back(t);
  }
  late.push_back(tasks[static_cast<size_t>(gather)]);
  EXPECT_THROW(check_task_list(late, one, block, false), Error);
}

TEST(TaskList, BadPassesAndBrokenListsAreRefused) {
  const ChunkPlan plan{{0, 2, 4}, {0, 2, 4}};
  EXPECT_THROW(forward_tasks(plan, StageOrder::StageMajor, PassShape{0}), Error);
  EXPECT_THROW(parse_pipeline_scope("layer"), Error);
  EXPECT_EQ(parse_pipeline_scope("model"), PipelineScope::Model);
  const PassShape pass{2, PipelineScope::Model, false};
  std::vector<StageTask> tasks = forward_tasks(plan, StageOrder::StageMajor, pass);
  std::vector<StageTask> dropped(tasks.begin(), tasks.end() - 1);
  EXPECT_THROW(check_task_list(dropped, plan, pass, false), Error);  // a finish missing
  std::vector<StageTask> twice = tasks;
  twice.push_back(tasks.back());
  twice.back().waits.clear();
  EXPECT_THROW(check_task_list(twice, plan, pass, false), Error);
  EXPECT_THROW(check_task_list(tasks, plan, PassShape{2, PipelineScope::Block, false}, false), Error);
}

}  // namespace
}  // namespace ampipe
