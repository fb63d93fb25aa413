// The vocabulary-parallel cross-entropy (model/vocab_parallel.h) on 2 and 4 ranks, under mpirun:
// every rank draws the same full [T, V] logits, takes its shard of columns, and the losses (the
// same bits on every rank) and the gathered dlogits must equal kernels::cross_entropy_* on the
// full matrix within tests/model/vocab_parallel_check.h's tolerance, which the wrong answers
// (a flipped sign, no softmax term, one shard left out of the sum) fail. Even and uneven shards,
// targets on every shard's first and last id, logits near +-80, T = 1, tensor-parallel groups
// split out of the world; refusals thrown on every rank, after which the group still works.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "core/random.h"
#include "kernels/cross_entropy.h"
#include "model/vocab_parallel.h"
#include "model/vocab_parallel_check.h"
#include "parallel/mpi_gtest_main.h"
#include "test_util.h"

namespace ampipe {
namespace {

std::unique_ptr<Communicator> g_world;

using ::ampipe::testing::error_of;
using ::ampipe::testing::expect_matches_kernel;
using ::ampipe::testing::expect_rejected;
using ::ampipe::testing::random_tensor;
using ::ampipe::testing::wrong_answers;

// Each shard's end, in rank order, for a group of `ranks`.
std::vector<int64_t> ends_of(const std::vector<int64_t>& sizes) {
  std::vector<int64_t> ends;
  int64_t end = 0;
  for (int64_t s : sizes) ends.push_back(end += s);
  return ends;
}
std::vector<int64_t> even_shards(int ranks, int64_t size) {
  return ends_of(std::vector<int64_t>(ranks, size));
}
// 1, 21, 15, 35, ...: a one-id shard first, odd sizes, no two neighbours alike.
std::vector<int64_t> uneven_shards(int ranks) {
  std::vector<int64_t> sizes;
  for (int r = 0; r < ranks; ++r) sizes.push_back(1 + 7 * r + (r % 2 ? 13 : 0));
  return ends_of(sizes);
}
// The reverse: a one-id shard last.
std::vector<int64_t> uneven_shards_reversed(int ranks) {
  std::vector<int64_t> sizes;
  for (int r = ranks - 1; r >= 0; --r) sizes.push_back(1 + 7 * r + (r % 2 ? 13 : 0));
  return ends_of(sizes);
}

// Every shard's first and last id, then ids drawn from `seed`, `tokens` in all (>= 2 per shard).
std::vector<int32_t> border_targets(const std::vector<int64_t>& ends, int64_t tokens, uint64_t seed) {
  std::vector<int32_t> ids;
  for (size_t k = 0; k < ends.size(); ++k) {
    ids.push_back(static_cast<int32_t>(k ? ends[k - 1] : 0));
    ids.push_back(static_cast<int32_t>(ends[k] - 1));
  }
  Rng rng(seed);
  while (static_cast<int64_t>(ids.size()) < tokens)
    ids.push_back(static_cast<int32_t>(rng.below(ends.back())));
  ids.resize(static_cast<size_t>(tokens));
  return ids;
}

struct Result {
  std::vector<float> losses, dlogits, kernel_losses, kernel_dlogits;
};

// This rank's shard of `logits` through the vocabulary-parallel pair; dlogits gathered into the
// full [T, V] (each rank writes its columns into zeros, then a sum over the group); the kernels on
// the full matrix. Also checks that every rank of the group has the same losses, bit for bit.
Result run(Communicator& group, const Tensor& logits, const std::vector<int32_t>& ids,
           const std::vector<int64_t>& ends, float scale) {
  const int64_t rows = logits.dim(0), vocab = logits.dim(1);
  const int r = group.rank();
  const int64_t begin = r ? ends[r - 1] : 0, end = ends[r];
  const Tensor targets = Tensor::from_ints({rows}, ids);
  Tensor losses = Tensor::empty({rows}), dshard = Tensor::empty({rows, end - begin});
  VocabParallelStats stats;
  vocab_parallel_cross_entropy_forward(logits.cols(begin, end), targets, begin, vocab, group, losses, stats);
  vocab_parallel_cross_entropy_backward(logits.cols(begin, end), targets, stats, scale, dshard);
  Tensor gathered = Tensor::zeros({rows, vocab});
  gathered.cols(begin, end).copy_from(dshard);
  group.all_reduce_sum(gathered);

  Tensor every_rank = Tensor::empty({rows * group.size()});
  group.all_gather(losses, every_rank);
  const std::vector<float> mine = losses.to_vector(), all = every_rank.to_vector();
  for (int k = 0; k < group.size(); ++k)
    EXPECT_TRUE(std::equal(mine.begin(), mine.end(), all.begin() + k * rows))
        << "rank " << k << "'s losses differ";

  Tensor kernel_losses = Tensor::empty({rows}), kernel_dlogits = Tensor::empty({rows, vocab});
  kernels::cross_entropy_forward(logits, targets, kernel_losses);
  kernels::cross_entropy_backward(logits, targets, scale, kernel_dlogits);
  return {mine, gathered.to_vector(), kernel_losses.to_vector(), kernel_dlogits.to_vector()};
}

void check_layout(Communicator& group, const std::vector<int64_t>& ends, int64_t tokens, uint64_t seed) {
  SCOPED_TRACE(::testing::Message() << "V " << ends.back() << ", T " << tokens << ", seed " << seed);
  const Tensor logits = random_tensor({tokens, ends.back()}, seed, 3.0f);
  const std::vector<int32_t> ids = border_targets(ends, tokens, seed + 1);
  const float scale = 1.0f / static_cast<float>(tokens);
  const Result res = run(group, logits, ids, ends, scale);
  expect_matches_kernel(res.losses, res.kernel_losses, res.dlogits, res.kernel_dlogits, scale);
  expect_rejected(wrong_answers(logits.to_vector(), ids, ends.back(), ends, scale), res.kernel_losses,
                  res.kernel_dlogits, scale);
}

TEST(VocabParallel, EvenShardsMatchKernel) {
  const int R = g_world->size();
  check_layout(*g_world, even_shards(R, 37), 24, 10);
  check_layout(*g_world, even_shards(R, 1250), 16, 20);  // rows longer than the kernel's 256-id blocks
}

TEST(VocabParallel, UnevenShardsMatchKernel) {
  const int R = g_world->size();
  check_layout(*g_world, uneven_shards(R), 24, 30);
  check_layout(*g_world, uneven_shards_reversed(R), 24, 40);
  check_layout(*g_world, ends_of([&] {
    std::vector<int64_t> sizes(R, 3);
    sizes[R / 2] = 2000;  // one large shard among small ones
    return sizes;
  }()),
               12, 50);
}

// One token: its target on each shard's first and last id in turn, and with no random ids at all.
TEST(VocabParallel, OneTokenOnEveryShardBorder) {
  const std::vector<int64_t> ends = uneven_shards(g_world->size());
  const Tensor logits = random_tensor({1, ends.back()}, 60, 3.0f);
  for (int32_t id : border_targets(ends, 2 * static_cast<int64_t>(ends.size()), 0)) {
    SCOPED_TRACE(::testing::Message() << "target " << id);
    const Result res = run(*g_world, logits, {id}, ends, 1.0f);
    expect_matches_kernel(res.losses, res.kernel_losses, res.dlogits, res.kernel_dlogits, 1.0f);
  }
}

// Rows near +80 and -80 (exp overflows float32 past 88 without the maximum), one logit at +80 on a
// shard border (the target's, or another shard's), a target at -80 under a maximum of +80.
TEST(VocabParallel, StableForLargeLogits) {
  const std::vector<int64_t> ends = uneven_shards(g_world->size());
  const int64_t vocab = ends.back(), last = static_cast<int64_t>(ends.size()) - 1;
  const int64_t tokens = 6;
  Tensor logits = random_tensor({tokens, vocab}, 70, 1.0f);
  float* p = logits.data<float>();
  for (int64_t j = 0; j < vocab; ++j) {
    p[0 * vocab + j] += 80.0f;
    p[1 * vocab + j] -= 80.0f;
  }
  p[2 * vocab + 0] = 80.0f;               // on the target: the loss is ~0
  p[3 * vocab + ends[last] - 1] = 80.0f;  // the last shard's last id; target on shard 0
  p[4 * vocab + ends[0]] = 80.0f;         // shard 1's first id; target on the last shard
  p[5 * vocab + 0] = 80.0f;               // target at -80 on the last shard's first id
  p[5 * vocab + ends[last - 1]] = -80.0f;
  const std::vector<int32_t> ids = {static_cast<int32_t>(vocab / 2),
                                    0,
                                    0,
                                    static_cast<int32_t>(ends[0] - 1),
                                    static_cast<int32_t>(vocab - 1),
                                    static_cast<int32_t>(ends[last - 1])};
  const Result res = run(*g_world, logits, ids, ends, 0.5f);
  for (float l : res.losses) EXPECT_TRUE(std::isfinite(l)) << l;
  for (float d : res.dlogits) EXPECT_TRUE(std::isfinite(d)) << d;
  EXPECT_GT(res.losses[5], 159.0f);
  expect_matches_kernel(res.losses, res.kernel_losses, res.dlogits, res.kernel_dlogits, 0.5f);
}

// Tensor-parallel groups of two split out of the world (2 ranks: one group; 4: two groups, each with
// its own logits), as a model would hold them beside its data-parallel groups.
TEST(VocabParallel, GroupsOfTwoInsideTheWorld) {
  const int rank = g_world->rank();
  std::unique_ptr<Communicator> group = g_world->split(rank / 2, rank);
  ASSERT_EQ(group->size(), 2);
  check_layout(*group, ends_of({5, 44}), 20, 80 + static_cast<uint64_t>(rank / 2));
}

struct Call {
  int64_t tokens = 4;
  std::vector<int32_t> ids;
  std::vector<int64_t> ends;
  int64_t begin_shift = 0;  // added to this rank's begin
  int64_t vocab_shift = 0;  // added to this rank's vocab_size
  bool bad_losses = false;  // this rank passes losses of the wrong length
};

// A call of the forward on every rank; returns this rank's refusal ("" if none).
std::string forward_error(const Call& c) {
  const int r = g_world->rank();
  const int64_t begin = r ? c.ends[r - 1] : 0, vocab = c.ends.back();
  const Tensor logits = random_tensor({c.tokens, c.ends[r] - begin}, 90);
  Tensor losses = Tensor::empty({c.bad_losses ? c.tokens + 1 : c.tokens});
  VocabParallelStats stats;
  try {
    vocab_parallel_cross_entropy_forward(logits, Tensor::from_ints({c.tokens}, c.ids), begin + c.begin_shift,
                                         vocab + c.vocab_shift, *g_world, losses, stats);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

void expect_contains(const std::string& message, const std::string& part) {
  EXPECT_NE(message.find(part), std::string::npos) << "\"" << part << "\" not in: \"" << message << "\"";
}

// Every refusal is thrown on every rank after the same collective, so the next call finds the group
// in step (the check_layout at the end).
TEST(VocabParallel, RefusalsOnEveryRankLeaveTheGroupInStep) {
  const int rank = g_world->rank(), last = g_world->size() - 1;
  const std::vector<int64_t> ends = even_shards(g_world->size(), 10);
  const std::string where = "vocab_parallel_cross_entropy_forward on rank " + std::to_string(rank) + " of " +
                            std::to_string(g_world->size()) + ": ";
  const Call ok{4, {0, 9, 10, static_cast<int32_t>(ends.back() - 1)}, ends};

  Call c = ok;
  c.bad_losses = rank == last;
  expect_contains(forward_error(c), rank == last
                                        ? where + "losses must be a float32 CPU tensor [4], got float32 [5]"
                                        : where + "rank " + std::to_string(last) + " refused its arguments");
  c = ok;
  c.begin_shift = rank == 1 ? -1 : 0;  // overlaps rank 0's last id
  expect_contains(forward_error(c), where + "the shards do not tile the vocabulary [0, " +
                                        std::to_string(ends.back()) +
                                        ") in rank order: rank 1's shard begins at 9 (10 ids), expected 10 "
                                        "(where rank 0's ends)");
  c = ok;
  c.vocab_shift = rank == 0 ? 5 : 0;
  expect_contains(forward_error(c),
                  rank == 0 ? where + "rank 1 passed vocab_size " + std::to_string(ends.back())
                            : where + "rank 0 passed vocab_size " + std::to_string(ends.back() + 5));
  c = ok;
  if (rank == last) c.ids[1] = 8;
  expect_contains(forward_error(c), rank == last ? "rank 0's targets differ from this rank's"
                                                 : "rank " + std::to_string(last) + "'s targets differ");
  c = ok;
  if (rank == 1) c = Call{3, {0, 9, 10}, ends};
  expect_contains(forward_error(c), rank == 1 ? where + "rank 0 has 4 tokens, this rank 3"
                                              : where + "rank 1 has 3 tokens, this rank 4");
  c = ok;
  c.ids[2] = static_cast<int32_t>(ends.back());  // on every rank: each refuses it itself
  expect_contains(forward_error(c),
                  where + "target " + std::to_string(ends.back()) + " of token 2 is outside");
  c = ok;
  c.vocab_shift = 3;  // every rank agrees on a V the shards do not cover
  expect_contains(forward_error(c), where + "the shards cover [0, " + std::to_string(ends.back()) +
                                        ") but the vocabulary is [0, " + std::to_string(ends.back() + 3) +
                                        ")");

  EXPECT_EQ(forward_error(ok), "");
  check_layout(*g_world, ends, 8, 100);
}

}  // namespace
}  // namespace ampipe

int main(int argc, char** argv) {
  return ampipe::testing::run_mpi_tests(argc, argv, ampipe::g_world, "mpi_test_vocab_parallel");
}
