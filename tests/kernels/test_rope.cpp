// Rotary position embedding (kernels/rope.h) against a float64 reference: forward, chunks with a
// position offset on strided views, the backward as the adjoint / inverse of the forward and
// against finite differences, theta, thread-count independence, refused shapes.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/parallel.h"
#include "kernels/gemm.h"
#include "kernels/rope.h"
#include "test_util.h"

namespace ampipe::kernels {
namespace {

using ampipe::testing::expect_close;
using ampipe::testing::finite_difference;
using ampipe::testing::random_tensor;
using ampipe::testing::to_double;

// The documented angle (Hugging Face's float32 arithmetic), returned in double.
double hf_angle(int64_t pos, int64_t i, int64_t head_dim, double theta) {
  const float exponent = static_cast<float>(2 * i) / static_cast<float>(head_dim);
  const float inv_freq =
      1.0f / static_cast<float>(std::pow(static_cast<double>(static_cast<float>(theta)), exponent));
  return static_cast<double>(static_cast<float>(pos) * inv_freq);
}

// The exact angle pos * theta^(-2i/hd) in double.
double exact_angle(int64_t pos, int64_t i, int64_t head_dim, double theta) {
  return static_cast<double>(pos) * std::pow(theta, -2.0 * static_cast<double>(i) / head_dim);
}

// Float64 RoPE of x [batch*n, heads*hd] (dense row-major), rotating by sign * angle.
std::vector<double> rope_ref(const std::vector<double>& x, int64_t rows, int64_t width, int64_t batch,
                             int64_t heads, int64_t pos_begin, double theta, double sign = 1.0,
                             bool exact = false) {
  const int64_t n = rows / batch, hd = width / heads, half = hd / 2;
  std::vector<double> y(x.size());
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t i = 0; i < half; ++i) {
        const int64_t pos = pos_begin + r % n;
        const double angle = exact ? exact_angle(pos, i, hd, theta) : hf_angle(pos, i, hd, theta);
        const double c = std::cos(angle), s = sign * std::sin(angle);
        const int64_t k1 = r * width + h * hd + i, k2 = k1 + half;
        y[k1] = x[k1] * c - x[k2] * s;
        y[k2] = x[k2] * c + x[k1] * s;
      }
  return y;
}

double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

struct Case {
  int64_t batch, n, heads, head_dim, pos_begin;
  double theta;
};

// Head sizes with half-widths 1, 3 (not a multiple of 8), 4, 32, 64; offsets 0 and > 0.
const Case kCases[] = {
    {1, 1, 1, 2, 0, 10000.0}, {2, 7, 3, 8, 0, 10000.0},      {2, 77, 4, 6, 13, 10000.0},
    {1, 130, 2, 64, 0, 1e6},  {3, 33, 2, 128, 500, 10000.0}, {1, 5, 1, 2, 4000, 500000.0},
};

std::string case_name(const Case& c) {
  return "B=" + std::to_string(c.batch) + " n=" + std::to_string(c.n) + " h=" + std::to_string(c.heads) +
         " hd=" + std::to_string(c.head_dim) + " pos_begin=" + std::to_string(c.pos_begin) +
         " theta=" + std::to_string(c.theta);
}

TEST(Rope, ForwardMatchesReference) {
  uint64_t seed = 1;
  for (const Case& c : kCases) {
    SCOPED_TRACE(case_name(c));
    const int64_t rows = c.batch * c.n, width = c.heads * c.head_dim;
    Tensor x = random_tensor({rows, width}, ++seed);
    const std::vector<double> x0 = to_double(x);
    rope_forward(x, c.batch, c.heads, c.pos_begin, c.theta);
    expect_close(x, rope_ref(x0, rows, width, c.batch, c.heads, c.pos_begin, c.theta), 1e-6, 1e-6, "x");
  }
}

// The float32 angles (HF's arithmetic) are within float rounding of the exact angles: the output
// differs from an exact-angle rotation by at most ~|u| * pos * 2^-23.
TEST(Rope, AnglesAreWithinFloatRoundingOfExactAngles) {
  const int64_t batch = 1, n = 64, heads = 2, hd = 128, pos_begin = 8000, width = heads * hd;
  Tensor x = random_tensor({batch * n, width}, 7);
  const std::vector<double> x0 = to_double(x);
  rope_forward(x, batch, heads, pos_begin, 10000.0);
  const double pos_max = pos_begin + n;
  expect_close(x, rope_ref(x0, n, width, batch, heads, pos_begin, 10000.0, 1.0, true),
               8.0 * pos_max * std::ldexp(1.0, -24), 0, "x vs exact angles");
}

// A chunk of rows [b, e) of each sequence, rotated with pos_begin = b, equals rows b..e-1 of the
// whole sequence rotated with pos_begin = 0, bit for bit; both are column slices of wider buffers
// whose other columns stay untouched.
TEST(Rope, ChunkWithOffsetEqualsFullSequenceRowsOnStridedViews) {
  const int64_t batch = 2, n = 130, heads = 4, hd = 16, width = heads * hd, pad = 24;
  const double theta = 10000.0;
  Tensor full_buf = random_tensor({batch * n, width + 2 * pad}, 3);
  const std::vector<float> before = full_buf.to_vector();
  Tensor full = full_buf.cols(pad, pad + width);
  const std::vector<double> x0 = to_double(full);
  rope_forward(full, batch, heads, 0, theta);
  expect_close(full, rope_ref(x0, batch * n, width, batch, heads, 0, theta), 1e-6, 1e-6, "full");
  const std::vector<float> after = full_buf.to_vector();
  for (int64_t r = 0; r < batch * n; ++r)
    for (int64_t c = 0; c < width + 2 * pad; ++c)
      if (c < pad || c >= pad + width) {
        ASSERT_EQ(after[r * (width + 2 * pad) + c], before[r * (width + 2 * pad) + c]) << r << ", " << c;
      }

  for (const auto& [b, e] :
       std::vector<std::pair<int64_t, int64_t>>{{0, 1}, {37, 101}, {64, 130}, {129, 130}}) {
    SCOPED_TRACE("chunk [" + std::to_string(b) + ", " + std::to_string(e) + ")");
    const int64_t len = e - b;
    Tensor chunk_buf = Tensor::zeros({batch * len, width + pad});
    Tensor chunk = chunk_buf.cols(pad, pad + width);
    for (int64_t s = 0; s < batch; ++s) {
      for (int64_t i = 0; i < len; ++i)
        for (int64_t c = 0; c < width; ++c)
          chunk.data<float>()[(s * len + i) * chunk.stride(0) + c] =
              before[(s * n + b + i) * (width + 2 * pad) + pad + c];
    }
    rope_forward(chunk, batch, heads, b, theta);
    const std::vector<float> got = chunk.to_vector();
    for (int64_t s = 0; s < batch; ++s)
      for (int64_t i = 0; i < len; ++i)
        for (int64_t c = 0; c < width; ++c)
          ASSERT_EQ(got[(s * len + i) * width + c], after[(s * n + b + i) * (width + 2 * pad) + pad + c])
              << "sequence " << s << ", row " << b + i << ", column " << c;
  }
}

// The backward is the adjoint of the forward, <F(x), y> = <x, B(y)>, and (a rotation) its inverse:
// B(F(x)) = x up to float rounding.
TEST(Rope, BackwardIsTheAdjointAndInverseOfTheForward) {
  uint64_t seed = 100;
  for (const Case& c : kCases) {
    SCOPED_TRACE(case_name(c));
    const int64_t rows = c.batch * c.n, width = c.heads * c.head_dim;
    Tensor x = random_tensor({rows, width}, ++seed);
    Tensor y = random_tensor({rows, width}, ++seed);
    const std::vector<double> x0 = to_double(x), y0 = to_double(y);
    rope_forward(x, c.batch, c.heads, c.pos_begin, c.theta);
    rope_backward(y, c.batch, c.heads, c.pos_begin, c.theta);
    const double lhs = dot(to_double(x), y0), rhs = dot(x0, to_double(y));
    EXPECT_NEAR(lhs, rhs, 1e-6 * std::sqrt(static_cast<double>(rows * width))) << "adjoint identity";
    expect_close(y, rope_ref(y0, rows, width, c.batch, c.heads, c.pos_begin, c.theta, -1.0), 1e-6, 1e-6,
                 "backward vs reference");
    rope_backward(x, c.batch, c.heads, c.pos_begin, c.theta);
    expect_close(x, x0, 1e-6, 1e-6, "backward(forward(x))");
  }
}

// Gradient of sum(w * rope(x)) by central differences of the float64 reference.
TEST(Rope, BackwardMatchesFiniteDifferences) {
  const int64_t batch = 2, n = 5, heads = 3, hd = 6, pos_begin = 11, rows = batch * n, width = heads * hd;
  const double theta = 10000.0;
  std::vector<double> xv = to_double(random_tensor({rows, width}, 200));
  Tensor w = random_tensor({rows, width}, 201);
  const std::vector<double> wv = to_double(w);
  auto loss = [&] { return dot(rope_ref(xv, rows, width, batch, heads, pos_begin, theta), wv); };
  rope_backward(w, batch, heads, pos_begin, theta);
  expect_close(w, finite_difference(xv, loss), 1e-6, 1e-5, "dx vs finite differences");
}

TEST(Rope, ThetaIsHonoured) {
  const int64_t batch = 1, n = 40, heads = 2, hd = 8, rows = batch * n, width = heads * hd;
  Tensor x = random_tensor({rows, width}, 300);
  const std::vector<double> x0 = to_double(x);
  Tensor y = Tensor::empty({rows, width});
  y.copy_from(x);
  rope_forward(x, batch, heads, 3, 500.0);
  rope_forward(y, batch, heads, 3, 10000.0);
  expect_close(x, rope_ref(x0, rows, width, batch, heads, 3, 500.0), 1e-6, 1e-6, "theta 500");
  expect_close(y, rope_ref(x0, rows, width, batch, heads, 3, 10000.0), 1e-6, 1e-6, "theta 10000");
  double max_diff = 0;
  const std::vector<double> a = to_double(x), b = to_double(y);
  for (size_t i = 0; i < a.size(); ++i) max_diff = std::max(max_diff, std::abs(a[i] - b[i]));
  EXPECT_GT(max_diff, 0.1) << "theta made no difference";
}

TEST(Rope, ResultsDoNotDependOnThreadCount) {
  const int saved = num_threads();
  const int64_t batch = 2, n = 300, heads = 8, hd = 64;
  const Tensor x = random_tensor({batch * n, heads * hd}, 400);
  std::vector<std::vector<float>> runs;
  for (const int threads : {1, 2}) {
    set_kernel_threads(threads);
    Tensor y = Tensor::empty(x.shape());
    y.copy_from(x);
    rope_forward(y, batch, heads, 17, 10000.0);
    Tensor g = Tensor::empty(x.shape());
    g.copy_from(x);
    rope_backward(g, batch, heads, 17, 10000.0);
    std::vector<float> all = y.to_vector();
    const std::vector<float> gv = g.to_vector();
    all.insert(all.end(), gv.begin(), gv.end());
    runs.push_back(all);
  }
  set_kernel_threads(saved);
  ASSERT_EQ(runs[0].size(), runs[1].size());
  EXPECT_EQ(0, std::memcmp(runs[0].data(), runs[1].data(), runs[0].size() * sizeof(float)));
}

// Calls fn, which must throw an Error whose message contains `expected`.
template <class Fn>
void expect_error_containing(const Fn& fn, const std::string& expected) {
  try {
    fn();
    FAIL() << "no error thrown; expected one mentioning \"" << expected << "\"";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(expected), std::string::npos) << e.what();
  }
}

TEST(Rope, RefusesBadShapesNamingTheValue) {
  Tensor x = Tensor::zeros({12, 6});
  expect_error_containing([&] { rope_forward(x, 1, 2, 0, 10000.0); }, "head_dim 3");
  expect_error_containing([&] { rope_backward(x, 1, 2, 0, 10000.0); }, "head_dim 3");
  expect_error_containing([&] { rope_forward(x, 5, 1, 0, 10000.0); }, "not divisible by batch 5");
  expect_error_containing([&] { rope_forward(x, 1, 4, 0, 10000.0); }, "not divisible by num_heads 4");
  expect_error_containing([&] { rope_forward(x, 1, 1, -1, 10000.0); }, "pos_begin must be >= 0, got -1");
  expect_error_containing([&] { rope_forward(x, 1, 1, 0, 0.0); }, "theta must be finite and > 0, got 0");
  expect_error_containing([&] { rope_forward(x, 0, 1, 0, 10000.0); }, "batch must be >= 1, got 0");
}

}  // namespace
}  // namespace ampipe::kernels
