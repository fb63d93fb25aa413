// AdamW against a float64 transcription of the documented update.
#include <cmath>
#include <cstring>
#include <vector>

#include "core/parallel.h"
#include "kernels/adamw.h"
#include "test_util.h"
#include "thread_invariance.h"

namespace ampipe::kernels {
namespace {

using ampipe::testing::expect_close;
using ampipe::testing::random_tensor;
using ampipe::testing::to_double;

struct State {
  std::vector<double> param, m, v;
};

void adamw_ref(State& s, const std::vector<double>& grad, const AdamWStep& hp) {
  const double b1 = hp.beta1, b2 = hp.beta2;
  const double t = static_cast<double>(hp.step);
  for (size_t i = 0; i < s.param.size(); ++i) {
    s.m[i] = b1 * s.m[i] + (1 - b1) * grad[i];
    s.v[i] = b2 * s.v[i] + (1 - b2) * grad[i] * grad[i];
    const double mhat = s.m[i] / (1 - std::pow(b1, t));
    const double vhat = s.v[i] / (1 - std::pow(b2, t));
    s.param[i] -= hp.lr * (mhat / (std::sqrt(vhat) + hp.eps) + hp.weight_decay * s.param[i]);
  }
}

TEST(AdamW, MatchesReferenceOverSeveralSteps) {
  const Shape shapes[] = {{1}, {17}, {3, 5, 7}, {130, 64}, {100003}};
  uint64_t seed = 1;
  for (const Shape& shape : shapes) {
    SCOPED_TRACE(shape_string(shape));
    Tensor param = random_tensor(shape, ++seed);
    Tensor m = Tensor::zeros(shape);
    Tensor v = Tensor::zeros(shape);
    State ref{to_double(param), to_double(m), to_double(v)};
    AdamWStep hp;
    hp.lr = 1e-2f;
    hp.weight_decay = 0.1f;
    for (int64_t step = 1; step <= 5; ++step) {
      hp.step = step;
      Tensor grad = random_tensor(shape, ++seed, 0.1f);
      adamw_update(param, grad, m, v, hp);
      adamw_ref(ref, to_double(grad), hp);
    }
    expect_close(m, ref.m, 1e-7, 1e-5, "m");
    expect_close(v, ref.v, 1e-9, 1e-5, "v");
    expect_close(param, ref.param, 1e-6, 1e-5, "param");
  }
}

TEST(AdamW, LateStepAndCustomBetasMatchReference) {
  Tensor param = random_tensor({33, 17}, 1);
  Tensor m = random_tensor({33, 17}, 2, 0.01f);
  Tensor v = random_tensor({33, 17}, 3, 0.01f);
  float* vp = v.data<float>();
  for (int64_t i = 0; i < v.numel(); ++i) vp[i] = vp[i] * vp[i];  // v >= 0
  State ref{to_double(param), to_double(m), to_double(v)};
  AdamWStep hp;
  hp.lr = 3e-4f;
  hp.beta1 = 0.8f;
  hp.beta2 = 0.999f;
  hp.eps = 1e-6f;
  hp.weight_decay = 0.01f;
  hp.step = 1000;
  Tensor grad = random_tensor({33, 17}, 4, 0.1f);
  adamw_update(param, grad, m, v, hp);
  adamw_ref(ref, to_double(grad), hp);
  expect_close(m, ref.m, 1e-7, 1e-5, "m");
  expect_close(v, ref.v, 1e-9, 1e-5, "v");
  expect_close(param, ref.param, 1e-6, 1e-5, "param");
}

TEST(AdamW, FirstStepMovesEachParameterByAboutLrAgainstTheGradientSign) {
  // With m = v = 0, step 1: mhat = g, vhat = g^2, so the step is lr * g / (|g| + eps).
  Tensor param = Tensor::from({4}, {1.0f, 1.0f, -2.0f, 0.5f});
  Tensor grad = Tensor::from({4}, {0.3f, -0.02f, 5.0f, -1e-3f});
  Tensor m = Tensor::zeros({4});
  Tensor v = Tensor::zeros({4});
  AdamWStep hp;
  hp.lr = 0.1f;
  adamw_update(param, grad, m, v, hp);
  expect_close(param, {0.9, 1.1, -2.1, 0.6}, 1e-5, 1e-5, "param");
}

TEST(AdamW, WeightDecayIsDecoupledFromTheGradient) {
  // Zero gradient and zero moments: only the decay acts, param *= (1 - lr * wd), even at lr * wd
  // where an L2 penalty through Adam's normalisation would give a different step.
  Tensor param = random_tensor({130}, 1);
  const std::vector<double> p0 = to_double(param);
  Tensor m = Tensor::zeros({130});
  Tensor v = Tensor::zeros({130});
  AdamWStep hp;
  hp.lr = 0.01f;
  hp.weight_decay = 0.5f;
  hp.step = 3;
  adamw_update(param, Tensor::zeros({130}), m, v, hp);
  std::vector<double> expected(p0.size());
  for (size_t i = 0; i < p0.size(); ++i) expected[i] = p0[i] * (1 - 0.01 * 0.5);
  expect_close(param, expected, 1e-7, 1e-6, "param");
}

TEST(AdamW, HonoursColumnSliceViews) {
  Tensor pbuf = random_tensor({17, 30}, 1);
  Tensor gbuf = random_tensor({17, 30}, 2, 0.1f);
  Tensor mbuf = Tensor::zeros({17, 30});
  Tensor vbuf = Tensor::zeros({17, 30});
  Tensor param = pbuf.cols(3, 20);
  State ref{to_double(param), std::vector<double>(17 * 17, 0.0), std::vector<double>(17 * 17, 0.0)};
  AdamWStep hp;
  hp.lr = 1e-2f;
  hp.weight_decay = 0.1f;
  const std::vector<float> before = pbuf.to_vector();
  adamw_update(param, gbuf.cols(10, 27), mbuf.cols(0, 17), vbuf.cols(13, 30), hp);
  adamw_ref(ref, to_double(gbuf.cols(10, 27)), hp);
  expect_close(param, ref.param, 1e-6, 1e-5, "param");
  expect_close(mbuf.cols(0, 17), ref.m, 1e-7, 1e-5, "m");
  const std::vector<float> after = pbuf.to_vector();
  for (int64_t r = 0; r < 17; ++r) {
    EXPECT_EQ(after[r * 30 + 2], before[r * 30 + 2]);
    EXPECT_EQ(after[r * 30 + 20], before[r * 30 + 20]);
  }
}

TEST(AdamW, InvalidStepOrShapesThrow) {
  Tensor p = Tensor::zeros({3});
  AdamWStep hp;
  hp.lr = 0.1f;
  hp.step = 0;
  EXPECT_THROW(adamw_update(p, Tensor::zeros({3}), Tensor::zeros({3}), Tensor::zeros({3}), hp), Error);
  hp.step = 1;
  EXPECT_THROW(adamw_update(p, Tensor::zeros({4}), Tensor::zeros({3}), Tensor::zeros({3}), hp), Error);
  EXPECT_THROW(adamw_update(p, Tensor::zeros({3}), Tensor::zeros({3}), Tensor::zeros({1, 3}), hp), Error);
  hp.beta2 = 1.0f;
  EXPECT_THROW(adamw_update(p, Tensor::zeros({3}), Tensor::zeros({3}), Tensor::zeros({3}), hp), Error);
}

// Bitwise identical across repeated runs and at 1, 2 and 3 threads (elementwise update).
TEST(AdamW, RepeatedRunsAndThreadCountsAreBitwiseIdentical) {
  Tensor grad = random_tensor({100003}, 1, 0.1f);
  ampipe::testing::expect_bitwise_identical_runs([&] {
    Tensor param = random_tensor({100003}, 2);
    Tensor m = Tensor::zeros({100003});
    Tensor v = Tensor::zeros({100003});
    AdamWStep hp;
    hp.lr = 1e-3f;
    hp.weight_decay = 0.1f;
    adamw_update(param, grad, m, v, hp);
    std::vector<float> all;
    for (const Tensor& t : {param, m, v}) ampipe::testing::append_values(all, t);
    return all;
  });
}

}  // namespace
}  // namespace ampipe::kernels
