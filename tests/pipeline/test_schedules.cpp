// Every schedule computes the sequential block: loss, outputs and every gradient, for any pipe
// degree and chunk boundaries (dropless routing), top-1 and top-2.
#include <gtest/gtest.h>

#include "core/random.h"
#include "model/gpt.h"
#include "pipeline/streamed_block.h"
#include "test_util.h"

namespace ampipe {
namespace {

ModelConfig config_for(int64_t top_k) {
  ModelConfig c;
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

ModelRun run(const ModelConfig& config, const BlockExecutor* executor, int64_t batch, int64_t seq_len) {
  GptMoe model(config);
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
  model.backward(state);
  for (const Parameter& p : model.params().all()) r.grads.push_back(p.grad.to_vector());
  return r;
}

void expect_same(const ModelRun& a, const ModelRun& b, const std::string& what) {
  SCOPED_TRACE(what);
  EXPECT_NEAR(a.loss.lm_loss, b.loss.lm_loss, 1e-5);
  EXPECT_NEAR(a.loss.aux_loss, b.loss.aux_loss, 1e-5);
  testing::expect_close(std::vector<double>(a.logits.begin(), a.logits.end()),
                        std::vector<double>(b.logits.begin(), b.logits.end()), 1e-4, 1e-4, "logits");
  ASSERT_EQ(a.grads.size(), b.grads.size());
  for (size_t i = 0; i < a.grads.size(); ++i)
    testing::expect_close(std::vector<double>(a.grads[i].begin(), a.grads[i].end()),
                          std::vector<double>(b.grads[i].begin(), b.grads[i].end()), 2e-5, 2e-3,
                          ("gradient " + std::to_string(i)).c_str());
}

class Schedules : public ::testing::TestWithParam<int64_t> {};

TEST_P(Schedules, PipelinedEqualsSequential_Dropless) {
  const int64_t top_k = GetParam();
  const ModelConfig config = config_for(top_k);
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
  }
}

INSTANTIATE_TEST_SUITE_P(TopK, Schedules, ::testing::Values(1, 2));

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
}

}  // namespace
}  // namespace ampipe
