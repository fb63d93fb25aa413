// The whole training step on several ranks (2 and 4, under mpirun): passes over 2 and 3 blocks in
// model scope (chunks flowing across blocks) and block scope, with the data-parallel gradient
// reduction after the backward or overlapped with it (GradientBuckets on the comm stream), equal
// the sequential model reduced by average_gradients: the loss, the logits and every averaged
// gradient, on every rank. Every rank issues its collectives in list order; a wrong order would
// hang (CTest's timeout) or mix up buckets (wrong gradients).
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <sstream>

#include "core/random.h"
#include "grad_check.h"
#include "model/gpt.h"
#include "parallel/mpi_gtest_main.h"
#include "parallel/pipe_cases.h"
#include "pipeline/paired_tasks.h"
#include "pipeline/streamed_block.h"
#include "test_util.h"
#include "train/distributed.h"

namespace ampipe {
namespace {

std::unique_ptr<Communicator> g_world;

using namespace ::ampipe::testing;  // NOLINT: the shared pipeline cases (parallel/pipe_cases.h)

// Schedules from pipe_configs(), by name: both sides cut alike, uneven, a MoE side of its own, moe-pipe.
const std::vector<PipeConfig>& step_schedules() {
  static const std::vector<PipeConfig> s = [] {
    std::vector<PipeConfig> chosen;
    for (const char* name : {"AmPipeP3_StageMajor", "AmPipeUneven_0_3_10_16_Interleaved",
                             "AmPipeBalancedP3_Moe2_Interleaved", "MoePipeP4_Interleaved"})
      for (const PipeConfig& c : pipe_configs())
        if (std::string(c.name) == name) chosen.push_back(c);
    return chosen;
  }();
  return s;
}



struct StepCase {
  bool mixtral;
  int64_t top_k;
  size_t schedule;  // into step_schedules()
  int64_t layers;
  PipelineScope scope;
  bool overlap;
};

std::vector<StepCase> step_cases() {
  std::vector<StepCase> cases;
  for (bool mixtral : {false, true})
    for (int64_t k : {1, 2})
      for (size_t s = 0; s < step_schedules().size(); ++s) {
        cases.push_back({mixtral, k, s, 2, PipelineScope::Model, false});
        cases.push_back({mixtral, k, s, 2, PipelineScope::Model, true});
        cases.push_back({mixtral, k, s, 2, PipelineScope::Block, true});
        cases.push_back({mixtral, k, s, 3, PipelineScope::Model, true});
      }
  return cases;
}

std::string step_case_name(const StepCase& c) {
  return std::string(c.mixtral ? "Mixtral" : "Gpt") + "_Top" + std::to_string(c.top_k) + "_L" +
         std::to_string(c.layers) + "_" + pipeline_scope_name(c.scope) + (c.overlap ? "_Overlapped_" : "_After_") +
         step_schedules()[c.schedule].name;
}
std::string step_test_name(const ::testing::TestParamInfo<StepCase>& info) { return step_case_name(info.param); }
void PrintTo(const StepCase& c, std::ostream* out) { *out << step_case_name(c); }




// One step's forward, backward and gradient average on this rank's tokens. executor null: the
// sequential model with average_gradients (per parameter), the reference.
RankRun run_step(const ModelConfig& config, const TrainingGroups& groups, const StreamedBlock* executor,
                 bool overlap) {
  GptMoe model(config, groups.model_parallel());
  model.initialize(11);
  set_pipe_parameters(model);
  model.set_block_executor(executor);
  ForwardState state;
  RankRun r;
  forward_rank_batch(model, 7, groups.rank(), state, r);  // every rank its own tokens
  if (executor == nullptr) {
    model.backward(state);
    average_gradients(model.params(), groups);
  } else {
    GradientBuckets buckets(model.params(), groups, config.num_layers);
    if (overlap) {
      std::vector<int64_t> reduced;
      model.backward(state, 1.0, [&](int64_t l) {
        reduced.push_back(l);
        buckets.reduce_block(l);
      });
      buckets.reduce_rest();
      std::vector<int64_t> expected;
      for (int64_t l = config.num_layers - 1; l >= 0; --l) expected.push_back(l);
      EXPECT_EQ(reduced, expected) << "the buckets were not reduced once each, last block first";
    } else {
      model.backward(state);
      buckets.reduce_all();
    }
  }
  collect_gradients(model, r);
  return r;
}

const RankRun& reference(const ModelConfig& config, const TrainingGroups& groups) {
  static std::map<std::string, RankRun> cache;
  std::ostringstream key;
  key << config.family << " k=" << config.top_k << " L=" << config.num_layers;
  auto it = cache.find(key.str());
  if (it == cache.end()) it = cache.emplace(key.str(), run_step(config, groups, nullptr, false)).first;
  return it->second;
}



class WholeStepOnSeveralRanks : public ::testing::TestWithParam<StepCase> {};

TEST_P(WholeStepOnSeveralRanks, LossAndEveryAveragedGradientEqualTheSequentialModel) {
  const StepCase c = GetParam();
  const ModelConfig config = pipe_model(c.mixtral, c.top_k, 0.0, c.layers);
  const TrainingGroups groups = make_training_groups(*g_world, 0, config.num_experts);
  const RankRun& want = reference(config, groups);
  const PipeConfig& s = step_schedules()[c.schedule];
  const StreamedBlock executor(schedule_of(s, config), s.order, nullptr, 0, c.scope);
  const RankRun got = run_step(config, groups, &executor, c.overlap);
  {
    SCOPED_TRACE("rank " + std::to_string(g_world->rank()) + ", " + step_case_name(c));
    expect_same_on_this_rank(got, want);
  }
  expect_no_rank_failed(*g_world);
}

// Collectives appear in the same order on every rank: each rank builds its task lists for every
// case (as the executor does from its own flags) and the sequence of its comm-stream tasks
// (stage, block, chunk) is compared across ranks by a hash: its minimum and maximum over the world.
TEST(WholeStepOnSeveralRanks, TheCommTasksAreTheSameSequenceOnEveryRank) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a over (stage, layer, chunk) of each comm task
  auto mix = [&h](int64_t v) {
    for (int b = 0; b < 8; ++b) {
      h ^= static_cast<uint64_t>(v >> (8 * b)) & 0xff;
      h *= 1099511628211ull;
    }
  };
  int64_t comm_tasks = 0;
  for (const StepCase& c : step_cases()) {
    const ModelConfig config = pipe_model(c.mixtral, c.top_k, 0.0, c.layers);
    const PipeConfig& s = step_schedules()[c.schedule];
    const ChunkPlan plan = schedule_of(s, config).plan(kPipeSeqLen);
    const PassShape pass{c.layers, c.scope, c.overlap};
    // and the paired list of a backward and the next forward (delayed weight gradients), merged by
    // seconds every rank computes alike
    PassShape delayed{c.layers, c.scope};
    delayed.delay_wgrad = true;
    const std::vector<StageTask> bwd = backward_tasks(plan, s.order, delayed),
                                 fwd = forward_tasks(plan, s.order, {c.layers, c.scope});
    auto seconds = [](const std::vector<StageTask>& l) {
      std::vector<double> out;
      for (const StageTask& t : l)
        out.push_back(t.stream() == StreamRole::Comm ? 3.0 + t.chunk : 1.0 + t.layer);
      return out;
    };
    for (const auto& list : {forward_tasks(plan, s.order, pass), backward_tasks(plan, s.order, pass),
                             paired_tasks(bwd, seconds(bwd), fwd, seconds(fwd))})
      for (const StageTask& t : list)
        if (t.stream() == StreamRole::Comm) {
          mix(static_cast<int64_t>(t.stage));
          mix(t.layer);
          mix(t.chunk);
          ++comm_tasks;
        }
  }
  const int64_t mine = static_cast<int64_t>(h >> 1);
  int64_t high = mine, negated_low = -mine;
  g_world->all_reduce_max(high);
  g_world->all_reduce_max(negated_low);
  const int64_t low = -negated_low;
  EXPECT_EQ(low, high) << "the ranks' comm-task sequences differ";
  EXPECT_GT(comm_tasks, 1000);
  expect_no_rank_failed(*g_world);
}

INSTANTIATE_TEST_SUITE_P(Steps, WholeStepOnSeveralRanks, ::testing::ValuesIn(step_cases()), step_test_name);

// A step of three micro-batches with gradient accumulation (scale 1/3) and the data-parallel
// reduction (overlapped with the last backward, or after it), as the trainer runs it: unpaired, or
// paired (--overlap-moe-expert-parallel-comm: each backward beside the next forward). Returns every
// micro-batch's loss and the reduced gradients.
struct AccumulatedRun {
  std::vector<LossParts> losses;
  std::vector<std::vector<float>> grads;
};

AccumulatedRun run_accumulated(const ModelConfig& config, const TrainingGroups& groups,
                               const StreamedBlock& executor, bool overlap, bool paired) {
  GptMoe model(config, groups.model_parallel());
  model.initialize(11);
  set_pipe_parameters(model);
  model.set_block_executor(&executor);
  GradientBuckets buckets(model.params(), groups, config.num_layers);
  const int64_t A = 3, T = kPipeBatch * kPipeSeqLen;
  std::vector<Tensor> tokens, targets;
  Rng rng(31 + 1000 * static_cast<uint64_t>(groups.rank()));  // every rank its own tokens
  for (int64_t m = 0; m < A; ++m) {
    std::vector<int32_t> tok(T), tgt(T);
    for (auto& t : tok) t = static_cast<int32_t>(rng.below(config.vocab_size));
    for (auto& t : tgt) t = static_cast<int32_t>(rng.below(config.vocab_size));
    tokens.push_back(Tensor::from_ints({T}, tok));
    targets.push_back(Tensor::from_ints({T}, tgt));
  }
  model.params().zero_grad();
  AccumulatedRun r;
  ForwardState states[A];
  auto last_backward = [&](ForwardState& state) {
    if (overlap) {
      model.backward(state, 1.0 / A, [&](int64_t l) { buckets.reduce_block(l); });
      buckets.reduce_rest();
    } else {
      model.backward(state, 1.0 / A);
      buckets.reduce_all();
    }
  };
  r.losses.push_back(model.forward(states[0], tokens[0], targets[0], kPipeBatch));
  for (int64_t m = 1; m < A; ++m) {
    if (paired) {
      r.losses.push_back(
          model.backward_and_forward(states[m - 1], 1.0 / A, states[m], tokens[m], targets[m], kPipeBatch));
    } else {
      model.backward(states[m - 1], 1.0 / A);
      r.losses.push_back(model.forward(states[m], tokens[m], targets[m], kPipeBatch));
    }
  }
  last_backward(states[A - 1]);
  for (const Parameter& p : model.params().all()) r.grads.push_back(p.grad.to_vector());
  return r;
}

// Paired equals unpaired bit for bit on every rank (the same arithmetic per micro-batch, the same
// accumulation order), every case of the whole step, half of them with delayed weight gradients.
// The merge orders the two passes by cost-model seconds, the same on every rank.
class PairedStepOnSeveralRanks : public ::testing::TestWithParam<StepCase> {};

TEST_P(PairedStepOnSeveralRanks, BitIdenticalToUnpairedOnEveryRank) {
  const StepCase c = GetParam();
  const ModelConfig config = pipe_model(c.mixtral, c.top_k, 0.0, c.layers);
  const TrainingGroups groups = make_training_groups(*g_world, 0, config.num_experts);
  const PipeConfig& s = step_schedules()[c.schedule];
  const StreamedBlock plain(schedule_of(s, config), s.order, nullptr, 0, c.scope);
  const AccumulatedRun want = run_accumulated(config, groups, plain, c.overlap, false);
  // Delayed weight gradients in half the cases, spread over schedules, scopes and reductions (each
  // case once paired, to keep the suite's time).
  const bool delay =
      (c.schedule + static_cast<size_t>(c.layers) + (c.scope == PipelineScope::Model) + c.overlap) % 2;
  {
    StreamedBlock executor(schedule_of(s, config), s.order, nullptr, 0, c.scope);
    executor.set_delay_wgrad(delay);
    executor.set_task_seconds([](const StageTask& t, const ChunkPlan& p) {
      // a slow link: comm tasks by their rows, compute tasks cheaper
      const std::vector<int64_t>& b = is_attention_stage(t.stage) ? p.attention : p.moe;
      const double rows = t.chunk >= 0 ? static_cast<double>(b[t.chunk + 1] - b[t.chunk]) : 16.0;
      return t.stream() == StreamRole::Comm ? 3 * rows : rows;
    });
    const AccumulatedRun got = run_accumulated(config, groups, executor, c.overlap, true);
    SCOPED_TRACE("rank " + std::to_string(g_world->rank()) + ", " + step_case_name(c) +
                 (delay ? ", delayed wgrad" : ""));
    ASSERT_EQ(got.losses.size(), want.losses.size());
    for (size_t m = 0; m < got.losses.size(); ++m) {
      EXPECT_EQ(got.losses[m].lm_loss, want.losses[m].lm_loss) << "micro-batch " << m;
      EXPECT_EQ(got.losses[m].aux_loss, want.losses[m].aux_loss) << "micro-batch " << m;
    }
    ASSERT_EQ(got.grads.size(), want.grads.size());
    for (size_t i = 0; i < got.grads.size(); ++i) EXPECT_EQ(got.grads[i], want.grads[i]) << "gradient " << i;
  }
  expect_no_rank_failed(*g_world);
}

INSTANTIATE_TEST_SUITE_P(Steps, PairedStepOnSeveralRanks, ::testing::ValuesIn(step_cases()), step_test_name);

}  // namespace
}  // namespace ampipe

int main(int argc, char** argv) {
  return ampipe::testing::run_mpi_tests(argc, argv, ampipe::g_world, "mpi_test_whole_step");
}
