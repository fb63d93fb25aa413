// The tensor-parallel linear layers (model/tensor_parallel.h) on 2 and 4 ranks, under mpirun, paired
// as Megatron's MLP: x -> column-parallel -> row-parallel -> y. Every rank draws the same full x,
// weights, biases and dy from one seed, takes its shards, runs forward and backward, and the
// gathered h (the column layer's output), y, dh, dx, dW and db must equal model/linear.h on the
// full tensors within kTolerance, with and without sequence parallelism and biases, over the world
// and over groups split from it. Refusals (indivisible sizes) are thrown on every rank.
#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "grad_check.h"
#include "model/linear.h"
#include "model/tensor_parallel.h"
#include "parallel/mpi_gtest_main.h"
#include "test_util.h"

namespace ampipe {
namespace {

std::unique_ptr<Communicator> g_world;

using ::ampipe::testing::error_of;
using ::ampipe::testing::expect_gradient_matches;
using ::ampipe::testing::gradient_element_ok;
using ::ampipe::testing::GradientTolerance;
using ::ampipe::testing::random_tensor;
using ::ampipe::testing::to_double;

// tokens, model width (the column layer's in, the row layer's out), hidden width (the shards' split).
constexpr int64_t kTokens = 24, kModel = 48, kHidden = 64;

// The sharded results differ from the full ones only in float32 summation order: the row-parallel
// reduction adds T partial GEMMs of in/T terms, the GEMMs block differently on narrower matrices,
// and the differences flow through the pair. For a dot product of K terms, each order is within
// K u sum|a_k b_k| of the exact value (u = 2^-24), so two orders differ by at most 2 K u sum|a_k b_k|.
// Here K <= 64 (kHidden) and the inputs are scaled so that every product sum is O(1): x ~ N(0, 1),
// W ~ N(0, 1/in), dy ~ N(0, 1/N), so sum|a_k b_k| ~ 0.8 sqrt(K) <= ~8 even in the tails; the bound
// is 2 * 64 * 6e-8 * 8 = 6e-5, and atol = 2e-4 leaves room for the error h carries into y and dh
// carries into dx. With floor = 1e-3 > 2 atol and values O(1), grad_check.h's rule holds: an element
// above the floor must agree in sign and within atol + rtol |n|, so a zeroed or negated result fails
// (RejectsWrongAnswers checks that); the aggregate demands cosine > 1 - 1e-5, relative L2 < 1e-4.
constexpr GradientTolerance kTolerance{1e-3, 2e-4, 1e-4, 0.99999, 1e-4};

// grad_check.h's criterion as a verdict, for the wrong answers that must fail it.
bool passes(const std::vector<double>& a, const std::vector<double>& n) {
  double dot = 0, aa = 0, nn = 0, diff = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!gradient_element_ok(a[i], n[i], kTolerance)) return false;
    dot += a[i] * n[i], aa += a[i] * a[i], nn += n[i] * n[i], diff += (a[i] - n[i]) * (a[i] - n[i]);
  }
  if (std::sqrt(nn) <= kTolerance.floor) return true;
  return aa > 0 && dot / std::sqrt(aa * nn) > kTolerance.min_cosine &&
         std::sqrt(diff / nn) < kTolerance.max_relative_l2;
}

// The full [rows, T cols] from every rank's column block (written into zeros, summed: exact).
Tensor gather_cols(Communicator& group, const Tensor& shard) {
  const int64_t cols = shard.dim(1);
  Tensor full = Tensor::zeros({shard.dim(0), cols * group.size()});
  full.cols(group.rank() * cols, (group.rank() + 1) * cols).copy_from(shard);
  group.all_reduce_sum(full);
  return full;
}
// The full tensor from every rank's block of leading rows (or elements), rank-major.
Tensor gather_rows(Communicator& group, const Tensor& shard) {
  Shape shape = shard.shape();
  shape[0] *= group.size();
  Tensor full = Tensor::empty(shape);
  group.all_gather(shard.clone(), full);
  return full;
}

