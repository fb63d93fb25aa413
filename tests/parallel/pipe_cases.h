// What the multi-rank pipeline tests share (tests/parallel/mpi_test_parallel.cpp and
// mpi_test_whole_step.cpp): the schedules they run, a tiny model of either family, parameters that
// are the same model in every expert layout, and the comparison of one rank's results.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "core/random.h"
#include "grad_check.h"
#include "model/gpt.h"
#include "pipeline/schedule.h"
#include "test_util.h"

namespace ampipe::testing {

struct PipeConfig {
  const char* name;
  ScheduleKind kind;
  int64_t pipe_degree;
  std::vector<int64_t> boundaries;  // explicit attention side, or empty
  ChunkPolicy policy;
  int64_t moe_pipe_degree;
  StageOrder order;
};

inline const std::vector<PipeConfig>& pipe_configs() {
  using K = ScheduleKind;
  using O = StageOrder;
  static const std::vector<PipeConfig> configs = {
      {"MoePipeP2_StageMajor", K::MoePipe, 2, {}, ChunkPolicy::Equal, 0, O::StageMajor},
      {"MoePipeP4_Interleaved", K::MoePipe, 4, {}, ChunkPolicy::Equal, 0, O::Interleaved},
      {"AmPipeP2_Interleaved", K::AmPipe, 2, {}, ChunkPolicy::Equal, 0, O::Interleaved},
      {"AmPipeP3_StageMajor", K::AmPipe, 3, {}, ChunkPolicy::Equal, 0, O::StageMajor},
      {"AmPipeUneven_0_3_10_16_StageMajor", K::AmPipe, 3, {0, 3, 10, 16}, ChunkPolicy::Equal, 0, O::StageMajor},
      {"AmPipeUneven_0_3_10_16_Interleaved", K::AmPipe, 3, {0, 3, 10, 16}, ChunkPolicy::Equal, 0, O::Interleaved},
      {"AmPipeBalancedP4_StageMajor", K::AmPipe, 4, {}, ChunkPolicy::Balanced, 0, O::StageMajor},
      {"AmPipeBalancedP4_Interleaved", K::AmPipe, 4, {}, ChunkPolicy::Balanced, 0, O::Interleaved},
      // The MoE side cut on its own: fewer, more, and boundaries inside attention chunks.
      {"AmPipeBalancedP3_Moe2_Interleaved", K::AmPipe, 3, {}, ChunkPolicy::Balanced, 2, O::Interleaved},
      {"AmPipeP4_Moe3_StageMajor", K::AmPipe, 4, {}, ChunkPolicy::Equal, 3, O::StageMajor},
      {"AmPipeP2_Moe4_Interleaved", K::AmPipe, 2, {}, ChunkPolicy::Equal, 4, O::Interleaved},
      {"AmPipeUneven_0_3_10_16_Moe2_StageMajor", K::AmPipe, 3, {0, 3, 10, 16}, ChunkPolicy::Equal, 2,
       O::StageMajor},
  };
  return configs;
}

constexpr int64_t kPipeSeqLen = 16, kPipeBatch = 2;
constexpr double kDropCapacity = 0.75;  // drops pairs: at most ceil(0.75 T k / E) per expert and group

inline ModelConfig pipe_model(bool mixtral, int64_t top_k, double capacity_factor, int64_t layers = 2) {
  ModelConfig c;
  if (mixtral) {
    c.set_family("mixtral");
    c.num_query_groups = 1;
    c.rotary_base = 100;
  }
  c.vocab_size = 17;
  c.max_seq_len = kPipeSeqLen;
  c.hidden_size = 16;
  c.num_attention_heads = 2;
  c.num_layers = layers;
  c.num_experts = 4;
  c.ffn_hidden_size = 24;
  c.top_k = top_k;
  c.capacity_factor = capacity_factor;
  c.aux_loss_weight = 0.1;
  return c;
}

inline BlockSchedule schedule_of(const PipeConfig& p, const ModelConfig& model) {
  BlockSchedule s;
  s.kind = p.kind;
  s.pipe_degree = p.pipe_degree;
  s.chunk_boundaries = p.boundaries;
  s.chunk_policy = p.policy;
  s.moe_pipe_degree = p.moe_pipe_degree;
  if (p.policy == ChunkPolicy::Balanced) s.balance_weight = balance_weight(model, p.moe_pipe_degree == 0);
  return s;
}

struct RankRun {
  LossParts loss;
  std::vector<float> logits;
  std::vector<std::string> names;
  std::vector<std::vector<float>> grads;  // this rank's: dense replicas and its own experts
};

// Parameters from full-size tensors (sliced for experts), so every layout holds the same model;
// weights larger than the initialisation so routing and attention are far from uniform.
inline void set_pipe_parameters(GptMoe& model) {
  uint64_t seed = 100;  // every expert of both layers receives tokens in every case
  for (Parameter& p : model.params().all()) {
    Shape full = p.value.shape();
    if (p.is_expert) full[0] = model.config().num_experts;
    Tensor whole = ::ampipe::testing::random_tensor(full, seed++, p.weight_decay ? 0.2f : 0.05f);
    Tensor mine = p.is_expert ? whole.rows(p.expert_offset, p.expert_offset + p.value.dim(0)) : whole;
    if (p.weight_decay) {
      p.value.copy_from(mine);
    } else {  // biases 0 + noise, norm gains 1 + noise
      std::vector<float> v = p.value.to_vector(), d = mine.to_vector();
      for (size_t i = 0; i < v.size(); ++i) v[i] += d[i];
      p.value.copy_from(Tensor::from(p.value.shape(), v));
    }
  }
}

// Zeroes the gradients and runs one forward on this rank's own random tokens (stream seed + 1000
// x rank): kPipeBatch sequences of kPipeSeqLen. Fills r.loss and r.logits; `state` is left for the
// caller's backward.
// block_needed: GptMoe::forward's hook (the overlapped parameter all-gather).
inline void forward_rank_batch(GptMoe& model, uint64_t seed, int rank, ForwardState& state, RankRun& r,
                               const std::function<void(int64_t)>& block_needed = {}) {
  Rng rng(seed + 1000 * static_cast<uint64_t>(rank));
  std::vector<int32_t> tok(kPipeBatch * kPipeSeqLen), tgt(kPipeBatch * kPipeSeqLen);
  for (auto& t : tok) t = static_cast<int32_t>(rng.below(model.config().vocab_size));
  for (auto& t : tgt) t = static_cast<int32_t>(rng.below(model.config().vocab_size));
  model.params().zero_grad();
  r.loss = model.forward(state, Tensor::from_ints({kPipeBatch * kPipeSeqLen}, tok),
                         Tensor::from_ints({kPipeBatch * kPipeSeqLen}, tgt), kPipeBatch, block_needed);
  r.logits = state.logits.to_vector();
}

// Every parameter's name and gradient, in registry order, into r.
inline void collect_gradients(const GptMoe& model, RankRun& r) {
  for (const Parameter& p : model.params().all()) {
    r.names.push_back(p.name);
    r.grads.push_back(p.grad.to_vector());
  }
}

inline std::vector<double> widen(const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); }

