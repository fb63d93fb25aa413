// Softmax cross-entropy against a float64 reference and finite differences; large-logit stability.
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "core/parallel.h"
#include "core/random.h"
#include "kernels/cross_entropy.h"
#include "test_util.h"
#include "thread_invariance.h"

namespace ampipe::kernels {
namespace {

using ampipe::testing::expect_close;
using ampipe::testing::finite_difference;
using ampipe::testing::random_tensor;
using ampipe::testing::to_double;

struct TV {
  int64_t tokens, vocab;
};
const TV kShapes[] = {{1, 1}, {1, 17}, {3, 17}, {17, 3}, {130, 257}, {5, 5003}};

Tensor random_targets(int64_t tokens, int64_t vocab, uint64_t seed) {
  Rng rng(seed);
  std::vector<int32_t> t(static_cast<size_t>(tokens));
  for (auto& v : t) v = static_cast<int32_t>(rng.below(static_cast<uint64_t>(vocab)));
  return Tensor::from_ints({tokens}, t);
}

std::vector<double> losses_ref(const std::vector<double>& logits, const Tensor& targets, int64_t tokens,
                               int64_t vocab) {
  const int32_t* tp = targets.data<int32_t>();
  std::vector<double> out(static_cast<size_t>(tokens));
  for (int64_t t = 0; t < tokens; ++t) {
    double mx = -INFINITY;
    for (int64_t j = 0; j < vocab; ++j) mx = std::max(mx, logits[t * vocab + j]);
    double s = 0;
    for (int64_t j = 0; j < vocab; ++j) s += std::exp(logits[t * vocab + j] - mx);
    out[t] = mx + std::log(s) - logits[t * vocab + tp[t]];
  }
  return out;
}

std::vector<double> dlogits_ref(const std::vector<double>& logits, const Tensor& targets, int64_t tokens,
                                int64_t vocab, double scale) {
  const int32_t* tp = targets.data<int32_t>();
  std::vector<double> out(logits.size());
  for (int64_t t = 0; t < tokens; ++t) {
    double mx = -INFINITY;
    for (int64_t j = 0; j < vocab; ++j) mx = std::max(mx, logits[t * vocab + j]);
    double s = 0;
    for (int64_t j = 0; j < vocab; ++j) s += std::exp(logits[t * vocab + j] - mx);
    for (int64_t j = 0; j < vocab; ++j)
      out[t * vocab + j] = scale * (std::exp(logits[t * vocab + j] - mx) / s - (j == tp[t] ? 1.0 : 0.0));
  }
  return out;
}

TEST(CrossEntropy, ForwardMatchesReference) {
  uint64_t seed = 1;
  for (const TV& s : kShapes) {
    SCOPED_TRACE(::testing::Message() << s.tokens << "x" << s.vocab);
    Tensor logits = random_tensor({s.tokens, s.vocab}, ++seed, 3.0f);
    Tensor targets = random_targets(s.tokens, s.vocab, ++seed);
    Tensor losses = Tensor::empty({s.tokens});
    cross_entropy_forward(logits, targets, losses);
    expect_close(losses, losses_ref(to_double(logits), targets, s.tokens, s.vocab), 1e-5, 1e-5, "losses");
  }
}

TEST(CrossEntropy, StableForLargeLogits) {
  // Logits around +-1e4 overflow exp() without the max subtraction; the loss itself stays moderate.
  const int64_t tokens = 17, vocab = 130;
  Tensor logits = random_tensor({tokens, vocab}, 3, 20.0f);
  float* p = logits.data<float>();
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t j = 0; j < vocab; ++j) p[t * vocab + j] += (t % 2 ? 1e4f : -1e4f);
  Tensor targets = random_targets(tokens, vocab, 4);
  Tensor losses = Tensor::empty({tokens});
  cross_entropy_forward(logits, targets, losses);
  const std::vector<double> lv = to_double(logits);
  expect_close(losses, losses_ref(lv, targets, tokens, vocab), 1e-4, 1e-5, "losses");
  Tensor dlogits = Tensor::empty({tokens, vocab});
  cross_entropy_backward(logits, targets, 0.5f, dlogits);
  expect_close(dlogits, dlogits_ref(lv, targets, tokens, vocab, 0.5), 1e-6, 1e-4, "dlogits");
}

TEST(CrossEntropy, BackwardMatchesReference) {
  uint64_t seed = 10;
  for (const TV& s : kShapes) {
    SCOPED_TRACE(::testing::Message() << s.tokens << "x" << s.vocab);
    Tensor logits = random_tensor({s.tokens, s.vocab}, ++seed, 3.0f);
    Tensor targets = random_targets(s.tokens, s.vocab, ++seed);
    Tensor dlogits = Tensor::empty({s.tokens, s.vocab});
    const float scale = 1.0f / static_cast<float>(s.tokens);
    cross_entropy_backward(logits, targets, scale, dlogits);
    expect_close(dlogits, dlogits_ref(to_double(logits), targets, s.tokens, s.vocab, scale), 1e-7, 1e-4,
                 "dlogits");
  }
}

TEST(CrossEntropy, BackwardMatchesFiniteDifferencesOfMeanLoss) {
  const TV shapes[] = {{1, 2}, {3, 5}, {4, 17}};
  uint64_t seed = 20;
  for (const TV& s : shapes) {
    SCOPED_TRACE(::testing::Message() << s.tokens << "x" << s.vocab);
    Tensor logits = random_tensor({s.tokens, s.vocab}, ++seed, 2.0f);
    Tensor targets = random_targets(s.tokens, s.vocab, ++seed);
    Tensor dlogits = Tensor::empty({s.tokens, s.vocab});
    const float scale = 1.0f / static_cast<float>(s.tokens);
    cross_entropy_backward(logits, targets, scale, dlogits);
    std::vector<double> lv = to_double(logits);
    auto mean_loss = [&] {
      double sum = 0;
      for (double l : losses_ref(lv, targets, s.tokens, s.vocab)) sum += l;
      return sum / static_cast<double>(s.tokens);
    };
    expect_close(dlogits, finite_difference(lv, mean_loss), 1e-6, 1e-4, "dlogits vs finite differences");
  }
}

TEST(CrossEntropy, BackwardMayOverwriteLogitsInPlace) {
  Tensor logits = random_tensor({13, 257}, 1, 3.0f);
  Tensor targets = random_targets(13, 257, 2);
  Tensor separate = Tensor::empty({13, 257});
  cross_entropy_backward(logits, targets, 0.25f, separate);
  cross_entropy_backward(logits, targets, 0.25f, logits);
  EXPECT_EQ(logits.to_vector(), separate.to_vector());
}

TEST(CrossEntropy, HonoursColumnSliceViews) {
  Tensor buf = random_tensor({9, 60}, 1, 2.0f);
  Tensor logits = buf.cols(5, 38);
  Tensor targets = random_targets(9, 33, 2);
  Tensor losses = Tensor::empty({9});
  cross_entropy_forward(logits, targets, losses);
  const std::vector<double> lv = to_double(logits);
  expect_close(losses, losses_ref(lv, targets, 9, 33), 1e-5, 1e-5, "losses");
  Tensor dbuf = Tensor::zeros({9, 50});
  Tensor dlogits = dbuf.cols(10, 43);
  cross_entropy_backward(logits, targets, 1.0f, dlogits);
  expect_close(dlogits, dlogits_ref(lv, targets, 9, 33, 1.0), 1e-7, 1e-4, "dlogits");
  EXPECT_EQ(dbuf.to_vector()[9], 0.0f);
  EXPECT_EQ(dbuf.to_vector()[43], 0.0f);
}

TEST(CrossEntropy, TargetOutsideVocabularyThrows) {
  Tensor logits = random_tensor({2, 5}, 1);
  Tensor losses = Tensor::empty({2});
  EXPECT_THROW(cross_entropy_forward(logits, Tensor::from_ints({2}, {0, 5}), losses), Error);
  EXPECT_THROW(cross_entropy_forward(logits, Tensor::from_ints({2}, {-1, 0}), losses), Error);
  EXPECT_THROW(cross_entropy_backward(logits, Tensor::from_ints({2}, {0, 7}), 1.0f, logits), Error);
  EXPECT_THROW(cross_entropy_forward(logits, Tensor::from_ints({3}, {0, 1, 2}), losses), Error);
  try {
    cross_entropy_forward(logits, Tensor::from_ints({2}, {0, 5}), losses);
    FAIL() << "an out-of-range target was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("target 5"), std::string::npos) << e.what();
  }
}

// Bitwise identical across repeated runs and at 1, 2 and 3 threads (each row is computed by one
// thread, in a fixed order).
TEST(CrossEntropy, RepeatedRunsAndThreadCountsAreBitwiseIdentical) {
  Tensor logits = random_tensor({300, 1031}, 1, 3.0f);
  Tensor targets = random_targets(300, 1031, 2);
  ampipe::testing::expect_bitwise_identical_runs([&] {
    Tensor losses = Tensor::empty({300});
    cross_entropy_forward(logits, targets, losses);
    Tensor dlogits = Tensor::empty({300, 1031});
    cross_entropy_backward(logits, targets, 0.1f, dlogits);
    std::vector<float> all;
    ampipe::testing::append_values(all, losses);
    ampipe::testing::append_values(all, dlogits);
    return all;
  });
}

}  // namespace
}  // namespace ampipe::kernels