struct Mlp {
  Tensor x, w1, b1, w2, b2, dy;
};
Mlp draw(uint64_t seed, bool with_bias) {
  Mlp m{random_tensor({kTokens, kModel}, seed),
        random_tensor({kHidden, kModel}, seed + 1, 1.0f / std::sqrt(float{kModel})),
        with_bias ? random_tensor({kHidden}, seed + 2) : Tensor(),
        random_tensor({kModel, kHidden}, seed + 3, 1.0f / std::sqrt(float{kHidden})),
        with_bias ? random_tensor({kModel}, seed + 4) : Tensor(),
        random_tensor({kTokens, kModel}, seed + 5, 1.0f / std::sqrt(float{kTokens}))};
  return m;
}

// Every output of the pair, full size: h, y, dh, dx, dW1, db1, dW2, db2 (db* empty without bias).
using Outputs = std::vector<Tensor>;
const char* const kNames[] = {"h", "y", "dh", "dx", "dW1", "db1", "dW2", "db2"};

Outputs reference(const Mlp& m) {
  Tensor h = Tensor::empty({kTokens, kHidden}), y = Tensor::empty({kTokens, kModel});
  Tensor dh = Tensor::empty({kTokens, kHidden}), dx = Tensor::empty({kTokens, kModel});
  Tensor dw1 = Tensor::zeros({kHidden, kModel}), dw2 = Tensor::zeros({kModel, kHidden});
  Tensor db1 = m.b1.defined() ? Tensor::zeros({kHidden}) : Tensor();
  Tensor db2 = m.b2.defined() ? Tensor::zeros({kModel}) : Tensor();
  linear_forward(m.x, m.w1, m.b1, h);
  linear_forward(h, m.w2, m.b2, y);
  linear_backward(h, m.w2, m.dy, dh, dw2, db2);
  linear_backward(m.x, m.w1, dh, dx, dw1, db1);
  return {h, y, dh, dx, dw1, db1, dw2, db2};
}

Outputs sharded(Communicator& group, const Mlp& m, bool sp) {
  const int T = group.size(), t = group.rank();
  const int64_t local = sp ? kTokens / T : kTokens, hs = kHidden / T;
  const auto mine = [&](const Tensor& full) { return sp ? full.rows(t * local, (t + 1) * local) : full; };
  const Tensor w1 = tensor_parallel_weight_shard(m.w1, TensorParallelKind::Column, t, T);
  const Tensor b1 = tensor_parallel_bias_shard(m.b1, TensorParallelKind::Column, t, T);
  const Tensor w2 = tensor_parallel_weight_shard(m.w2, TensorParallelKind::Row, t, T);
  const Tensor b2 = tensor_parallel_bias_shard(m.b2, TensorParallelKind::Row, t, T);
  Tensor h = Tensor::empty({kTokens, hs}), y = Tensor::empty({local, kModel});
  Tensor dh = Tensor::empty({kTokens, hs}), dx = Tensor::empty({local, kModel});
  Tensor dw1 = Tensor::zeros({hs, kModel}), dw2 = Tensor::zeros({kModel, hs});
  Tensor db1 = b1.defined() ? Tensor::zeros({hs}) : Tensor(),
         db2 = b2.defined() ? Tensor::zeros({kModel}) : Tensor();
  column_parallel_forward(mine(m.x), w1, b1, group, sp, h);
  row_parallel_forward(h, w2, b2, group, sp, y);
  row_parallel_backward(h, w2, mine(m.dy), group, sp, dh, dw2, db2);
  column_parallel_backward(mine(m.x), w1, dh, group, sp, dx, dw1, db1);
  if (db2.defined()) {  // replicated: the same bits on every rank
    const Tensor every = gather_rows(group, db2);
    for (int k = 0; k < T; ++k)
      EXPECT_EQ(every.rows(k * kModel, (k + 1) * kModel).to_vector(), db2.to_vector())
          << "rank " << k << "'s db2";
  }
  return {gather_cols(group, h),   sp ? gather_rows(group, y) : y,
          gather_cols(group, dh),  sp ? gather_rows(group, dx) : dx,
          gather_rows(group, dw1), db1.defined() ? gather_rows(group, db1) : Tensor(),
          gather_cols(group, dw2), db2};
}

