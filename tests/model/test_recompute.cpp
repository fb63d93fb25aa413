// Activation recomputation (model/gpt.h, --recompute-*): what a forward pass leaves held for its
// backward. Results are checked bit for bit elsewhere (tests/pipeline/test_schedules.cpp,
// RecomputationIsBitIdentical, and tests/parallel/mpi_test_parallel.cpp); here, the memory.
#include <gtest/gtest.h>

#include <cstdio>

#include "core/host_cache.h"
#include "model/gpt.h"
#include "test_util.h"

namespace ampipe {
namespace {

// Large host blocks (core/host_cache.h) in use after a forward pass minus before, and the loss.
struct Held {
  int64_t bytes = 0;
  double loss = 0;
};

Held forward_held(const ModelConfig& config, std::vector<RecomputeGroup> groups, int64_t T,
                  bool selective = false) {
  ModelConfig c = config;
  c.selective_recompute = selective;
  GptMoe model(c);
  model.initialize(3);
  model.set_recompute(std::move(groups));
  const Tensor tokens = testing::random_tokens(T, config.vocab_size, 1);
  const Tensor targets = testing::random_tokens(T, config.vocab_size, 2);
  ForwardState state;
  const int64_t before = static_cast<int64_t>(host_cache_stats().in_use_bytes);
  Held h;
  h.loss = model.forward(state, tokens, targets, 1).total;
  h.bytes = static_cast<int64_t>(host_cache_stats().in_use_bytes) - before;
  model.backward(state);  // the pass completes (and releases everything)
  return h;
}

// 4 blocks at T = 2048, d = 256 (a [T, d] float32 tensor is 2 MiB, above the cache's 1 MiB floor, so
// every activation is counted). Keeping holds every block's activations; uniform 1 holds the four
// block inputs and what lies outside the blocks (the logits, the final norm's), the same in both.
TEST(Recompute, AForwardHoldsOnlyTheGroupInputs) {
  ModelConfig c;
  c.vocab_size = 256;
  c.max_seq_len = 2048;
  c.hidden_size = 256;
  c.num_attention_heads = 4;
  c.num_layers = 4;
  c.num_experts = 4;
  c.ffn_hidden_size = 512;
  c.top_k = 2;
  const int64_t T = 2048;
  const Held keep = forward_held(c, {}, T);
  const Held uniform1 = forward_held(c, recompute_groups("uniform", 1, 4), T);
  const Held uniform2 = forward_held(c, recompute_groups("uniform", 2, 4), T);
  const Held block2 = forward_held(c, recompute_groups("block", 2, 4), T);
  const Held selective = forward_held(c, {}, T, true);
  EXPECT_EQ(uniform1.loss, keep.loss);
  EXPECT_EQ(selective.loss, keep.loss);
  EXPECT_EQ(block2.loss, keep.loss);
  const int64_t input = T * c.hidden_size * 4;  // one block input, float32
  std::printf("forward-held MiB: keep %.1f, uniform 1 %.1f, uniform 2 %.1f, block 2 %.1f, selective %.1f\n",
              keep.bytes / 1048576.0, uniform1.bytes / 1048576.0, uniform2.bytes / 1048576.0,
              block2.bytes / 1048576.0, selective.bytes / 1048576.0);
  // What the blocks hold, kept: the difference to uniform 1 plus the inputs uniform 1 keeps.
  const int64_t outside = uniform1.bytes - 4 * input;
  const int64_t per_block = (keep.bytes - outside) / 4;
  EXPECT_GT(per_block, 4 * input) << "a block keeps several [T, d] tensors and more";
  EXPECT_LE(uniform2.bytes, outside + 2 * input + input / 2);  // two group inputs (blocks 0 and 2)
  // Selective drops, per block, the normed attention input ([T, d]) and the experts' activation
  // output ([k T, f] = 2 x [T, 2d] here, 4 inputs' worth): 5 [T, d] tensors a block.
  EXPECT_EQ(keep.bytes - selective.bytes, 4 * 5 * input);
  // block 2: blocks 0 and 1 recomputed (their inputs kept), blocks 2 and 3 keep everything.
  EXPECT_NEAR(static_cast<double>(block2.bytes), static_cast<double>(outside + 2 * input + 2 * per_block),
              0.1 * static_cast<double>(per_block));
}

}  // namespace
}  // namespace ampipe
