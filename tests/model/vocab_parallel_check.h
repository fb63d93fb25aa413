// How the vocabulary-parallel cross-entropy (model/vocab_parallel.h) is compared with
// kernels::cross_entropy_forward / _backward on the full logits, shared by
// tests/model/test_vocab_parallel.cpp (one rank) and tests/parallel/mpi_test_vocab_parallel.cpp
// (2 and 4 ranks): the tolerance, why it is that, and wrong answers it must reject.
//
// The tolerance. Both sides take M (the row maximum) and z[target] exactly, compute the same float32
// arguments z_j - M, accumulate S = sum_j exp(z_j - M) in double and form the loss in double as
// (M - z[target]) + log(S), rounded once to float32. They differ in two places only:
// - the exponential: std::exp (glibc, under 1 ulp) against the CPU kernel's fast_exp (relative error
//   below 1e-7): each term, hence S, differs by under 1.6e-7 relative, log(S) by under 1.6e-7;
// - the order of S's double additions (by shard, then across shards in rank order): ~1e-16 V
//   relative, nothing at float32 precision. Splitting the vocabulary therefore adds no float32
//   reassociation error: the partial sums travel in double.
// Loss: 1.6e-7 absolute plus two float32 roundings (2^-24 |loss| each) is under 1.6e-7 + 1.2e-7 |loss|;
// the tolerance is 4e-7 + 4e-7 |loss|.
// dlogits = float(scale / S) * exp(z_j - M), minus scale at the target: the coefficient differs by
// 1.6e-7 plus two roundings, the exponential by 1.6e-7, the product and the subtraction round once
// each: under 7e-7 |scale| per element (|dlogits| <= |scale|); the tolerance is 1.5e-6 |scale|.
// The smallest wrong answer the tests build, a softmax that leaves one shard out of S, moves the
// loss by log(S / (S - S_k)) >= S_k / S and the gradient by as much relative to scale: for the test
// logits (N(0, 9), at most a few thousand ids) that is above 1e-4 in some row, far outside.
// The tests check that these wrong answers fail the comparison by a factor of 10 or more.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace ampipe::testing {

constexpr double kVocabParallelLossAtol = 4e-7;
constexpr double kVocabParallelLossRtol = 4e-7;
constexpr double kVocabParallelGradTolPerScale = 1.5e-6;

// max over i of |actual[i] - expected[i]| / (atol + rtol |expected[i]|); infinity for a NaN.
inline double worst_ratio(const std::vector<float>& actual, const std::vector<float>& expected, double atol,
                          double rtol) {
  EXPECT_EQ(actual.size(), expected.size());
  double worst = 0;
  for (size_t i = 0; i < std::min(actual.size(), expected.size()); ++i) {
    const double err =
        std::abs(double{actual[i]} - double{expected[i]}) / (atol + rtol * std::abs(double{expected[i]}));
    if (!(err <= worst)) worst = std::isnan(err) ? INFINITY : err;
  }
  return worst;
}

// Wrong answers, in double from the full logits [T, V] (row-major), to show the tolerance rejects
// them: the loss with its sign flipped, the loss whose S leaves out shard k's ids; dlogits with its
// sign flipped, without the softmax term, and with shard k left out of S. shard_ends: each shard's
// end, in rank order.
struct WrongAnswers {
  std::vector<std::vector<float>> losses;
  std::vector<std::vector<float>> dlogits;
};

inline WrongAnswers wrong_answers(const std::vector<float>& logits, const std::vector<int32_t>& targets,
                                  int64_t vocab, const std::vector<int64_t>& shard_ends, double scale) {
  const auto rows = static_cast<int64_t>(targets.size());
  const size_t shards = shard_ends.size();
  WrongAnswers w;
  w.losses.assign(1 + shards, std::vector<float>(static_cast<size_t>(rows)));
  w.dlogits.assign(2 + shards, std::vector<float>(logits.size()));
  for (int64_t t = 0; t < rows; ++t) {
    const float* z = logits.data() + t * vocab;
    const double mx = *std::max_element(z, z + vocab);
    std::vector<double> part(shards, 0.0);  // S's terms by shard
    for (size_t k = 0, j = 0; k < shards; ++k)
      for (; static_cast<int64_t>(j) < shard_ends[k]; ++j) part[k] += std::exp(double{z[j]} - mx);
    double s = 0;
    for (double p : part) s += p;
    const double zt = z[targets[t]];
    w.losses[0][t] = static_cast<float>(-((mx - zt) + std::log(s)));
    for (size_t k = 0; k < shards; ++k)
      w.losses[1 + k][t] = static_cast<float>((mx - zt) + std::log(s - part[k]));
    for (int64_t j = 0; j < vocab; ++j) {
      const double e = std::exp(double{z[j]} - mx), onehot = j == targets[t] ? 1.0 : 0.0;
      const size_t i = static_cast<size_t>(t * vocab + j);
      w.dlogits[0][i] = static_cast<float>(-scale * (e / s - onehot));
      w.dlogits[1][i] = static_cast<float>(-scale * onehot);
      for (size_t k = 0; k < shards; ++k)
        w.dlogits[2 + k][i] = static_cast<float>(scale * (e / (s - part[k]) - onehot));
    }
  }
  return w;
}

// Compares with the kernel's losses and dlogits under the tolerance above.
inline void expect_matches_kernel(const std::vector<float>& losses, const std::vector<float>& kernel_losses,
                                  const std::vector<float>& dlogits, const std::vector<float>& kernel_dlogits,
                                  double scale) {
  EXPECT_LE(worst_ratio(losses, kernel_losses, kVocabParallelLossAtol, kVocabParallelLossRtol), 1.0)
      << "losses";
  EXPECT_LE(worst_ratio(dlogits, kernel_dlogits, kVocabParallelGradTolPerScale * std::abs(scale), 0.0), 1.0)
      << "dlogits";
}

// Checks that the same comparison rejects every wrong answer by a factor of 10 or more (for logits
// where each shard matters: N(0, 9) values over a few rows, not a row dominated by one large logit).
inline void expect_rejected(const WrongAnswers& wrong, const std::vector<float>& kernel_losses,
                            const std::vector<float>& kernel_dlogits, double scale) {
  for (size_t m = 0; m < wrong.losses.size(); ++m)
    EXPECT_GE(worst_ratio(wrong.losses[m], kernel_losses, kVocabParallelLossAtol, kVocabParallelLossRtol),
              10.0)
        << "wrong loss " << m << " would pass";
  for (size_t m = 0; m < wrong.dlogits.size(); ++m)
    EXPECT_GE(
        worst_ratio(wrong.dlogits[m], kernel_dlogits, kVocabParallelGradTolPerScale * std::abs(scale), 0.0),
        10.0)
        << "wrong dlogits " << m << " would pass";
}

}  // namespace ampipe::testing