void check_pair(Communicator& group, bool sp, bool with_bias, uint64_t seed) {
  SCOPED_TRACE(::testing::Message() << group.size() << " ranks" << (sp ? ", sequence parallel" : "")
                                    << (with_bias ? ", bias" : "") << ", seed " << seed);
  const Mlp m = draw(seed, with_bias);
  const Outputs got = sharded(group, m, sp), want = reference(m);
  for (size_t i = 0; i < want.size(); ++i) {
    ASSERT_EQ(got[i].defined(), want[i].defined()) << kNames[i];
    if (want[i].defined())
      expect_gradient_matches(to_double(got[i]), to_double(want[i]), kTolerance, kNames[i]);
  }
}

TEST(TensorParallel, MlpMatchesLinear) {
  for (bool sp : {false, true})
    for (bool with_bias : {true, false}) check_pair(*g_world, sp, with_bias, 100 + 10 * sp + with_bias);
}

// Tensor-parallel groups of 2 split out of the world (on 2 ranks: two groups of 1).
TEST(TensorParallel, MlpMatchesLinearOnSplitGroups) {
  const int size = g_world->size() >= 4 ? 2 : 1;
  std::unique_ptr<Communicator> group = g_world->split(g_world->rank() / size, g_world->rank());
  for (bool sp : {false, true}) check_pair(*group, sp, true, 200 + sp);
}

// The tolerance is not vacuous: a zeroed or negated result fails it for every output.
TEST(TensorParallel, RejectsWrongAnswers) {
  const Outputs want = reference(draw(300, true));
  for (size_t i = 0; i < want.size(); ++i) {
    const std::vector<double> n = to_double(want[i]);
    std::vector<double> zero(n.size(), 0.0), negated = n;
    for (double& v : negated) v = -v;
    EXPECT_TRUE(passes(n, n)) << kNames[i];
    EXPECT_FALSE(passes(zero, n)) << kNames[i] << " zeroed";
    EXPECT_FALSE(passes(negated, n)) << kNames[i] << " negated";
  }
}

// Sizes that do not divide by T, refused on every rank (all pass the same shapes), naming the numbers;
// the group works afterwards.
TEST(TensorParallel, RefusesIndivisibleSizesOnEveryRank) {
  Communicator& group = *g_world;
  const int T = group.size(), t = group.rank();
  const int64_t odd = 4 * T + 1;
  // "(N) must be divisible by the tensor-parallel size T" (appended: GCC 12's -Wrestrict misfires on
  // operator+ chains of literals and strings).
  std::string divisible = "(";
  divisible.append(std::to_string(odd)).append(") must be divisible by the tensor-parallel size ");
  divisible.append(std::to_string(T));
  std::string msg = error_of([&] {
    tensor_parallel_weight_shard(random_tensor({odd, 8}, 1), TensorParallelKind::Column, t, T);
  });
  EXPECT_NE(msg.find(divisible), std::string::npos) << msg;
  msg = error_of([&] {
    tensor_parallel_weight_shard(random_tensor({8, odd}, 1), TensorParallelKind::Row, t, T);
  });
  EXPECT_NE(msg.find(divisible), std::string::npos) << msg;
  const Tensor w = random_tensor({8, 4}, 2), x = random_tensor({odd, 4}, 3);
  msg = error_of([&] { row_parallel_forward(x, w, Tensor(), group, true, Tensor::empty({4, 8})); });
  EXPECT_NE(msg.find("row_parallel_forward: the rows N of x_shard (sequence parallel) " + divisible),
            std::string::npos)
      << msg;
  msg = error_of([&] {
    column_parallel_backward(random_tensor({4, 4}, 4), random_tensor({8, 4}, 5), random_tensor({odd, 8}, 6),
                             group, true, Tensor::empty({4, 4}), Tensor::zeros({8, 4}), Tensor());
  });
  EXPECT_NE(msg.find("column_parallel_backward: the rows N of dy_shard (sequence parallel)"),
            std::string::npos)
      << msg;
  check_pair(group, true, true, 400);
}

}  // namespace
}  // namespace ampipe

int main(int argc, char** argv) {
  return ampipe::testing::run_mpi_tests(argc, argv, ampipe::g_world, "mpi_test_tensor_parallel");
}
