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
#include "pipeline/streamed_block.h"
#include "test_util.h"
#include "train/distributed.h"

namespace ampipe {
namespace {

std::unique_ptr<Communicator> g_world;

constexpr int64_t kSeq = 16, kBatch = 2;

ModelConfig step_model(bool mixtral, int64_t top_k, int64_t layers) {
  ModelConfig c;
  if (mixtral) {
    c.set_family("mixtral");
    c.num_query_groups = 1;
    c.rotary_base = 100;
  }
  c.vocab_size = 17;
  c.max_seq_len = kSeq;
  c.hidden_size = 16;
  c.num_attention_heads = 2;
  c.num_layers = layers;
  c.num_experts = 4;
  c.ffn_hidden_size = 24;
  c.top_k = top_k;
  c.aux_loss_weight = 0.1;
  return c;
}

struct StepSchedule {
  const char* name;
  ScheduleKind kind;
  int64_t pipe_degree;
  std::vector<int64_t> boundaries;
  ChunkPolicy policy;
  int64_t moe_pipe_degree;
  StageOrder order;
};

const std::vector<StepSchedule>& step_schedules() {
  static const std::vector<StepSchedule> s = {
      {"AmPipeP3_StageMajor", ScheduleKind::AmPipe, 3, {}, ChunkPolicy::Equal, 0, StageOrder::StageMajor},
      {"AmPipeUneven_0_3_10_16_Interleaved", ScheduleKind::AmPipe, 3, {0, 3, 10, 16}, ChunkPolicy::Equal, 0,
       StageOrder::Interleaved},
      {"AmPipeBalancedP3_Moe2_Interleaved", ScheduleKind::AmPipe, 3, {}, ChunkPolicy::Balanced, 2,
       StageOrder::Interleaved},
      {"MoePipeP4_StageMajor", ScheduleKind::MoePipe, 4, {}, ChunkPolicy::Equal, 0, StageOrder::StageMajor},
  };
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

BlockSchedule schedule_of(const StepSchedule& p, const ModelConfig& model) {
  BlockSchedule s;
  s.kind = p.kind;
  s.pipe_degree = p.pipe_degree;
  s.chunk_boundaries = p.boundaries;
  s.chunk_policy = p.policy;
  s.moe_pipe_degree = p.moe_pipe_degree;
  if (p.policy == ChunkPolicy::Balanced) s.balance_weight = balance_weight(model, p.moe_pipe_degree == 0);
  return s;
}

struct StepRun {
  LossParts loss;
  std::vector<float> logits;
  std::vector<std::string> names;
  std::vector<std::vector<float>> grads;  // averaged over the data-parallel ranks
};

// Full-size random tensors, sliced for experts: every layout holds the same model.
void set_parameters(GptMoe& model) {
  uint64_t seed = 300;
  for (Parameter& p : model.params().all()) {
    Shape full = p.value.shape();
    if (p.is_expert) full[0] = model.config().num_experts;
    Tensor whole = testing::random_tensor(full, seed++, p.weight_decay ? 0.2f : 0.05f);
    Tensor mine = p.is_expert ? whole.rows(p.expert_offset, p.expert_offset + p.value.dim(0)) : whole;
    if (p.weight_decay) {
      p.value.copy_from(mine);
    } else {
      std::vector<float> v = p.value.to_vector(), d = mine.to_vector();
      for (size_t i = 0; i < v.size(); ++i) v[i] += d[i];
      p.value.copy_from(Tensor::from(p.value.shape(), v));
    }
  }
}

// One step's forward, backward and gradient average on this rank's tokens. executor null: the
// sequential model with average_gradients (per parameter), the reference.
StepRun run_step(const ModelConfig& config, const TrainingGroups& groups, const StreamedBlock* executor,
                 bool overlap) {
  GptMoe model(config, groups.model_parallel());
  model.initialize(11);
  set_parameters(model);
  model.set_block_executor(executor);
  Rng rng(7 + 1000 * static_cast<uint64_t>(groups.rank()));
  std::vector<int32_t> tok(kBatch * kSeq), tgt(kBatch * kSeq);
  for (auto& t : tok) t = static_cast<int32_t>(rng.below(config.vocab_size));
  for (auto& t : tgt) t = static_cast<int32_t>(rng.below(config.vocab_size));
  model.params().zero_grad();
  ForwardState state;
  StepRun r;
  r.loss = model.forward(state, Tensor::from_ints({kBatch * kSeq}, tok), Tensor::from_ints({kBatch * kSeq}, tgt),
                         kBatch);
  r.logits = state.logits.to_vector();
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
  for (const Parameter& p : model.params().all()) {
    r.names.push_back(p.name);
    r.grads.push_back(p.grad.to_vector());
  }
  return r;
}

const StepRun& reference(const ModelConfig& config, const TrainingGroups& groups) {
  static std::map<std::string, StepRun> cache;
  std::ostringstream key;
  key << config.family << " k=" << config.top_k << " L=" << config.num_layers;
  auto it = cache.find(key.str());
  if (it == cache.end()) it = cache.emplace(key.str(), run_step(config, groups, nullptr, false)).first;
  return it->second;
}

std::vector<double> widen(const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); }

void expect_no_rank_failed() {
  int64_t failed = ::testing::Test::HasFailure() ? 1 : 0;
  g_world->all_reduce_sum(failed);
  if (g_world->rank() == 0) {
    EXPECT_EQ(failed, 0) << "ranks with a failure in this test (their output above)";
  }
}

class WholeStepOnSeveralRanks : public ::testing::TestWithParam<StepCase> {};

TEST_P(WholeStepOnSeveralRanks, LossAndEveryAveragedGradientEqualTheSequentialModel) {
  const StepCase c = GetParam();
  const ModelConfig config = step_model(c.mixtral, c.top_k, c.layers);
  const TrainingGroups groups = make_training_groups(*g_world, 0, config.num_experts);
  const StepRun& want = reference(config, groups);
  const StepSchedule& s = step_schedules()[c.schedule];
  const StreamedBlock executor(schedule_of(s, config), s.order, nullptr, 0, c.scope);
  const StepRun got = run_step(config, groups, &executor, c.overlap);
  {
    SCOPED_TRACE("rank " + std::to_string(g_world->rank()) + ", " + step_case_name(c));
    EXPECT_LE(std::abs(got.loss.lm_loss - want.loss.lm_loss), 1e-6 + 1e-5 * std::abs(want.loss.lm_loss));
    EXPECT_LE(std::abs(got.loss.aux_loss - want.loss.aux_loss), 1e-6 + 1e-5 * std::abs(want.loss.aux_loss));
    testing::expect_close(widen(got.logits), widen(want.logits), 1e-5, 1e-4, "logits");
    const testing::GradientTolerance tol{2e-6, 1e-6, 1e-4, 0.99999, 1e-4};
    EXPECT_EQ(got.names, want.names);
    if (got.grads.size() == want.grads.size()) {
      for (size_t i = 0; i < got.grads.size(); ++i)
        testing::expect_gradient_matches(widen(got.grads[i]), widen(want.grads[i]), tol,
                                         "gradient of " + want.names[i]);
    }
  }
  expect_no_rank_failed();
}

INSTANTIATE_TEST_SUITE_P(Steps, WholeStepOnSeveralRanks, ::testing::ValuesIn(step_cases()), step_test_name);

}  // namespace
}  // namespace ampipe

int main(int argc, char** argv) {
  return ampipe::testing::run_mpi_tests(argc, argv, ampipe::g_world, "mpi_test_whole_step");
}
