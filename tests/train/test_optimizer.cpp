// The learning-rate schedule and AdamW's global-norm gradient clipping (train/optimizer.h).
#include <gtest/gtest.h>

#include <cmath>
#include <numbers>
#include <vector>

#include "model/parameters.h"
#include "test_util.h"
#include "train/optimizer.h"

namespace ampipe {
namespace {

using ampipe::testing::random_tensor;

TEST(LrSchedule, WarmupIsLinearThenCosineToMinLrThenMinLr) {
  LrSchedule s;
  s.lr = 6e-4;
  s.min_lr = 6e-5;
  s.warmup_iters = 10;
  s.decay_iters = 110;
  // Warm-up: lr * (it + 1) / warmup, rising linearly from lr / warmup (not 0: iteration 0 trains).
  for (int64_t it = 0; it < 10; ++it)
    EXPECT_DOUBLE_EQ(learning_rate(s, it), 6e-4 * static_cast<double>(it + 1) / 10.0) << it;
  // Cosine from lr (at the end of warm-up) to min_lr over [warmup, decay_iters).
  EXPECT_DOUBLE_EQ(learning_rate(s, 10), 6e-4);
  EXPECT_NEAR(learning_rate(s, 60), 0.5 * (6e-4 + 6e-5), 1e-15);  // half way: the mean
  for (int64_t it = 10; it < 110; ++it) {
    const double progress = static_cast<double>(it - 10) / 100.0;
    const double expected = 6e-5 + 0.5 * (6e-4 - 6e-5) * (1 + std::cos(std::numbers::pi * progress));
    EXPECT_NEAR(learning_rate(s, it), expected, 1e-15) << it;
    EXPECT_LT(learning_rate(s, it + 1), learning_rate(s, it)) << "not decreasing at " << it;
    EXPECT_GT(learning_rate(s, it), 6e-5) << it;
  }
  // min_lr from decay_iters on.
  for (int64_t it : {110, 111, 1000, 1000000}) EXPECT_DOUBLE_EQ(learning_rate(s, it), 6e-5) << it;
}

TEST(LrSchedule, NoWarmupStartsAtLr) {
  LrSchedule s;
  s.lr = 1e-3;
  s.min_lr = 1e-4;
  s.warmup_iters = 0;
  s.decay_iters = 4;
  EXPECT_DOUBLE_EQ(learning_rate(s, 0), 1e-3);
  EXPECT_NEAR(learning_rate(s, 2), 0.5 * (1e-3 + 1e-4), 1e-15);
  EXPECT_DOUBLE_EQ(learning_rate(s, 4), 1e-4);
}

// Two dense parameters with gradients of global L2 norm `norm` (a random direction).
struct TwoParams {
  ParameterRegistry reg;
  std::vector<std::vector<float>> initial_values, initial_grads;
  explicit TwoParams(double norm) {
    Parameter& a = reg.add("a", {7, 5}, false);
    Parameter& b = reg.add("b", {11}, false);
    a.value.copy_from(random_tensor({7, 5}, 1));
    b.value.copy_from(random_tensor({11}, 2));
    a.grad.copy_from(random_tensor({7, 5}, 3));
    b.grad.copy_from(random_tensor({11}, 4));
    const double scale = norm / grad_norm();
    for (Parameter& p : reg.all()) {
      float* g = p.grad.data<float>();
      for (int64_t i = 0; i < p.grad.numel(); ++i) g[i] = static_cast<float>(g[i] * scale);
      initial_values.push_back(p.value.to_vector());
      initial_grads.push_back(p.grad.to_vector());
    }
  }
  double grad_norm() const {
    double sq = 0;
    for (const Parameter& p : reg.all())
      for (float g : p.grad.to_vector()) sq += static_cast<double>(g) * g;
    return std::sqrt(sq);
  }
};

// eps = 1 makes AdamW's first update depend on the gradient's magnitude (with a tiny eps it is
// ~lr * sign(g), which would hide whether clipping happened).
AdamWConfig clipping_config(double clip) {
  AdamWConfig c;
  c.eps = 1.0;
  c.weight_decay = 0;
  c.clip_grad = clip;
  return c;
}

// After one step from zero state: param = p0 - lr * g / (|g| + eps) for the gradient g it used.
void expect_first_step_used(const TwoParams& t, double lr, double eps, double grad_scale) {
  size_t k = 0;
  for (const Parameter& p : t.reg.all()) {
    const std::vector<float> value = p.value.to_vector();
    for (size_t i = 0; i < value.size(); ++i) {
      const double g = t.initial_grads[k][i] * grad_scale;
      const double expected = t.initial_values[k][i] - lr * g / (std::abs(g) + eps);
      EXPECT_NEAR(value[i], expected, 1e-6) << p.name << "[" << i << "]";
    }
    ++k;
  }
}

TEST(AdamWClipping, ScalesGradientsToTheClipNormAndReturnsThePreClipNorm) {
  TwoParams t(10.0);
  AdamW opt(t.reg, clipping_config(1.0));
  const double norm = opt.step(0.1);
  EXPECT_NEAR(norm, 10.0, 1e-5);             // the norm before clipping
  EXPECT_NEAR(t.grad_norm(), 1.0, 1e-5);     // the gradients were scaled in place to clip_grad
  expect_first_step_used(t, 0.1, 1.0, 0.1);  // and the update used the clipped gradients
  // Every element scaled by the same factor (a direction-preserving clip).
  size_t k = 0;
  for (const Parameter& p : t.reg.all()) {
    const std::vector<float> g = p.grad.to_vector();
    for (size_t i = 0; i < g.size(); ++i) EXPECT_NEAR(g[i], t.initial_grads[k][i] * 0.1, 1e-6);
    ++k;
  }
}

TEST(AdamWClipping, DoesNothingBelowTheClipNorm) {
  TwoParams t(0.5);
  AdamW opt(t.reg, clipping_config(1.0));
  EXPECT_NEAR(opt.step(0.1), 0.5, 1e-6);
  size_t k = 0;
  for (const Parameter& p : t.reg.all()) EXPECT_EQ(p.grad.to_vector(), t.initial_grads[k++]) << p.name;
  expect_first_step_used(t, 0.1, 1.0, 1.0);
}

TEST(AdamWClipping, ZeroClipDisablesClipping) {
  TwoParams t(10.0);
  AdamW opt(t.reg, clipping_config(0.0));
  EXPECT_NEAR(opt.step(0.1), 10.0, 1e-5);
  size_t k = 0;
  for (const Parameter& p : t.reg.all()) EXPECT_EQ(p.grad.to_vector(), t.initial_grads[k++]) << p.name;
  expect_first_step_used(t, 0.1, 1.0, 1.0);
}

}  // namespace
}  // namespace ampipe