// |a - b| <= 1e-6 + 1e-4 |b| with b's sign wherever |b| > 2e-6 (so a zero or negated gradient
// fails), |a - b| <= 2e-6 elsewhere; and over each tensor cosine > 0.99999, relative L2 < 1e-4.
// bf16 (--bf16 on both sides): float32 reassociation between schedules can move an operand across
// a bf16 rounding boundary (one bf16 ulp, 2^-7 relative, instead of ~1e-7), measured up to ~1.5%
// on a small element and ~0.3% typical: |a - b| <= 2e-5 + 2e-2 |b| above a floor of 5e-5 (still
// failing a zero or negated element there), cosine > 0.999, relative L2 < 1e-2.
inline void expect_same_on_this_rank(const RankRun& got, const RankRun& want, bool bf16 = false) {
  const double loss_rtol = bf16 ? 1e-4 : 1e-5;
  EXPECT_LE(std::abs(got.loss.lm_loss - want.loss.lm_loss), 1e-6 + loss_rtol * std::abs(want.loss.lm_loss))
      << "lm loss " << got.loss.lm_loss << " vs " << want.loss.lm_loss;
  EXPECT_LE(std::abs(got.loss.aux_loss - want.loss.aux_loss), 1e-6 + loss_rtol * std::abs(want.loss.aux_loss))
      << "aux loss " << got.loss.aux_loss << " vs " << want.loss.aux_loss;
  ::ampipe::testing::expect_close(widen(got.logits), widen(want.logits), bf16 ? 1e-4 : 1e-5,
                                  bf16 ? 1e-2 : 1e-4, "logits");
  const ::ampipe::testing::GradientTolerance tol =
      bf16 ? ::ampipe::testing::GradientTolerance{5e-5, 2e-5, 2e-2, 0.999, 1e-2}
           : ::ampipe::testing::GradientTolerance{2e-6, 1e-6, 1e-4, 0.99999, 1e-4};
  EXPECT_EQ(got.names, want.names);
  if (got.grads.size() != want.grads.size()) return;
  for (size_t i = 0; i < got.grads.size(); ++i)
    ::ampipe::testing::expect_gradient_matches(widen(got.grads[i]), widen(want.grads[i]), tol, "gradient of " + want.names[i]);
}

// gtest's report on rank 0 names failures of the other ranks too (collective, the same on every rank).
inline void expect_no_rank_failed(Communicator& world) {
  int64_t failed = ::testing::Test::HasFailure() ? 1 : 0;
  world.all_reduce_sum(failed);
  if (world.rank() == 0) {
    EXPECT_EQ(failed, 0) << "ranks with a failure in this test (their output above)";
  }
}

}  // namespace ampipe::testing
