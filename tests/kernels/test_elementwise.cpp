// Element-wise and row-wise kernels against float64 references and finite differences.
#include <cmath>
#include <cstring>
#include <numbers>
#include <string>
#include <vector>

#include "core/parallel.h"
#include "kernels/elementwise.h"
#include "kernels/gemm.h"
#include "test_util.h"
#include "thread_invariance.h"

namespace ampipe::kernels {
namespace {

using ampipe::testing::expect_close;
using ampipe::testing::finite_difference;
using ampipe::testing::random_tensor;
using ampipe::testing::to_double;

struct RC {
  int64_t rows, cols;
};
const RC kShapes[] = {{1, 1}, {1, 17}, {3, 17}, {17, 3}, {130, 5}, {300, 130}, {7, 1031}};

void expect_bitwise_equal(const Tensor& a, const Tensor& b) {
  const std::vector<float> va = a.to_vector();
  const std::vector<float> vb = b.to_vector();
  ASSERT_EQ(va.size(), vb.size());
  EXPECT_EQ(0, std::memcmp(va.data(), vb.data(), va.size() * sizeof(float)));
}

double gelu_ref(double x) {
  const double k = std::sqrt(2.0 / std::numbers::pi);
  return 0.5 * x * (1.0 + std::tanh(k * (x + 0.044715 * x * x * x)));
}

std::vector<double> softmax_ref(const std::vector<double>& x, int64_t rows, int64_t cols) {
  std::vector<double> y(x.size());
  for (int64_t r = 0; r < rows; ++r) {
    double mx = -INFINITY;
    for (int64_t j = 0; j < cols; ++j) mx = std::max(mx, x[r * cols + j]);
    double s = 0;
    for (int64_t j = 0; j < cols; ++j) s += std::exp(x[r * cols + j] - mx);
    for (int64_t j = 0; j < cols; ++j) y[r * cols + j] = std::exp(x[r * cols + j] - mx) / s;
  }
  return y;
}

double weighted_sum(const std::vector<double>& y, const std::vector<double>& w) {
  double s = 0;
  for (size_t i = 0; i < y.size(); ++i) s += y[i] * w[i];
  return s;
}

TEST(AddBias, MatchesReferenceIncludingColumnSlice) {
  uint64_t seed = 1;
  for (const RC& s : kShapes) {
    SCOPED_TRACE(::testing::Message() << s.rows << "x" << s.cols);
    Tensor y = random_tensor({s.rows, s.cols}, ++seed);
    Tensor bias = random_tensor({s.cols}, ++seed);
    std::vector<double> expected = to_double(y);
    const std::vector<double> b = to_double(bias);
    for (int64_t r = 0; r < s.rows; ++r)
      for (int64_t j = 0; j < s.cols; ++j) expected[r * s.cols + j] += b[j];
    add_bias(y, bias);
    expect_close(y, expected, 1e-6, 1e-6, "y");

    Tensor buf = random_tensor({s.rows, s.cols + 5}, ++seed);
    Tensor view = buf.cols(2, 2 + s.cols);
    std::vector<double> expected_view = to_double(view);
    for (int64_t r = 0; r < s.rows; ++r)
      for (int64_t j = 0; j < s.cols; ++j) expected_view[r * s.cols + j] += b[j];
    add_bias(view, bias);
    expect_close(view, expected_view, 1e-6, 1e-6, "view");
  }
}

TEST(BiasBackward, AccumulatesColumnSumsMatchingReference) {
  uint64_t seed = 10;
  for (const RC& s : kShapes) {
    SCOPED_TRACE(::testing::Message() << s.rows << "x" << s.cols);
    Tensor buf = random_tensor({s.rows, s.cols + 3}, ++seed);
    Tensor dy = buf.cols(1, 1 + s.cols);
    Tensor dbias = random_tensor({s.cols}, ++seed);
    std::vector<double> expected = to_double(dbias);
    const std::vector<double> g = to_double(dy);
    for (int64_t r = 0; r < s.rows; ++r)
      for (int64_t j = 0; j < s.cols; ++j) expected[j] += g[r * s.cols + j];
    bias_backward(dy, dbias);
    expect_close(dbias, expected, 1e-5, 1e-5, "dbias");
  }
}

TEST(BiasBackward, MatchesFiniteDifferencesOfAddBias) {
  const int64_t rows = 5, cols = 7;
  std::vector<double> x = to_double(random_tensor({rows, cols}, 1));
  std::vector<double> b = to_double(random_tensor({cols}, 2));
  Tensor g = random_tensor({rows, cols}, 3);
  const std::vector<double> gv = to_double(g);
  auto loss = [&] {
    double s = 0;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < cols; ++j) s += (x[r * cols + j] + b[j]) * gv[r * cols + j];
    return s;
  };
  const std::vector<double> fd = finite_difference(b, loss);
  Tensor dbias = Tensor::zeros({cols});
  bias_backward(g, dbias);
  expect_close(dbias, fd, 1e-6, 1e-5, "dbias vs finite differences");
}

TEST(AddInplaceAndScale, MatchReferenceForContiguousStridedAndThreeD) {
  Tensor y3 = random_tensor({3, 5, 7}, 1);
  Tensor x3 = random_tensor({3, 5, 7}, 2);
  std::vector<double> expected = to_double(y3);
  const std::vector<double> xv = to_double(x3);
  for (size_t i = 0; i < expected.size(); ++i) expected[i] = (expected[i] + xv[i]) * -0.5;
  add_inplace(y3, x3);
  scale_inplace(y3, -0.5f);
  expect_close(y3, expected, 1e-6, 1e-6, "3-D");

  // A long contiguous tensor (split into flat spans) and a strided view (split by rows).
  Tensor big = random_tensor({100003}, 3);
  Tensor big_x = random_tensor({100003}, 4);
  std::vector<double> expected_big = to_double(big);
  const std::vector<double> bx = to_double(big_x);
  for (size_t i = 0; i < expected_big.size(); ++i) expected_big[i] = (expected_big[i] + bx[i]) * 3.0;
  add_inplace(big, big_x);
  scale_inplace(big, 3.0f);
  expect_close(big, expected_big, 1e-6, 1e-6, "1-D long");

  Tensor buf = random_tensor({130, 40}, 5);
  Tensor view = buf.cols(3, 20);
  Tensor xv2 = random_tensor({130, 17}, 6);
  std::vector<double> expected_view = to_double(view);
  const std::vector<double> x2 = to_double(xv2);
  for (size_t i = 0; i < expected_view.size(); ++i) expected_view[i] = (expected_view[i] + x2[i]) * 0.25;
  const std::vector<float> before = buf.to_vector();
  add_inplace(view, xv2);
  scale_inplace(view, 0.25f);
  expect_close(view, expected_view, 1e-6, 1e-6, "view");
  const std::vector<float> after = buf.to_vector();
  for (int64_t r = 0; r < 130; ++r)
    for (int64_t j = 0; j < 40; ++j)
      if (j < 3 || j >= 20) {
        ASSERT_EQ(after[r * 40 + j], before[r * 40 + j]);
      }
}

TEST(AddInplace, ShapeMismatchThrows) {
  Tensor y = Tensor::zeros({3, 4});
  EXPECT_THROW(add_inplace(y, Tensor::zeros({4, 3})), Error);
  EXPECT_THROW(add_bias(y, Tensor::zeros({3})), Error);
  EXPECT_THROW(bias_backward(y, Tensor::zeros({5})), Error);
}

TEST(Gelu, ForwardMatchesExactTanhFormula) {
  uint64_t seed = 20;
  for (const RC& s : kShapes) {
    SCOPED_TRACE(::testing::Message() << s.rows << "x" << s.cols);
    Tensor x = random_tensor({s.rows, s.cols}, ++seed, 3.0f);
    Tensor y = Tensor::empty({s.rows, s.cols});
    std::vector<double> expected = to_double(x);
    for (double& v : expected) v = gelu_ref(v);
    gelu_forward(x, y);
    expect_close(y, expected, 1e-6, 1e-5, "y");
  }
  // Far tails: gelu(x) -> x for large x, -> 0 for very negative x.
  Tensor x = Tensor::from({1, 4}, {-30.0f, -8.0f, 8.0f, 30.0f});
  Tensor y = Tensor::empty({1, 4});
  gelu_forward(x, y);
  expect_close(y, {gelu_ref(-30), gelu_ref(-8), gelu_ref(8), gelu_ref(30)}, 1e-7, 1e-6, "tails");
}

TEST(Gelu, BackwardMatchesReferenceAndFiniteDifferences) {
  uint64_t seed = 30;
  for (const RC& s : kShapes) {
    SCOPED_TRACE(::testing::Message() << s.rows << "x" << s.cols);
    Tensor x = random_tensor({s.rows, s.cols}, ++seed, 2.0f);
    Tensor dy = random_tensor({s.rows, s.cols}, ++seed);
    Tensor dx = Tensor::empty({s.rows, s.cols});
    gelu_backward(x, dy, dx);
    const std::vector<double> xv = to_double(x);
    const std::vector<double> gv = to_double(dy);
    std::vector<double> expected(xv.size());
    const double k = std::sqrt(2.0 / std::numbers::pi);
    for (size_t i = 0; i < xv.size(); ++i) {
      const double v = xv[i];
      const double t = std::tanh(k * (v + 0.044715 * v * v * v));
      expected[i] = gv[i] * (0.5 * (1 + t) + 0.5 * v * (1 - t * t) * k * (1 + 3 * 0.044715 * v * v));
    }
    expect_close(dx, expected, 1e-6, 1e-5, "dx vs analytic");
    if (s.rows * s.cols <= 64) {
      std::vector<double> xs = xv;
      auto loss = [&] {
        double sum = 0;
        for (size_t i = 0; i < xs.size(); ++i) sum += gelu_ref(xs[i]) * gv[i];
        return sum;
      };
      expect_close(dx, finite_difference(xs, loss), 1e-6, 1e-5, "dx vs finite differences");
    }
  }
}

// Far tails, where e^{-2u} overflows float: the derivative is 0 (x << 0) or 1 (x >> 0), never NaN.
TEST(Gelu, BackwardIsFiniteInTheFarTails) {
  Tensor x = Tensor::from({1, 6}, {-1e4f, -100.0f, -30.0f, -11.5f, 30.0f, 1e4f});
  Tensor dy = Tensor::from({1, 6}, {1, 1, 1, 1, 1, 1});
  Tensor dx = Tensor::empty({1, 6});
  gelu_backward(x, dy, dx);
  expect_close(dx, {0, 0, 0, 0, 1, 1}, 1e-6, 0, "tail derivative");
  Tensor y = Tensor::empty({1, 6});
  gelu_forward(x, y);
  expect_close(y, {0, 0, 0, 0, 30, 1e4}, 1e-6, 1e-6, "tail value");
}

TEST(Gelu, WorksOnColumnSliceViews) {
  Tensor buf = random_tensor({17, 30}, 1);
  Tensor x = buf.cols(5, 22);
  Tensor out_buf = Tensor::zeros({17, 40});
  Tensor y = out_buf.cols(10, 27);
  gelu_forward(x, y);
  std::vector<double> expected = to_double(x);
  for (double& v : expected) v = gelu_ref(v);
  expect_close(y, expected, 1e-6, 1e-5, "y view");
  EXPECT_EQ(out_buf.to_vector()[9], 0.0f);
  EXPECT_EQ(out_buf.to_vector()[27], 0.0f);
}

double silu_ref(double z) { return z / (1.0 + std::exp(-z)); }

// silu'(z) = s (1 + z (1 - s)), s = sigmoid(z).
double silu_grad_ref(double z) {
  const double sg = 1.0 / (1.0 + std::exp(-z));
  return sg * (1.0 + z * (1.0 - sg));
}

// A [rows, cols] tensor, or a column slice of a wider buffer (row-strided view).
Tensor maybe_strided(int64_t rows, int64_t cols, uint64_t seed, float scale, bool strided) {
  if (!strided) return random_tensor({rows, cols}, seed, scale);
  return random_tensor({rows, cols + 9}, seed, scale).cols(4, 4 + cols);
}

TEST(SwiGLU, ForwardMatchesReferenceIncludingStridedViews) {
  uint64_t seed = 70;
  for (const bool strided : {false, true}) {
    for (const RC& s : kShapes) {
      SCOPED_TRACE(::testing::Message() << s.rows << "x" << s.cols << (strided ? " strided" : " dense"));
      Tensor gate = maybe_strided(s.rows, s.cols, ++seed, 3.0f, strided);
      Tensor up = maybe_strided(s.rows, s.cols, ++seed, 1.0f, strided);
      Tensor out = maybe_strided(s.rows, s.cols, ++seed, 1.0f, strided);
      swiglu_forward(gate, up, out);
      const std::vector<double> g = to_double(gate), u = to_double(up);
      std::vector<double> expected(g.size());
      for (size_t i = 0; i < g.size(); ++i) expected[i] = silu_ref(g[i]) * u[i];
      expect_close(out, expected, 1e-6, 1e-5, "out");
    }
  }
}

TEST(SwiGLU, BackwardMatchesReferenceAndFiniteDifferences) {
  uint64_t seed = 80;
  for (const bool strided : {false, true}) {
    for (const RC& s : kShapes) {
      SCOPED_TRACE(::testing::Message() << s.rows << "x" << s.cols << (strided ? " strided" : " dense"));
      Tensor gate = maybe_strided(s.rows, s.cols, ++seed, 3.0f, strided);
      Tensor up = maybe_strided(s.rows, s.cols, ++seed, 1.0f, strided);
      Tensor dout = maybe_strided(s.rows, s.cols, ++seed, 1.0f, strided);
      Tensor dgate = maybe_strided(s.rows, s.cols, ++seed, 1.0f, strided);  // overwritten
      Tensor dup = maybe_strided(s.rows, s.cols, ++seed, 1.0f, strided);
      swiglu_backward(gate, up, dout, dgate, dup);
      std::vector<double> g = to_double(gate), u = to_double(up);
      const std::vector<double> w = to_double(dout);
      std::vector<double> expected_dgate(g.size()), expected_dup(g.size());
      for (size_t i = 0; i < g.size(); ++i) {
        expected_dgate[i] = w[i] * u[i] * silu_grad_ref(g[i]);
        expected_dup[i] = w[i] * silu_ref(g[i]);
      }
      expect_close(dgate, expected_dgate, 1e-6, 1e-5, "dgate vs analytic");
      expect_close(dup, expected_dup, 1e-6, 1e-5, "dup vs analytic");
      if (s.rows * s.cols <= 64) {
        auto loss = [&] {
          double sum = 0;
          for (size_t i = 0; i < g.size(); ++i) sum += silu_ref(g[i]) * u[i] * w[i];
          return sum;
        };
        expect_close(dgate, finite_difference(g, loss), 1e-6, 1e-5, "dgate vs finite differences");
        expect_close(dup, finite_difference(u, loss), 1e-6, 1e-5, "dup vs finite differences");
      }
    }
  }
}

// Far tails: silu(z) -> 0 (z << 0) or z (z >> 0), silu'(z) -> 0 or 1; never NaN.
TEST(SwiGLU, FiniteInTheFarTails) {
  Tensor gate = Tensor::from({1, 6}, {-1e4f, -100.0f, -30.0f, -11.5f, 30.0f, 1e4f});
  Tensor up = Tensor::from({1, 6}, {1, 1, 1, 1, 1, 1});
  Tensor out = Tensor::empty({1, 6});
  swiglu_forward(gate, up, out);
  expect_close(out, {0, 0, silu_ref(-30), silu_ref(-11.5), 30, 1e4}, 1e-6, 1e-6, "tail value");
  Tensor dgate = Tensor::empty({1, 6}), dup = Tensor::empty({1, 6});
  swiglu_backward(gate, up, up, dgate, dup);
  expect_close(dgate, {0, 0, silu_grad_ref(-30), silu_grad_ref(-11.5), 1, 1}, 1e-6, 1e-6, "tail dgate");
  expect_close(dup, {0, 0, silu_ref(-30), silu_ref(-11.5), 30, 1e4}, 1e-6, 1e-6, "tail dup");
}

TEST(SwiGLU, ShapeMismatchThrowsNamingTheTensors) {
  Tensor a = Tensor::zeros({3, 4});
  EXPECT_THROW(swiglu_forward(a, Tensor::zeros({4, 3}), Tensor::zeros({3, 4})), Error);
  EXPECT_THROW(swiglu_backward(a, a, a, Tensor::zeros({3, 4}), Tensor::zeros({3, 5})), Error);
  try {
    swiglu_forward(a, a, Tensor::zeros({3, 5}));
    FAIL() << "an output of the wrong shape was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("out [3, 5]"), std::string::npos) << e.what();
  }
}

TEST(SwiGLU, ResultsDoNotDependOnThreadCount) {
  const int saved = num_threads();
  const Tensor gate = random_tensor({1000, 130}, 90, 3.0f);
  const Tensor up = random_tensor({1000, 130}, 91);
  const Tensor dout = random_tensor({1000, 130}, 92);
  std::vector<Tensor> results;
  for (const int threads : {1, 2}) {
    set_kernel_threads(threads);
    Tensor out = Tensor::empty({1000, 130}), dgate = Tensor::empty({1000, 130}),
           dup = Tensor::empty({1000, 130});
    swiglu_forward(gate, up, out);
    swiglu_backward(gate, up, dout, dgate, dup);
    results.insert(results.end(), {out, dgate, dup});
  }
  set_kernel_threads(saved);
  for (int i = 0; i < 3; ++i) expect_bitwise_equal(results[i], results[i + 3]);
}

TEST(Softmax, RowsMatchReference) {
  uint64_t seed = 40;
  for (const RC& s : kShapes) {
    SCOPED_TRACE(::testing::Message() << s.rows << "x" << s.cols);
    Tensor x = random_tensor({s.rows, s.cols}, ++seed, 2.0f);
    Tensor y = Tensor::empty({s.rows, s.cols});
    softmax_rows(x, y);
    expect_close(y, softmax_ref(to_double(x), s.rows, s.cols), 1e-7, 1e-5, "y");
  }
}

TEST(Softmax, StableForLargeLogits) {
  // exp(1000) overflows float and double; the max is subtracted first.
  Tensor x = random_tensor({17, 130}, 1, 50.0f);
  float* p = x.data<float>();
  for (int64_t i = 0; i < x.numel(); ++i) p[i] += (i % 2 ? 1000.0f : -1000.0f);
  Tensor y = Tensor::empty({17, 130});
  softmax_rows(x, y);
  expect_close(y, softmax_ref(to_double(x), 17, 130), 1e-7, 1e-5, "y");
}

TEST(Softmax, InPlaceGivesSameResult) {
  Tensor x = random_tensor({13, 33}, 2);
  Tensor y = Tensor::empty({13, 33});
  softmax_rows(x, y);
  softmax_rows(x, x);
  const std::vector<float> a = x.to_vector();
  const std::vector<float> b = y.to_vector();
  EXPECT_EQ(a, b);
}

TEST(Softmax, BackwardMatchesReferenceAndFiniteDifferences) {
  uint64_t seed = 50;
  for (const RC& s : kShapes) {
    SCOPED_TRACE(::testing::Message() << s.rows << "x" << s.cols);
    Tensor x = random_tensor({s.rows, s.cols}, ++seed);
    Tensor dy = random_tensor({s.rows, s.cols}, ++seed);
    Tensor y = Tensor::empty({s.rows, s.cols});
    Tensor dx = Tensor::empty({s.rows, s.cols});
    softmax_rows(x, y);
    softmax_rows_backward(y, dy, dx);
    std::vector<double> xv = to_double(x);
    const std::vector<double> gv = to_double(dy);
    const std::vector<double> yv = softmax_ref(xv, s.rows, s.cols);
    std::vector<double> expected(xv.size());
    for (int64_t r = 0; r < s.rows; ++r) {
      double dot = 0;
      for (int64_t j = 0; j < s.cols; ++j) dot += gv[r * s.cols + j] * yv[r * s.cols + j];
      for (int64_t j = 0; j < s.cols; ++j)
        expected[r * s.cols + j] = yv[r * s.cols + j] * (gv[r * s.cols + j] - dot);
    }
    expect_close(dx, expected, 1e-6, 1e-4, "dx vs analytic");
    if (s.rows * s.cols <= 64) {
      auto loss = [&] { return weighted_sum(softmax_ref(xv, s.rows, s.cols), gv); };
      expect_close(dx, finite_difference(xv, loss), 1e-6, 1e-4, "dx vs finite differences");
    }
  }
}

TEST(SumOfSquares, MatchesDoubleReference) {
  const Shape shapes[] = {{1}, {17}, {3, 5, 7}, {130, 257}, {100003}};
  uint64_t seed = 60;
  for (const Shape& shape : shapes) {
    SCOPED_TRACE(shape_string(shape));
    Tensor x = random_tensor(shape, ++seed);
    double expected = 0;
    for (double v : to_double(x)) expected += v * v;
    EXPECT_NEAR(sum_of_squares(x), expected, 1e-12 * expected);
  }
  Tensor buf = random_tensor({130, 50}, 99);
  Tensor view = buf.cols(7, 40);
  double expected = 0;
  for (double v : to_double(view)) expected += v * v;
  EXPECT_NEAR(sum_of_squares(view), expected, 1e-12 * expected);
  EXPECT_EQ(sum_of_squares(Tensor::zeros({0, 4})), 0.0);
}

// Bitwise identical across repeated runs and at 1, 2 and 3 threads (reductions sum fixed blocks in
// block order, so the summation order does not depend on the thread count).
TEST(Elementwise, RepeatedRunsAndThreadCountsAreBitwiseIdentical) {
  Tensor x = random_tensor({1000, 130}, 1);
  Tensor dy = random_tensor({1000, 130}, 2);
  ampipe::testing::expect_bitwise_identical_runs([&] {
    Tensor db = Tensor::zeros({130});
    bias_backward(dy, db);
    Tensor y = Tensor::empty({1000, 130});
    softmax_rows(x, y);
    Tensor dsoftmax = Tensor::empty({1000, 130});
    softmax_rows_backward(y, dy, dsoftmax);
    Tensor dgelu = Tensor::empty({1000, 130});
    gelu_backward(x, dy, dgelu);
    std::vector<float> all;
    for (const Tensor& t : {db, y, dsoftmax, dgelu}) ampipe::testing::append_values(all, t);
    const double s = sum_of_squares(x);
    float bits[2];
    std::memcpy(bits, &s, sizeof(double));
    all.insert(all.end(), bits, bits + 2);
    return all;
  });
}

}  // namespace
}  // namespace ampipe::kernels
