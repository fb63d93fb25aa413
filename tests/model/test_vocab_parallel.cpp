// The vocabulary-parallel cross-entropy on one rank (SelfCommunicator: the whole vocabulary is the
// one shard) against kernels::cross_entropy_forward / _backward, within the tolerance of
// model/vocab_parallel_check.h; its refusals. Several ranks: tests/parallel/mpi_test_vocab_parallel.cpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "comm/self_communicator.h"
#include "kernels/cross_entropy.h"
#include "model/vocab_parallel.h"
#include "model/vocab_parallel_check.h"
#include "test_util.h"

namespace ampipe {
namespace {

using ::ampipe::testing::error_of;
using ::ampipe::testing::expect_matches_kernel;
using ::ampipe::testing::expect_rejected;
using ::ampipe::testing::random_tensor;
using ::ampipe::testing::random_tokens;
using ::ampipe::testing::wrong_answers;

struct Outputs {
  std::vector<float> losses, dlogits, kernel_losses, kernel_dlogits;
};

// Both sides on `logits` [T, V] (any row stride) with `targets`.
Outputs run_both(const Tensor& logits, const Tensor& targets, float scale,
                 VocabParallelStats* keep = nullptr) {
  SelfCommunicator self;
  const int64_t rows = logits.dim(0), vocab = logits.dim(1);
  Tensor losses = Tensor::empty({rows}), dlogits = Tensor::empty({rows, vocab});
  VocabParallelStats stats;
  vocab_parallel_cross_entropy_forward(logits, targets, 0, vocab, self, losses, stats);
  vocab_parallel_cross_entropy_backward(logits, targets, stats, scale, dlogits);
  Tensor kernel_losses = Tensor::empty({rows}), kernel_dlogits = Tensor::empty({rows, vocab});
  kernels::cross_entropy_forward(logits, targets, kernel_losses);
  kernels::cross_entropy_backward(logits, targets, scale, kernel_dlogits);
  if (keep) *keep = stats;
  return {losses.to_vector(), dlogits.to_vector(), kernel_losses.to_vector(), kernel_dlogits.to_vector()};
}

TEST(VocabParallelOneRank, MatchesKernelWithinTolerance) {
  struct Case {
    int64_t tokens, vocab;
  };
  uint64_t seed = 100;
  for (const Case c : {Case{1, 1}, Case{1, 17}, Case{3, 17}, Case{17, 3}, Case{130, 257}, Case{5, 5003}}) {
    SCOPED_TRACE(::testing::Message() << c.tokens << "x" << c.vocab);
    const Tensor logits = random_tensor({c.tokens, c.vocab}, ++seed, 3.0f);
    const Tensor targets = random_tokens(c.tokens, c.vocab, ++seed);
    const float scale = 1.0f / static_cast<float>(c.tokens);
    VocabParallelStats stats;
    const Outputs o = run_both(logits, targets, scale, &stats);
    expect_matches_kernel(o.losses, o.kernel_losses, o.dlogits, o.kernel_dlogits, scale);
    // The exact parts are exact: M is each row's maximum, bit for bit.
    const std::vector<float> lv = logits.to_vector();
    for (int64_t t = 0; t < c.tokens; ++t)
      EXPECT_EQ(stats.row_max[t],
                *std::max_element(lv.begin() + t * c.vocab, lv.begin() + (t + 1) * c.vocab));
  }
}

// The tolerance is tight enough to reject wrong answers, here with the vocabulary cut into three
// imagined shards (each must count in S).
TEST(VocabParallelOneRank, ToleranceRejectsWrongAnswers) {
  const int64_t tokens = 16, vocab = 300;
  const Tensor logits = random_tensor({tokens, vocab}, 7, 3.0f);
  const Tensor targets = random_tokens(tokens, vocab, 8);
  const float scale = 0.125f;
  const Outputs o = run_both(logits, targets, scale);
  const std::vector<int32_t> ids(targets.data<int32_t>(), targets.data<int32_t>() + tokens);
  expect_rejected(wrong_answers(logits.to_vector(), ids, vocab, {1, 150, vocab}, scale), o.kernel_losses,
                  o.kernel_dlogits, scale);
}

TEST(VocabParallelOneRank, StableForLargeLogits) {
  const int64_t tokens = 6, vocab = 40;
  Tensor logits = random_tensor({tokens, vocab}, 11, 1.0f);
  float* p = logits.data<float>();
  // Rows all near +80, all near -80, one logit at +80 (on the target, then elsewhere), +-1e4.
  for (int64_t j = 0; j < vocab; ++j) {
    p[0 * vocab + j] += 80.0f;
    p[1 * vocab + j] -= 80.0f;
    p[4 * vocab + j] += j % 2 ? 1e4f : -1e4f;
  }
  p[2 * vocab + 0] = 80.0f;
  p[3 * vocab + vocab - 1] = 80.0f;
  const Tensor targets = Tensor::from_ints({tokens}, {3, 39, 0, 0, 1, 20});
  p[5 * vocab + 20] = -80.0f;
  const Outputs o = run_both(logits, targets, 2.0f);
  for (float l : o.losses) EXPECT_TRUE(std::isfinite(l)) << l;
  for (float d : o.dlogits) EXPECT_TRUE(std::isfinite(d)) << d;
  expect_matches_kernel(o.losses, o.kernel_losses, o.dlogits, o.kernel_dlogits, 2.0f);
}

TEST(VocabParallelOneRank, ColumnViewsAndBackwardInPlace) {
  const Tensor buf = random_tensor({9, 60}, 21, 2.0f);
  const Tensor logits = buf.cols(5, 38);  // row stride 60
  const Tensor targets = Tensor::from_ints({9}, {0, 32, 1, 31, 16, 0, 32, 7, 8});
  const Outputs o = run_both(logits, targets, 0.5f);
  expect_matches_kernel(o.losses, o.kernel_losses, o.dlogits, o.kernel_dlogits, 0.5f);

  SelfCommunicator self;
  Tensor in_place = logits.clone();
  Tensor losses = Tensor::empty({9});
  VocabParallelStats stats;
  vocab_parallel_cross_entropy_forward(in_place, targets, 0, 33, self, losses, stats);
  vocab_parallel_cross_entropy_backward(in_place, targets, stats, 0.5f, in_place);
  EXPECT_EQ(in_place.to_vector(), o.dlogits);
}

TEST(VocabParallelOneRank, ZeroTokens) {
  SelfCommunicator self;
  VocabParallelStats stats;
  const Tensor logits = Tensor::empty({0, 5});
  const Tensor targets = Tensor::from_ints({0}, {});
  vocab_parallel_cross_entropy_forward(logits, targets, 0, 5, self, Tensor::empty({0}), stats);
  EXPECT_TRUE(stats.row_max.empty());
  vocab_parallel_cross_entropy_backward(logits, targets, stats, 1.0f, Tensor::empty({0, 5}));
}

std::string forward_error(const Tensor& logits, const Tensor& targets, int64_t begin, int64_t vocab,
                          const Tensor& losses) {
  SelfCommunicator self;
  VocabParallelStats stats;
  return error_of(
      [&] { vocab_parallel_cross_entropy_forward(logits, targets, begin, vocab, self, losses, stats); });
}

void expect_contains(const std::string& message, const std::string& part) {
  EXPECT_NE(message.find(part), std::string::npos) << "\"" << part << "\" not in: " << message;
}

TEST(VocabParallelOneRank, RefusesBadArgumentsNamingTheValues) {
  const Tensor logits = random_tensor({2, 5}, 1);
  const Tensor targets = Tensor::from_ints({2}, {0, 4});
  const Tensor losses = Tensor::empty({2});
  const std::string where = "vocab_parallel_cross_entropy_forward on rank 0 of 1: ";
  expect_contains(forward_error(logits, Tensor::from_ints({2}, {0, 5}), 0, 5, losses),
                  where + "target 5 of token 1 is outside the vocabulary [0, 5)");
  expect_contains(forward_error(logits, Tensor::from_ints({2}, {-1, 0}), 0, 5, losses),
                  "target -1 of token 0");
  expect_contains(forward_error(logits, Tensor::from_ints({3}, {0, 1, 2}), 0, 5, losses),
                  "targets must be an int32 CPU tensor [2], got int32 [3]");
  expect_contains(forward_error(Tensor::zeros({2, 5}, DType::I32), targets, 0, 5, losses),
                  "the logits shard must be a float32 CPU tensor [T, Vs >= 1], got int32 [2, 5]");
  expect_contains(forward_error(random_tensor({10}, 1), targets, 0, 5, losses), "got float32 [10]");
  expect_contains(forward_error(logits, targets, 0, 5, Tensor::empty({3})),
                  "losses must be a float32 CPU tensor [2]");
  expect_contains(forward_error(logits, targets, 0, 0, losses), "vocab_size 0 must be in [1, 2^31]");
  expect_contains(forward_error(logits, targets, 0, (int64_t{1} << 31) + 1, losses), "vocab_size 2147483649");
  expect_contains(forward_error(logits, targets, 3, 7, losses),
                  "the shard [3, 8) (begin 3, 5 columns) is not inside the vocabulary [0, 7)");
  expect_contains(forward_error(logits, targets, -1, 7, losses), "the shard [-1, 4)");
  // Inside the vocabulary but not tiling it: one rank must hold all of it.
  expect_contains(
      forward_error(logits, targets, 2, 7, losses),
      where +
          "the shards do not tile the vocabulary [0, 7) in rank order: rank 0's shard begins at 2 "
          "(5 ids), expected 0");
  expect_contains(forward_error(logits, targets, 0, 7, losses),
                  where + "the shards cover [0, 5) but the vocabulary is [0, 7)");
}

TEST(VocabParallelOneRank, BackwardRefusesArgumentsThatAreNotTheForwards) {
  SelfCommunicator self;
  const Tensor logits = random_tensor({2, 5}, 1);
  const Tensor targets = Tensor::from_ints({2}, {0, 4});
  VocabParallelStats stats;
  vocab_parallel_cross_entropy_forward(logits, targets, 0, 5, self, Tensor::empty({2}), stats);
  auto backward_error = [&](const Tensor& l, const Tensor& t, const Tensor& d) {
    return error_of([&] { vocab_parallel_cross_entropy_backward(l, t, stats, 1.0f, d); });
  };
  const std::string where = "vocab_parallel_cross_entropy_backward: ";
  expect_contains(backward_error(logits, targets, Tensor::empty({2, 4})),
                  where + "dlogits [2, 4] must match the logits shard [2, 5]");
  expect_contains(
      backward_error(random_tensor({3, 5}, 2), Tensor::from_ints({3}, {0, 1, 2}), Tensor::empty({3, 5})),
      where + "the stats are of a forward over 2 tokens and a shard of 5 ids; the logits shard is [3, 5]");
  expect_contains(backward_error(logits, Tensor::from_ints({2}, {0, 5}), Tensor::empty({2, 5})),
                  where + "target 5 of token 1 is outside the vocabulary [0, 5)");
  expect_contains(backward_error(logits, targets, Tensor::zeros({2, 5}, DType::I32)),
                  where + "dlogits must be a float32 CPU tensor");
}

}  // namespace
}  // namespace ampipe
